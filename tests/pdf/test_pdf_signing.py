"""Real PDFs signed through the SDK against a real server, validated by pyHanko and poppler's pdfsig,
chained to the root GetCredential returns (and, for B-T, the test timestamp authority's root)."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import grpc
import pytest

from rsign.auth import totp
from rsign.client import Client, CodeAlreadyUsed, RsignError
from rsign.client.pdf import Stamp
from rsign.client.verify import verify_pdf
from rsign.domain.events import EventFilter
from tests.conftest import Env, Signer
from tests.pdf.tools import Tsa, make_pdf, nss_db, pdfsig


def _login(signer: Signer) -> Client:
    c = Client(signer.env.server.address)
    c.login(signer.user_id, signer.pin, signer.code())
    return c


def _check_valid(files: list[Path], roots: list[bytes], db: Path, timestamped: bool) -> None:
    for f in files:
        (rep,) = verify_pdf(f, roots)
        assert rep.intact and rep.trusted, rep.summary
        assert rep.coverage == "ENTIRE_FILE"
        assert rep.chain[-1].startswith("Common Name: rsign Development CA")
        if timestamped:
            assert rep.timestamp is not None and rep.timestamp_trusted, rep.summary
        else:
            assert rep.timestamp is None
        out = pdfsig(f, db)
        assert "Signature Validation: Signature is Valid." in out, out
        assert "Certificate Validation: Certificate is Trusted." in out, out
        assert "Signature Type: ETSI.CAdES.detached" in out, out  # PAdES


@pytest.mark.parametrize(
    ("algorithm", "scheme", "timestamped"),
    [
        ("rsa-2048", None, False),
        ("ec-p256", None, False),
        ("rsa-2048", None, True),
        ("ec-p256", None, True),
        ("rsa-2048", "RSA_PSS", False),
    ],
)
def test_sign_and_validate(
    env: Env, signer: Signer, tsa: Tsa, tmp_path: Path, algorithm: str, scheme: str | None, timestamped: bool
) -> None:
    cid = signer.add_key(algorithm)
    docs = [make_pdf(tmp_path / f"doc{i}.pdf", f"Quyet dinh so {i}") for i in range(3)]
    with _login(signer) as c:
        cred = c.credential(cid)
        signed = c.sign_pdfs(
            cid,
            docs,
            otp=signer.code(),
            out_dir=tmp_path / "signed",
            tsa_url=tsa.url if timestamped else None,
            scheme=scheme,
            reason="Phê duyệt",
            location="Sơn La",
        )
    assert signed == [tmp_path / "signed" / d.name for d in docs]
    roots = [cred.certificates[-1], tsa.root_der]
    _check_valid(signed, roots, nss_db(tmp_path / "nss", roots), timestamped)
    expected = {"RSA_PSS": "rsassa_pss"}.get(
        scheme or "", "sha256_ecdsa" if algorithm.startswith("ec") else "sha256_rsa"
    )
    assert {verify_pdf(f, roots)[0].algorithm for f in signed} == {expected}
    # A foreign root does not validate it: the chain check is real.
    (untrusted,) = verify_pdf(signed[0], [tsa.root_der])
    assert untrusted.intact and not untrusted.trusted


def test_twenty_pdfs_one_authorize_one_code(env: Env, signer: Signer, tmp_path: Path) -> None:
    cid = signer.add_key("ec-p256", multisign=20)
    docs = [make_pdf(tmp_path / f"cv{i:02d}.pdf", f"Cong van {i}") for i in range(20)]
    stages: list[str] = []
    with _login(signer) as c:
        cred = c.credential(cid)
        signed = c.sign_pdfs(
            cid, docs, otp=signer.code(), out_dir=tmp_path / "out", progress=lambda s, d, t: stages.append(s)
        )
    assert len(signed) == 20
    # Every digest first, then one Authorize and one SignHash, then every document finished.
    assert stages == ["prepare"] * 20 + ["authorize", "sign"] + ["finish"] * 20
    with env.app.store.read() as t:
        issued = t.last_events(EventFilter(action="sad.issue", credential_id=cid), 100)
        signs = t.last_events(EventFilter(action="sign.hash", credential_id=cid), 100)
    assert [r["result"] for r in issued] == ["success"]
    assert json.loads(issued[0]["details"])["count"] == 20
    assert len(signs) == 20 and {r["result"] for r in signs} == {"success"}
    roots = [cred.certificates[-1]]
    _check_valid(signed, roots, nss_db(tmp_path / "nss", roots), timestamped=False)


def test_more_documents_than_multisign_ask_one_code_per_group(env: Env, signer: Signer, tmp_path: Path) -> None:
    cid = signer.add_key("ec-p256", multisign=3)
    docs = [make_pdf(tmp_path / f"d{i}.pdf") for i in range(7)]
    asked: list[str] = []

    def next_code() -> str:
        asked.append(signer.code())
        return asked[-1]

    with _login(signer) as c:
        with pytest.raises(ValueError, match="7 documents need 3 one-time codes"):
            c.sign_pdfs(cid, docs, otp=signer.code(), out_dir=tmp_path / "out")
        signed = c.sign_pdfs(cid, docs, otp=next_code, out_dir=tmp_path / "out")
    assert len(asked) == 3 and len(signed) == 7
    with env.app.store.read() as t:
        assert len(t.last_events(EventFilter(action="sad.issue", credential_id=cid, result="success"), 10)) == 3


def test_visible_stamp_keeps_vietnamese_diacritics(env: Env, signer: Signer, tmp_path: Path) -> None:
    cid = signer.add_key("rsa-2048")
    doc = make_pdf(tmp_path / "qd.pdf")
    stamp = Stamp("Lò Văn Tuấn", "Sở Nội vụ, tỉnh Sơn La")
    with _login(signer) as c:
        cred = c.credential(cid)
        (signed,) = c.sign_pdfs(cid, [doc], otp=signer.code(), out_dir=tmp_path / "out", stamp=stamp)
    text = subprocess.run(["pdftotext", str(signed), "-"], capture_output=True, text=True, check=True).stdout
    assert "Ký bởi: Lò Văn Tuấn" in text
    assert "Sở Nội vụ, tỉnh Sơn La" in text
    assert "Thời gian: " in text
    roots = [cred.certificates[-1]]
    _check_valid([signed], roots, nss_db(tmp_path / "nss", roots), timestamped=False)


def test_used_code_through_the_sdk_is_an_exception_with_the_wait(env: Env, signer: Signer, tmp_path: Path) -> None:
    cid = signer.add_key("ec-p256")
    doc = make_pdf(tmp_path / "a.pdf")
    with _login(signer) as c:
        code = totp.code_for_step(signer.seed, signer.last_step)  # the login's code
        with pytest.raises(CodeAlreadyUsed) as e:
            c.sign_pdfs(cid, [doc], otp=code, out_dir=tmp_path / "out")
        assert e.value.code == grpc.StatusCode.ABORTED and e.value.retry_after >= 0
        assert e.value.message.startswith("this code was already used")
        assert not (tmp_path / "out" / "a.pdf").exists()  # nothing half-written
        # With a function for the code, the SDK asks again after an already used code.
        codes = iter([code, signer.code()])
        (signed,) = c.sign_pdfs(cid, [doc], otp=lambda: next(codes), out_dir=tmp_path / "out")
        root = c.credential(cid).certificates[-1]
    (rep,) = verify_pdf(signed, [root])
    assert rep.intact and rep.trusted


def test_unavailable_is_retried_with_backoff_then_raised(tmp_path: Path) -> None:
    import socket
    import time

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    for retries, least in ((0, 0.0), (2, 0.1 * 0.5 + 0.2 * 0.5)):
        t0 = time.monotonic()
        with Client(f"127.0.0.1:{port}", timeout=2, retries=retries, backoff=0.1) as c, pytest.raises(RsignError) as e:
            c.login("u", "p", "000000")
        assert e.value.code == grpc.StatusCode.UNAVAILABLE
        assert time.monotonic() - t0 >= least


def test_refusals_other_than_unavailable_are_not_retried(env: Env, signer: Signer) -> None:
    """Retries are for UNAVAILABLE only: a wrong PIN resent three times would count three failures
    towards the lockout, and an already used code resent would be refused again anyway."""
    cid = signer.add_key("ec-p256")
    with env.app.store.read() as t:
        start = max((r["seq"] for r in t.last_events(EventFilter(), 1)), default=0)
    with Client(env.server.address, retries=3, backoff=0.01) as c:
        with pytest.raises(RsignError) as e:
            c.login(signer.user_id, "P-wrong-pin", signer.code())
        assert e.value.code == grpc.StatusCode.UNAUTHENTICATED
        c.login(signer.user_id, signer.pin, signer.code())
        used = totp.code_for_step(signer.seed, signer.last_step)  # the login's code
        with pytest.raises(CodeAlreadyUsed):
            c.authorize(cid, [bytes(32)], otp=used)
    with env.app.store.read() as t:
        logins = t.last_events(EventFilter(action="auth.login", actor=signer.user_id), 10)
        issued = t.last_events(EventFilter(action="sad.issue", actor=signer.user_id), 10)
    logins, issued = ([r for r in rows if r["seq"] > start] for rows in (logins, issued))
    assert [r["result"] for r in logins] == ["failure", "success"]  # oldest first: one try each
    assert [(r["result"], r["reason"]) for r in issued] == [("failure", "one-time code already used")]


def test_sign_hashes_is_one_activation_for_raw_digests(env: Env, signer: Signer) -> None:
    """The SDK's digest path (for CMS or other formats the caller builds): one code, one Authorize,
    one SignHash, signatures that verify against the credential's certificate, in order."""
    import hashlib

    from rsign.dev.democlient import verify_signature

    cid = signer.add_key("rsa-2048")
    hashes = [hashlib.sha256(f"attrs {i}".encode()).digest() for i in range(3)]
    with _login(signer) as c:
        sigs = c.sign_hashes(cid, hashes, otp=signer.code())
        cert = c.credential(cid).certificates[0]
    assert len(sigs) == 3
    for d, sig in zip(hashes, sigs, strict=True):
        verify_signature(cert, d, sig, "RSA_PKCS1_V15")
    with env.app.store.read() as t:
        assert len(t.last_events(EventFilter(action="sad.issue", credential_id=cid), 10)) == 1
        assert len(t.last_events(EventFilter(action="sign.hash", credential_id=cid), 10)) == 3
