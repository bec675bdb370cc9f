"""Test helpers for PDF signing: documents, a real RFC 3161 timestamp authority over HTTP, and the
two independent validators (pyHanko's, and poppler's pdfsig with an NSS database trusting a root)."""

from __future__ import annotations

import contextlib
import datetime as dt
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

from asn1crypto import keys, tsp
from asn1crypto import x509 as a_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyhanko.pdf_utils import generic, writer
from pyhanko.sign.timestamps.dummy_client import DummyTimeStamper
from pyhanko_certvalidator.registry import SimpleCertificateStore


def make_pdf(path: Path, title: str = "Quyet dinh") -> Path:
    """A one-page A4 PDF with a line of (ASCII) text in a standard font."""
    w = writer.PdfFileWriter()
    n = generic.NameObject
    font = generic.DictionaryObject(
        {n("/Type"): n("/Font"), n("/Subtype"): n("/Type1"), n("/BaseFont"): n("/Helvetica")}
    )
    text = title.encode("ascii")
    content = generic.StreamObject(stream_data=b"BT /F1 14 Tf 72 760 Td (" + text + b") Tj ET")
    page = generic.DictionaryObject(
        {
            n("/Type"): n("/Page"),
            n("/MediaBox"): generic.ArrayObject([generic.NumberObject(x) for x in (0, 0, 595, 842)]),
            n("/Contents"): w.add_object(content),
            n("/Resources"): generic.DictionaryObject(
                {n("/Font"): generic.DictionaryObject({n("/F1"): w.add_object(font)})}
            ),
        }
    )
    w.insert_page(page)
    with path.open("wb") as f:
        w.write(f)
    return path


def _name(cn: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.COUNTRY_NAME, "VN")])


@dataclass
class Tsa:
    url: str
    root_der: bytes


@contextlib.contextmanager
def timestamp_authority() -> Iterator[Tsa]:
    """An RFC 3161 timestamp authority on an ephemeral HTTP port: its own root CA, and a TSA
    certificate with the critical timeStamping extended key usage that validators require."""
    now = dt.datetime.now(dt.UTC)
    root_key = ec.generate_private_key(ec.SECP256R1())
    root = (
        x509.CertificateBuilder()
        .subject_name(_name("rsign test TSA root"))
        .issuer_name(_name("rsign test TSA root"))
        .public_key(root_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    # pyHanko's DummyTimeStamper (the token signing this server uses) signs with RSA only.
    tsa_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    tsa_cert = (
        x509.CertificateBuilder()
        .subject_name(_name("rsign test TSA"))
        .issuer_name(root.subject)
        .public_key(tsa_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.TIME_STAMPING]), critical=True)
        .add_extension(x509.KeyUsage(True, False, False, False, False, False, False, False, False), critical=True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(root_key.public_key()), critical=False)
        .sign(root_key, hashes.SHA256())
    )
    root_der = root.public_bytes(serialization.Encoding.DER)
    stamper = DummyTimeStamper(
        a_x509.Certificate.load(tsa_cert.public_bytes(serialization.Encoding.DER)),
        keys.PrivateKeyInfo.load(
            tsa_key.private_bytes(
                serialization.Encoding.DER, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        ),
        certs_to_embed=SimpleCertificateStore.from_certs([a_x509.Certificate.load(root_der)]),
    )

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            if self.headers.get("Content-Type") != "application/timestamp-query":
                self.send_error(415)
                return
            resp = stamper.request_tsa_response(tsp.TimeStampReq.load(body)).dump()
            self.send_response(200)
            self.send_header("Content-Type", "application/timestamp-reply")
            self.send_header("Content-Length", str(len(resp)))
            self.end_headers()
            self.wfile.write(resp)

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield Tsa(f"http://127.0.0.1:{server.server_address[1]}/tsa", root_der)
    finally:
        server.shutdown()
        server.server_close()


def nss_db(directory: Path, roots: list[bytes]) -> Path:
    """An NSS database trusting ``roots`` (DER) for pdfsig's certificate validation."""
    directory.mkdir(parents=True, exist_ok=True)
    subprocess.run(["certutil", "-N", "-d", f"sql:{directory}", "--empty-password"], check=True)
    for i, der in enumerate(roots):
        pem = directory / f"root{i}.der"
        pem.write_bytes(der)
        subprocess.run(
            ["certutil", "-A", "-d", f"sql:{directory}", "-n", f"root{i}", "-t", "CT,C,C", "-i", str(pem)], check=True
        )
    return directory


def pdfsig(path: Path, db: Path) -> str:
    """pdfsig's report. Not with -no-ocsp: poppler 22.12 then reports every certificate as "Unknown
    issue"; the test certificates name no OCSP responder, so nothing is fetched anyway."""
    res = subprocess.run(["pdfsig", "-nssdir", str(db), str(path)], capture_output=True, text=True, check=False)
    return res.stdout + res.stderr
