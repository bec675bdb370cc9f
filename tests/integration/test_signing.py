"""Authorize + SignHash end to end: signatures verified with `cryptography` against the
certificate rsign returns, refusals with their status codes and no signature, concurrency, and a
worker process killed mid-request."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
import pytest
from cryptography import x509
from cryptography.x509.oid import NameOID

from rsign.dev.democlient import verify_signature
from rsign.domain.events import EventFilter
from rsign.hsm.pool import HsmPool
from rsign.v1 import rsign_pb2 as pb
from tests.conftest import Env, Signer, detail, digests, make_signer

SHA = {"SHA256": "sha256", "SHA384": "sha384", "SHA512": "sha512"}


def status(e: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return e.value.code()  # type: ignore[no-any-return,attr-defined]


def last_record(env: Env, action: str, credential_id: str = "") -> Mapping[str, Any] | None:
    """The newest audit record of ``action`` (for ``credential_id``): one query walking the log
    back from its end, where reading the whole log of a long session took up to a second."""
    with env.app.store.read() as t:
        rows = t.last_events(EventFilter(action=action, credential_id=credential_id), 1)
    return rows[-1] if rows else None


@pytest.fixture(scope="module")
def holder(env: Env) -> Signer:
    """A signer with an RSA-2048 and an EC P-256 credential, for the tests below that only sign
    with them (each in its own session, with its own SAD and random hashes): an RSA key costs
    SoftHSMv2 up to a second to generate, and these tests would make ten."""
    s = make_signer(env, "holder")
    for algorithm in ("rsa-2048", "ec-p256"):
        s.add_key(algorithm)
    return s


def credential(s: Signer, algorithm: str) -> str:
    return next(cid for cid, alg in s.credentials.items() if alg == algorithm)


@pytest.mark.parametrize(
    ("algorithm", "scheme"),
    [("rsa-2048", "RSA_PKCS1_V15"), ("rsa-2048", "RSA_PSS"), ("ec-p256", "ECDSA")],
)
@pytest.mark.parametrize("hash_alg", ["SHA256", "SHA384", "SHA512"])
def test_sign_and_verify(holder: Signer, algorithm: str, scheme: str, hash_alg: str) -> None:
    cid = credential(holder, algorithm)
    c = holder.client()
    cred = c.get_credential(cid)
    hs = digests(3, SHA[hash_alg])
    auth = c.authorize(cid, hs, holder.code(), hash_alg)
    resp = c.sign_hash(cid, auth.sad, hs, scheme, hash_alg)
    assert len(resp.signatures) == 3 and resp.key_version == 1
    for d, sig in zip(hs, resp.signatures, strict=True):
        verify_signature(cred.certificates[0], d, sig, scheme, hash_alg)
    if scheme == "ECDSA":
        assert resp.signatures[0][0] == 0x30  # DER SEQUENCE, not raw r||s


def test_credential_carries_chain_and_metadata(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p384")
    cred = signer.client().get_credential(cid)
    assert cred.holder_user_id == signer.user_id and cred.key_algorithm == "EC-P384" and cred.status == "active"
    assert cred.multisign == env.settings.multisign_default and cred.key_version == 1
    assert "1.2.840.10045.4.3.3" in cred.signature_algorithm_oids
    leaf, ca = (x509.load_der_x509_certificate(c) for c in cred.certificates)
    assert leaf.issuer == ca.subject
    assert leaf.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value == "Lò Văn Tuấn"
    assert "Sở Nội vụ" in str(leaf.subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)[0].value)
    ku = leaf.extensions.get_extension_for_class(x509.KeyUsage).value
    assert ku.digital_signature and ku.content_commitment
    leaf.verify_directly_issued_by(ca)


# -- refusals ------------------------------------------------------------------------------------


class Refusal:
    def __init__(self, env: Env) -> None:
        self.env = env

    def __enter__(self) -> Refusal:
        self.calls = self.env.hsm.sign_calls
        self.signed = last_record(self.env, "sign.hash")
        return self

    def __exit__(self, *exc: object) -> None:
        assert self.env.hsm.sign_calls == self.calls, "the HSM was asked to sign"
        assert last_record(self.env, "sign.hash") == self.signed, "a signature was audited"


def test_sad_reused(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(1)
    sad = c.authorize(cid, hs, signer.code()).sad
    c.sign_hash(cid, sad, hs, "ECDSA")
    with Refusal(env), pytest.raises(grpc.RpcError) as e:
        c.sign_hash(cid, sad, hs, "ECDSA")
    assert status(e) == grpc.StatusCode.PERMISSION_DENIED and "already been used" in detail(e)
    refused = last_record(env, "sad.refuse", cid)
    assert refused is not None and refused["result"] == "failure"


def test_sad_for_another_hash(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    h1, h2, h3 = digests(3)
    sad = c.authorize(cid, [h1, h2], signer.code()).sad
    with Refusal(env), pytest.raises(grpc.RpcError) as e:
        c.sign_hash(cid, sad, [h1, h3], "ECDSA")
    assert status(e) == grpc.StatusCode.PERMISSION_DENIED


def test_more_hashes_than_authorized(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(3)
    sad = c.authorize(cid, hs[:2], signer.code()).sad
    with Refusal(env), pytest.raises(grpc.RpcError) as e:
        c.sign_hash(cid, sad, hs, "ECDSA")
    assert status(e) == grpc.StatusCode.PERMISSION_DENIED


def test_authorize_above_multisign(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256", multisign=4)
    c = signer.client()
    with pytest.raises(grpc.RpcError) as e:
        c.authorize(cid, digests(5), signer.code())
    assert status(e) == grpc.StatusCode.INVALID_ARGUMENT


def test_another_users_sad(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    mallory = make_signer(env)
    mallory_cid = mallory.add_key("ec-p256")
    hs = digests(1)
    sad = signer.client().authorize(cid, hs, signer.code()).sad
    m = mallory.client()
    with Refusal(env):
        for target in (cid, mallory_cid):
            with pytest.raises(grpc.RpcError) as e:
                m.sign_hash(target, sad, hs, "ECDSA")
            assert status(e) == grpc.StatusCode.PERMISSION_DENIED


def test_sad_from_another_session(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    hs = digests(1)
    sad = signer.client().authorize(cid, hs, signer.code()).sad
    with Refusal(env), pytest.raises(grpc.RpcError) as e:
        signer.client().sign_hash(cid, sad, hs, "ECDSA")
    assert status(e) == grpc.StatusCode.PERMISSION_DENIED


def test_expired_sad(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(1)
    sad = c.authorize(cid, hs, signer.code()).sad
    env.clock.advance(env.settings.sad_ttl_seconds + 1)
    with Refusal(env), pytest.raises(grpc.RpcError) as e:
        c.sign_hash(cid, sad, hs, "ECDSA")
    assert status(e) == grpc.StatusCode.PERMISSION_DENIED and "expired" in detail(e)


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_wrong_digest_length(env: Env, holder: Signer, length: int) -> None:
    cid = credential(holder, "rsa-2048")
    c = holder.client()
    hs = digests(1)
    sad = c.authorize(cid, hs, holder.code()).sad
    with Refusal(env), pytest.raises(grpc.RpcError) as e:
        c.sign_hash(cid, sad, [b"\x01" * length], "RSA_PKCS1_V15")
    assert status(e) == grpc.StatusCode.INVALID_ARGUMENT
    # Nothing consumed: the SAD still signs the authorized hash.
    assert len(c.sign_hash(cid, sad, hs, "RSA_PKCS1_V15").signatures) == 1


def test_unknown_credential(env: Env, signer: Signer) -> None:
    c = signer.client()
    with pytest.raises(grpc.RpcError) as e:
        c.get_credential("NO-SUCH-CREDENTIAL")
    assert status(e) == grpc.StatusCode.NOT_FOUND
    with Refusal(env), pytest.raises(grpc.RpcError) as e:
        c.sign_hash("NO-SUCH-CREDENTIAL", "x", digests(1), "ECDSA")
    assert status(e) == grpc.StatusCode.NOT_FOUND


def test_foreign_credential(env: Env, signer: Signer) -> None:
    other = make_signer(env)
    cid = other.add_key("ec-p256")
    with pytest.raises(grpc.RpcError) as e:
        signer.client().get_credential(cid)
    assert status(e) == grpc.StatusCode.PERMISSION_DENIED


def test_no_session(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client(login=False)
    with Refusal(env), pytest.raises(grpc.RpcError) as e:
        c.sign_hash(cid, "x", digests(1), "ECDSA")
    assert status(e) == grpc.StatusCode.UNAUTHENTICATED


def test_unknown_enum_and_wrong_scheme(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(1)
    sad = c.authorize(cid, hs, signer.code()).sad
    with Refusal(env):
        with pytest.raises(grpc.RpcError) as e:
            c.sign_hash(cid, sad, hs, "RSA_PSS")
        assert status(e) == grpc.StatusCode.INVALID_ARGUMENT
        with pytest.raises(grpc.RpcError) as e:
            c.signing.SignHash(
                pb.SignHashRequest(credential_id=cid, sad=sad, hash_algorithm=9, signature_scheme=3, hashes=hs),  # type: ignore[arg-type]
                metadata=c._md(),
            )
        assert status(e) == grpc.StatusCode.INVALID_ARGUMENT


def test_authorize_needs_fresh_otp(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    from rsign.auth import totp

    replay = totp.code_for_step(signer.seed, signer.last_step)  # the login's code
    with pytest.raises(grpc.RpcError) as e:
        c.authorize(cid, digests(1), replay)
    assert status(e) == grpc.StatusCode.ABORTED  # a used code: its own status (test_used_code.py)
    c.authorize(cid, digests(1), signer.code())


# -- concurrency and worker failure -------------------------------------------------------------


def test_eight_clients_fifty_signatures_each(env: Env) -> None:
    clients = 8
    rounds = 50
    signers = [make_signer(env, "conc") for _ in range(clients)]
    creds = [s.add_key("ec-p256" if i % 2 else "rsa-2048") for i, s in enumerate(signers)]
    conns = [s.client() for s in signers]
    certs = [c.get_credential(cid).certificates[0] for c, cid in zip(conns, creds, strict=True)]
    # Everyone's next TOTP step needs the shared fake clock to move: move it between rounds.
    barrier = threading.Barrier(clients, action=lambda: env.clock.advance(30))
    errors: list[BaseException] = []

    def run(i: int) -> int:
        s, c, cid = signers[i], conns[i], creds[i]
        scheme = "ECDSA" if i % 2 else "RSA_PKCS1_V15"
        ok = 0
        for _ in range(rounds):
            barrier.wait()
            h = digests(1)
            try:
                sad = c.authorize(cid, h, s.code()).sad
                sig = c.sign_hash(cid, sad, h, scheme).signatures[0]
                verify_signature(certs[i], h[0], sig, scheme)
                ok += 1
            except BaseException as exc:
                errors.append(exc)
        return ok

    with ThreadPoolExecutor(clients) as ex:
        done = list(ex.map(run, range(clients)))
    assert errors == []
    assert done == [rounds] * clients


def test_worker_killed_mid_request_fails_unavailable_then_recovers(env: Env, signer: Signer) -> None:
    pool = env.hsm.inner
    assert isinstance(pool, HsmPool)
    cid = signer.add_key("rsa-3072")
    c = signer.client()
    hs = digests(1000)
    sad = c.authorize(cid, hs, signer.code()).sad
    result: dict[str, object] = {}

    def call() -> None:
        try:
            c.sign_hash(cid, sad, hs, "RSA_PKCS1_V15", timeout=60)
            result["outcome"] = "signed"
        except grpc.RpcError as exc:
            result["outcome"] = exc.code()  # type: ignore[attr-defined]

    before = env.hsm.sign_calls
    t = threading.Thread(target=call)
    t.start()
    deadline = time.monotonic() + 10
    while env.hsm.sign_calls == before and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.3)  # RSA-3072 x 1000 takes seconds: the workers are busy now
    victim = pool.worker_pids()[0]
    os.kill(victim, signal.SIGKILL)
    t.join(timeout=60)
    assert not t.is_alive(), "the request hung"
    assert result["outcome"] == grpc.StatusCode.UNAVAILABLE
    failed = last_record(env, "sign.hash", cid)
    assert failed is not None and failed["result"] == "failure"
    # The pool replaced the worker; the next request succeeds.
    hs2 = digests(4)
    sad2 = c.authorize(cid, hs2, signer.code()).sad
    assert len(c.sign_hash(cid, sad2, hs2, "RSA_PKCS1_V15").signatures) == 4
    assert victim not in pool.worker_pids()
