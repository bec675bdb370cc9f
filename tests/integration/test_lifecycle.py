"""Key, certificate and user lifecycle through AdminService (real gRPC, real SoftHSMv2)."""

from __future__ import annotations

import base64
import datetime as dt
import urllib.parse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rsign.client.raw import RsignClient
from rsign.dev.democlient import verify_signature
from rsign.domain.events import EventFilter
from rsign.v1 import rsign_pb2 as pb
from tests.conftest import Env, Signer, detail, digests, make_signer


def status(e: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return e.value.code()  # type: ignore[no-any-return,attr-defined]


class Admin:
    """An admin-role user's session, calling AdminService."""

    def __init__(self, s: Signer) -> None:
        self.s = s
        self.c = s.client()

    def __getattr__(self, rpc: str) -> Callable[..., Any]:
        method = getattr(self.c.admin, rpc)
        return lambda req: method(req, metadata=self.c.md())


def service_now(env: Env) -> dt.datetime:
    """Certificates are checked against the service's clock, a fake one that tests move (and that
    lags the real time in a long session): issue them around it, not around the real time."""
    return dt.datetime.fromtimestamp(env.clock.now(), dt.UTC)


def make_ca(tmp: Path, env: Env) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, "Test VGCA-like CA"), x509.NameAttribute(NameOID.COUNTRY_NAME, "VN")]
    )
    now = service_now(env)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=3650))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    anchors = env.state_dir / "trust-anchors"
    anchors.mkdir(exist_ok=True)
    (anchors / "test-ca.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def issue_from_csr(
    csr_pem: str,
    ca_key: ec.EllipticCurvePrivateKey,
    ca: x509.Certificate,
    days: int = 365,
    now: dt.datetime | None = None,
) -> bytes:
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    now = now or dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(csr.subject)
        .issuer_name(ca.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=1))
        .not_valid_after(now + dt.timedelta(days=days))
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=True,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.PEM)


def sign(s: Signer, c: RsignClient, cid: str, scheme: str = "RSA_PKCS1_V15") -> tuple[bytes, bytes, int]:
    h = digests(1)
    sad = c.authorize(cid, h, s.code()).sad
    r = c.sign_hash(cid, sad, h, scheme)
    return h[0], r.signatures[0], r.key_version


def test_whole_life_of_a_credential(env: Env, tmp_path: Path) -> None:
    officer1 = Admin(make_signer(env, "officer", role="key_officer"))
    officer2 = Admin(make_signer(env, "officer", role="key_officer"))
    holder = make_signer(env, "holder", agency="Sở Tài chính")
    cid = f"LIFE-{holder.user_id}"
    cred = officer1.GenerateKey(
        pb.GenerateKeyRequest(credential_id=cid, algorithm="rsa-2048", holder_user_id=holder.user_id)
    )
    assert cred.key_version == 1 and cred.status == "active"

    # CSR signed inside the HSM, with the holder's UTF-8 subject; a CA issues; rsign imports.
    csr_pem = officer1.CreateCsr(pb.CredentialRequest(credential_id=cid)).pem
    csr = x509.load_pem_x509_csr(csr_pem.encode())
    assert csr.is_signature_valid
    assert csr.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Lò Văn Tuấn"
    assert csr.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value == "Sở Tài chính"
    assert csr.subject.get_attributes_for_oid(NameOID.STATE_OR_PROVINCE_NAME)[0].value == "Sơn La"
    ca_key, ca = make_ca(tmp_path, env)
    chain = issue_from_csr(csr_pem, ca_key, ca, now=service_now(env))
    cred = officer1.ImportCertificate(pb.ImportCertificateRequest(credential_id=cid, certificate_chain=chain))
    v1_cert = cred.certificates[0]
    assert x509.load_der_x509_certificate(v1_cert).issuer == ca.subject

    c = holder.client()
    d1, sig1, kv = sign(holder, c, cid)
    assert kv == 1
    verify_signature(v1_cert, d1, sig1, "RSA_PKCS1_V15")
    stale = digests(1)
    stale_sad = c.authorize(cid, stale, holder.code()).sad  # authorized for key version 1

    # Rotate: version 2 signs; version 1 no longer does; old signatures still verify.
    cred = officer1.RotateKey(pb.CredentialRequest(credential_id=cid))
    assert cred.key_version == 2
    d2, sig2, kv = sign(holder, c, cid)
    assert kv == 2
    verify_signature(c.get_credential(cid).certificates[0], d2, sig2, "RSA_PKCS1_V15")
    with pytest.raises(grpc.RpcError) as e:
        c.sign_hash(cid, stale_sad, stale, "RSA_PKCS1_V15")
    assert status(e) == grpc.StatusCode.PERMISSION_DENIED and "key version" in detail(e)
    hist = officer1.GetKeyHistory(pb.CredentialRequest(credential_id=cid)).versions
    assert [(v.version, v.status) for v in hist] == [(1, "retired"), (2, "active")]
    verify_signature(hist[0].certificates[0], d1, sig1, "RSA_PKCS1_V15")

    # Disable / enable / revoke.
    officer1.DisableCredential(pb.CredentialRequest(credential_id=cid, reason="audit hold"))
    with pytest.raises(grpc.RpcError) as e:
        sign(holder, c, cid)
    assert status(e) == grpc.StatusCode.FAILED_PRECONDITION
    officer1.EnableCredential(pb.CredentialRequest(credential_id=cid))
    sign(holder, c, cid)
    officer1.RevokeCredential(pb.RevokeCredentialRequest(credential_id=cid, reason="agency request"))
    with pytest.raises(grpc.RpcError) as e:
        sign(holder, c, cid)
    assert status(e) == grpc.StatusCode.FAILED_PRECONDITION and "revoked" in detail(e)

    # Destroy under dual control.
    assert officer1.DestroyCredential(pb.CredentialRequest(credential_id=cid)).state == "requested"
    with pytest.raises(grpc.RpcError) as e:
        officer1.DestroyCredential(pb.CredentialRequest(credential_id=cid))
    assert status(e) == grpc.StatusCode.PERMISSION_DENIED and "second" in detail(e)
    assert officer2.DestroyCredential(pb.CredentialRequest(credential_id=cid)).state == "destroyed"
    hist = officer1.GetKeyHistory(pb.CredentialRequest(credential_id=cid)).versions
    assert {v.status for v in hist} == {"destroyed"}
    with env.app.store.read() as t:
        versions = t.key_versions(cid)
    for v in versions:
        with pytest.raises(Exception, match="not present"):
            env.app.hsm.public_key(v.cka_id)
    with env.app.store.read() as t:
        actions = [r["action"] for r in t.find_events(EventFilter(credential_id=cid), 0, 1_000_000)]
    for a in (
        "key.generate",
        "key.csr",
        "key.import_certificate",
        "key.rotate",
        "key.disable",
        "key.enable",
        "key.revoke",
        "key.destroy_request",
        "key.destroy",
    ):
        assert a in actions, a


def test_import_refuses_foreign_key_and_untrusted_ca(env: Env, tmp_path: Path) -> None:
    officer = Admin(make_signer(env, "officer", role="key_officer"))
    holder = make_signer(env, "holder")
    cid = f"IMP-{holder.user_id}"
    officer.GenerateKey(pb.GenerateKeyRequest(credential_id=cid, algorithm="ec-p256", holder_user_id=holder.user_id))
    ca_key, ca = make_ca(tmp_path, env)
    # A certificate for some other key.
    other = ec.generate_private_key(ec.SECP256R1())
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "x")]))
        .sign(other, hashes.SHA256())
    )
    foreign = issue_from_csr(csr.public_bytes(serialization.Encoding.PEM).decode(), ca_key, ca, now=service_now(env))
    with pytest.raises(grpc.RpcError) as e:
        officer.ImportCertificate(pb.ImportCertificateRequest(credential_id=cid, certificate_chain=foreign))
    assert status(e) == grpc.StatusCode.INVALID_ARGUMENT and "not for" in detail(e)
    # The right key, an untrusted CA.
    rogue_key = ec.generate_private_key(ec.SECP256R1())
    now = service_now(env)
    rogue = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rogue CA")]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Rogue CA")]))
        .public_key(rogue_key.public_key())
        .serial_number(1)
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=10))
        .sign(rogue_key, hashes.SHA256())
    )
    good_csr = officer.CreateCsr(pb.CredentialRequest(credential_id=cid)).pem
    untrusted = issue_from_csr(good_csr, rogue_key, rogue, now=service_now(env))
    with pytest.raises(grpc.RpcError) as e:
        officer.ImportCertificate(pb.ImportCertificateRequest(credential_id=cid, certificate_chain=untrusted))
    assert status(e) == grpc.StatusCode.INVALID_ARGUMENT and "trust anchor" in detail(e)


def test_moved_user_loses_the_old_credential(env: Env) -> None:
    agency_admin = Admin(make_signer(env, "aa", agency="Sở Nội vụ", role="agency_admin"))
    officer = Admin(make_signer(env, "officer", role="key_officer"))
    user = make_signer(env, "mover", agency="Sở Nội vụ")
    old = user.add_key("ec-p256")
    c = user.client()
    sign(user, c, old, "ECDSA")
    res = agency_admin.MoveUser(pb.MoveUserRequest(user_id=user.user_id, new_agency="Sở Y tế"))
    assert res.user.agency == "Sở Y tế" and list(res.revoked_credentials) == [old]
    with pytest.raises(grpc.RpcError) as e:
        c.list_credentials()  # the move ended the session
    assert status(e) == grpc.StatusCode.UNAUTHENTICATED
    c = user.client()
    with pytest.raises(grpc.RpcError) as e:
        sign(user, c, old, "ECDSA")
    assert status(e) == grpc.StatusCode.FAILED_PRECONDITION and "revoked" in detail(e)
    new = officer.GenerateKey(
        pb.GenerateKeyRequest(credential_id=f"NEW-{user.user_id}", algorithm="ec-p256", holder_user_id=user.user_id)
    )
    assert new.agency == "Sở Y tế"
    sign(user, c, new.credential_id, "ECDSA")
    # The old agency's admin no longer administers the user.
    with pytest.raises(grpc.RpcError) as e:
        agency_admin.SuspendUser(pb.UserActionRequest(user_id=user.user_id))
    assert status(e) == grpc.StatusCode.PERMISSION_DENIED


def test_agency_admin_cannot_touch_another_agency(env: Env) -> None:
    admin_a = Admin(make_signer(env, "aa", agency="Sở Tư pháp", role="agency_admin"))
    user_a = make_signer(env, "ua", agency="Sở Tư pháp")
    user_b = make_signer(env, "ub", agency="Sở Xây dựng")
    user_b.add_key("ec-p256")
    calls: list[Callable[[], Any]] = [
        lambda: admin_a.SuspendUser(pb.UserActionRequest(user_id=user_b.user_id)),
        lambda: admin_a.UnlockUser(pb.UserActionRequest(user_id=user_b.user_id)),
        lambda: admin_a.ResetTotp(pb.UserActionRequest(user_id=user_b.user_id)),
        lambda: admin_a.MoveUser(pb.MoveUserRequest(user_id=user_b.user_id, new_agency="Sở Tư pháp")),
        lambda: admin_a.RetireUser(pb.UserActionRequest(user_id=user_b.user_id)),
        lambda: admin_a.SearchUsers(pb.SearchUsersRequest(agency="Sở Xây dựng")),
        lambda: admin_a.SearchCredentials(pb.SearchCredentialsRequest(agency="Sở Xây dựng")),
        lambda: admin_a.EnrolUser(pb.EnrolUserRequest(user_id="x.b", name="X", agency="Sở Xây dựng", pin="12345678")),
        lambda: admin_a.GenerateKey(
            pb.GenerateKeyRequest(credential_id="X", algorithm="ec-p256", holder_user_id=user_a.user_id)
        ),
    ]
    for call in calls:
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert status(e) == grpc.StatusCode.PERMISSION_DENIED, detail(e)
    seen = admin_a.SearchUsers(pb.SearchUsersRequest()).users
    assert seen and {u.agency for u in seen} == {"Sở Tư pháp"}
    creds = admin_a.SearchCredentials(pb.SearchCredentialsRequest()).credentials
    assert all(cr.agency == "Sở Tư pháp" for cr in creds)
    # ...and a signer has no admin rights at all.
    with pytest.raises(grpc.RpcError) as e:
        Admin(user_a).SearchUsers(pb.SearchUsersRequest())
    assert status(e) == grpc.StatusCode.PERMISSION_DENIED


def test_totp_reset_kills_sessions_and_sads(env: Env) -> None:
    admin = Admin(make_signer(env, "aa", agency="Sở Nội vụ, tỉnh Sơn La", role="agency_admin"))
    user = make_signer(env, "lost.phone")
    cid = user.add_key("ec-p256")
    c = user.client()
    h = digests(1)
    sad = c.authorize(cid, h, user.code()).sad
    resp = admin.ResetTotp(pb.UserActionRequest(user_id=user.user_id))
    assert resp.otpauth_uri.startswith("otpauth://totp/")
    with pytest.raises(grpc.RpcError) as e:
        c.sign_hash(cid, sad, h, "ECDSA")
    assert status(e) == grpc.StatusCode.UNAUTHENTICATED  # the session is gone
    with env.app.store.read() as t:
        assert t.expire_user_sads(user.user_id, env.clock.now()) == 0  # nothing left unexpired
    # The old seed no longer logs in; the new one does, and the old SAD stays dead.
    with pytest.raises(grpc.RpcError):
        RsignClient(env.server.address).login(user.user_id, user.pin, user.code())
    secret = urllib.parse.parse_qs(urllib.parse.urlparse(resp.otpauth_uri).query)["secret"][0]
    user.seed = base64.b32decode(secret)
    c2 = user.client()
    with pytest.raises(grpc.RpcError) as e:
        c2.sign_hash(cid, sad, h, "ECDSA")
    assert status(e) == grpc.StatusCode.PERMISSION_DENIED
    sign(user, c2, cid, "ECDSA")


def test_diacritic_insensitive_search_and_expiry(env: Env) -> None:
    officer = Admin(make_signer(env, "officer", role="key_officer"))
    user = make_signer(env, "tuan", agency="UBND huyện Mường La")
    cid = user.add_key("ec-p256")
    found = officer.SearchUsers(pb.SearchUsersRequest(name="Lo Van Tuan", agency="UBND huyện Mường La")).users
    assert user.user_id in {u.user_id for u in found}
    creds = officer.SearchCredentials(
        pb.SearchCredentialsRequest(holder_name="lo van TUAN", agency="UBND huyện Mường La")
    )
    assert cid in {cr.credential_id for cr in creds.credentials}
    # Development certificates last two years: none expires within 30 days, all within 800.
    soon = officer.SearchCredentials(pb.SearchCredentialsRequest(expires_within_days=30, agency="UBND huyện Mường La"))
    later = officer.SearchCredentials(
        pb.SearchCredentialsRequest(expires_within_days=800, agency="UBND huyện Mường La")
    )
    assert cid not in {cr.credential_id for cr in soon.credentials}
    assert cid in {cr.credential_id for cr in later.credentials}


def test_organisation_seal(env: Env) -> None:
    officer = Admin(make_signer(env, "officer", role="key_officer"))
    clerk1 = make_signer(env, "clerk", agency="Trung tâm Phục vụ hành chính công tỉnh Sơn La")
    clerk2 = make_signer(env, "clerk", agency="Trung tâm Phục vụ hành chính công tỉnh Sơn La")
    outsider = make_signer(env, "clerk", agency="Trung tâm Phục vụ hành chính công tỉnh Sơn La")
    seal = officer.GenerateKey(
        pb.GenerateKeyRequest(
            credential_id=f"SEAL-{clerk1.user_id}",
            algorithm="ec-p256",
            seal_agency="Trung tâm Phục vụ hành chính công tỉnh Sơn La",
            seal_user_ids=[clerk1.user_id, clerk2.user_id],
        )
    )
    assert seal.kind == "seal" and seal.holder_user_id == ""
    for clerk in (clerk1, clerk2):
        c = clerk.client()
        assert seal.credential_id in {cr.credential_id for cr in c.list_credentials()}
        hs = digests(3)
        sad = c.authorize(seal.credential_id, hs, clerk.code()).sad
        sigs = [s for r in c.sign_stream(seal.credential_id, sad, hs, "ECDSA") for s in r.signatures]
        for d, s in zip(hs, sigs, strict=True):
            verify_signature(seal.certificates[0], d, s, "ECDSA")
    with env.app.store.read() as t:
        flt = EventFilter(action="sign.hash", credential_id=seal.credential_id)
        actors = {r["actor"] for r in t.find_events(flt, 0, 1_000_000)}
    assert actors == {clerk1.user_id, clerk2.user_id}
    c = outsider.client()
    with pytest.raises(grpc.RpcError) as e:
        c.authorize(seal.credential_id, digests(1), outsider.code())
    assert status(e) == grpc.StatusCode.PERMISSION_DENIED
