"""Acceptance: pyHanko's own ``CSCSigner`` (unmodified; only the authorization manager is ours, as
pyHanko intends) signs PDFs through rsign's CSC façade, three documents per authorization, with
RSA-2048 (PKCS#1 v1.5), RSA-PSS and EC P-256 credentials; pyHanko's validator (trusting only the
embedded development CA from credentials/info) and poppler's ``pdfsig`` (its NSS database trusting
only that CA) accept every PDF: signature valid, certificate trusted."""

from __future__ import annotations

import asyncio
import base64
import subprocess
from collections.abc import Iterator
from io import BytesIO
from pathlib import Path
from typing import Any

import aiohttp
import httpx
import pytest
from asn1crypto import x509 as asn1_x509
from pyhanko.pdf_utils import generic
from pyhanko.pdf_utils.incremental_writer import IncrementalPdfFileWriter
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.pdf_utils.writer import PdfFileWriter
from pyhanko.sign import signers
from pyhanko.sign.signers.csc_signer import (
    CSCAuthorizationInfo,
    CSCAuthorizationManager,
    CSCCredentialInfo,
    CSCServiceSessionInfo,
    CSCSigner,
    fetch_certs_in_csc_credential,
)
from pyhanko.sign.validation import async_validate_pdf_signature
from pyhanko_certvalidator import ValidationContext

from rsign.http.server import HttpServer, start_http
from tests.conftest import Env, Signer, make_signer, running_env


@pytest.fixture(scope="module")
def csc_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Env, HttpServer]]:
    # A service of its own: its fake clock stays near the real time, which pyHanko's validator
    # uses against the certificates the service issued.
    with running_env(tmp_path_factory.mktemp("rsign-csc")) as env:
        http = start_http(env.app, "127.0.0.1:0")
        try:
            yield env, http
        finally:
            http.stop(1.0)


def csc_login(http: HttpServer, s: Signer) -> str:
    r = httpx.post(f"{http.base_url}/csc/v2/auth/login", json={"userID": s.user_id, "PIN": s.pin, "OTP": s.code()})
    assert r.status_code == 200, r.text
    token = r.json()["access_token"]
    assert isinstance(token, str)
    return token


class OtpAuthorizationManager(CSCAuthorizationManager):
    """What pyHanko leaves to the integrator: obtain a SAD for the hashes of a batch. The signer's
    fresh one-time code goes in the v1.0.4 ``OTP`` field, the hashes in ``hash``."""

    def __init__(
        self, session: aiohttp.ClientSession, info: CSCServiceSessionInfo, cred: CSCCredentialInfo, signer: Signer
    ) -> None:
        super().__init__(info, cred)
        self.session = session
        self.signer = signer
        self.requests: list[dict[str, Any]] = []

    async def authorize_signature(self, hash_b64s: list[str]) -> CSCAuthorizationInfo:
        req = self.format_csc_auth_request(otp=self.signer.code(), hash_b64s=hash_b64s)
        self.requests.append(req)
        url = self.csc_session_info.endpoint_url("credentials/authorize")
        async with self.session.post(url, headers=self.auth_headers, json=req, raise_for_status=True) as resp:
            return self.parse_csc_auth_response(await resp.json())


def blank_pdf(title: str) -> bytes:
    w = PdfFileWriter()
    content = w.add_object(generic.StreamObject(stream_data=f"BT /F1 18 Tf 72 720 Td ({title}) Tj ET".encode()))
    font = generic.DictionaryObject(
        {
            generic.NameObject("/Type"): generic.NameObject("/Font"),
            generic.NameObject("/Subtype"): generic.NameObject("/Type1"),
            generic.NameObject("/BaseFont"): generic.NameObject("/Helvetica"),
        }
    )
    page = generic.DictionaryObject(
        {
            generic.NameObject("/Type"): generic.NameObject("/Page"),
            generic.NameObject("/MediaBox"): generic.ArrayObject([generic.NumberObject(v) for v in (0, 0, 595, 842)]),
            generic.NameObject("/Resources"): generic.DictionaryObject(
                {generic.NameObject("/Font"): generic.DictionaryObject({generic.NameObject("/F1"): font})}
            ),
            generic.NameObject("/Contents"): content,
        }
    )
    w.insert_page(page)
    out = BytesIO()
    w.write(out)
    return out.getvalue()


async def sign_three(
    base_url: str, token: str, cid: str, signer: Signer, prefer_pss: bool, count: int = 3
) -> tuple[list[bytes], OtpAuthorizationManager, CSCCredentialInfo]:
    info = CSCServiceSessionInfo(base_url, cid, oauth_token=token, api_ver="v1")
    async with aiohttp.ClientSession() as session:
        cred = await fetch_certs_in_csc_credential(session, info)
        manager = OtpAuthorizationManager(session, info, cred, signer)
        csc = CSCSigner(session, manager, prefer_pss=prefer_pss, batch_size=3)
        outputs = [BytesIO() for _ in range(count)]

        async def one(i: int) -> None:
            w = IncrementalPdfFileWriter(BytesIO(blank_pdf(f"Quyet dinh so {i + 1}")))
            meta = signers.PdfSignatureMetadata(field_name="Signature1", md_algorithm="sha256")
            await signers.PdfSigner(meta, signer=csc).async_sign_pdf(w, output=outputs[i])

        # Concurrent signings join one batch: one authorize and one signHash per three documents.
        await asyncio.gather(*(one(i) for i in range(count)))
    return [o.getvalue() for o in outputs], manager, cred


async def validate(pdf: bytes, root: asn1_x509.Certificate) -> None:
    vc = ValidationContext(trust_roots=[root], allow_fetching=False, revocation_mode="soft-fail")
    sig = PdfFileReader(BytesIO(pdf)).embedded_signatures[0]
    status = await async_validate_pdf_signature(sig, vc)
    assert status.intact and status.valid and status.trusted, status.pretty_print_details()
    assert status.bottom_line


def nss_trusting(root: asn1_x509.Certificate, where: Path) -> Path:
    """An NSS database (what pdfsig validates certificates with) trusting only ``root``."""
    where.mkdir()
    run = {"capture_output": True, "text": True, "timeout": 60, "check": True}
    subprocess.run(["certutil", "-N", "-d", f"sql:{where}", "--empty-password"], **run)  # type: ignore[call-overload]
    (where / "root.der").write_bytes(root.dump())
    subprocess.run(
        ["certutil", "-A", "-d", f"sql:{where}", "-n", "rsign-dev-root", "-t", "C,C,C", "-i", str(where / "root.der")],
        **run,  # type: ignore[call-overload]
    )
    return where


def pdfsig_accepts(pdf: bytes, path: Path, nssdir: Path) -> str:
    path.write_bytes(pdf)
    out = subprocess.run(
        # No OCSP query happens: the development certificates name no responder (no AIA).
        ["pdfsig", "-nssdir", f"sql:{nssdir}", str(path)], capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert "Signature Validation: Signature is Valid." in out.stdout, out.stdout
    assert "Certificate Validation: Certificate is Trusted." in out.stdout, out.stdout
    return out.stdout


@pytest.mark.parametrize(
    ("algorithm", "prefer_pss", "sig_oid"),
    [
        ("rsa-2048", False, "1.2.840.113549.1.1.11"),
        ("rsa-2048", True, "1.2.840.113549.1.1.10"),
        ("ec-p256", False, "1.2.840.10045.4.3.2"),
    ],
)
def test_pyhanko_csc_signer_signs_three_documents_per_authorization(
    csc_env: tuple[Env, HttpServer], tmp_path: Path, algorithm: str, prefer_pss: bool, sig_oid: str
) -> None:
    env, http = csc_env
    s = make_signer(env, "csc")
    cid = s.add_key(algorithm)
    token = csc_login(http, s)
    before = env.hsm.sign_calls
    pdfs, manager, cred = asyncio.run(sign_three(http.base_url, token, cid, s, prefer_pss))

    # credentials/info: signer first, then the chain up to the development root; SCAL 2.
    assert cred.hash_pinning_required and cred.max_batch_size >= 3
    assert len(cred.chain) >= 1 and cred.chain[-1].self_signed == "maybe"
    # One authorization for three documents, bound to their three hashes.
    assert len(manager.requests) == 1
    assert manager.requests[0]["numSignatures"] == 3 and len(manager.requests[0]["hash"]) == 3
    assert env.hsm.sign_calls == before + 1  # and one signHash (one HSM batch)
    root = cred.chain[-1]
    nss = nss_trusting(root, tmp_path / "nss")
    for i, pdf in enumerate(pdfs):
        sig = PdfFileReader(BytesIO(pdf)).embedded_signatures[0]
        assert sig.signer_info["signature_algorithm"]["algorithm"].dotted == sig_oid
        asyncio.run(validate(pdf, root))
        pdfsig_accepts(pdf, tmp_path / f"doc{i}.pdf", nss)


def test_six_documents_take_two_authorizations(csc_env: tuple[Env, HttpServer]) -> None:
    env, http = csc_env
    s = make_signer(env, "csc")
    cid = s.add_key("ec-p256")
    token = csc_login(http, s)
    pdfs, manager, cred = asyncio.run(sign_three(http.base_url, token, cid, s, False, count=6))
    assert len(manager.requests) == 2 and all(len(r["hash"]) == 3 for r in manager.requests)
    for pdf in pdfs:
        asyncio.run(validate(pdf, cred.chain[-1]))


def test_info_and_credential_list(csc_env: tuple[Env, HttpServer]) -> None:
    env, http = csc_env
    r = httpx.post(f"{http.base_url}/csc/v2/info", json={})
    assert r.status_code == 200
    info = r.json()
    assert info["specs"].startswith("2.") and "signatures/signHash" in info["methods"]
    assert "1.2.840.113549.1.1.10" in info["signAlgorithms"]["algos"]
    s = make_signer(env, "csc")
    rsa, ec = s.add_key("rsa-2048"), s.add_key("ec-p256")
    token = csc_login(http, s)
    hdr = {"Authorization": f"Bearer {token}"}
    listed = httpx.post(f"{http.base_url}/csc/v2/credentials/list", json={"credentialInfo": True}, headers=hdr).json()
    assert sorted(listed["credentialIDs"]) == sorted([rsa, ec])
    by_id = {c["credentialID"]: c for c in listed["credentialInfos"]}
    assert by_id[ec]["key"]["curve"] == "1.2.840.10045.3.1.7" and by_id[ec]["key"]["len"] == 256
    assert by_id[rsa]["key"]["algo"][:1] == ["1.2.840.113549.1.1.11"] and by_id[rsa]["SCAL"] == "2"
    full = httpx.post(
        f"{http.base_url}/csc/v2/credentials/info",
        json={"credentialID": rsa, "certificates": "chain", "certInfo": True},
        headers=hdr,
    ).json()
    leaf = asn1_x509.Certificate.load(base64.b64decode(full["cert"]["certificates"][0]))
    assert leaf.subject.human_friendly and full["cert"]["subjectDN"] and full["cert"]["validTo"].endswith("Z")
    assert len(full["cert"]["certificates"]) >= 2
