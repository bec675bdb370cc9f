"""Report on a signed PDF's signatures with pyHanko's validator: who, when, intact, chain."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from asn1crypto import pem, x509
from pyhanko.pdf_utils.reader import PdfFileReader
from pyhanko.sign.validation import async_validate_pdf_signature
from pyhanko_certvalidator import ValidationContext


@dataclass(frozen=True)
class SignatureReport:
    field: str
    signer: str  # the signing certificate's subject
    signing_time: datetime | None  # as the signer claims it (the PDF's /M or the CMS attribute)
    timestamp: datetime | None  # from a timestamp authority (PAdES B-T), when present
    timestamp_trusted: bool | None  # None: no timestamp
    intact: bool  # the signed bytes are unchanged and the signature verifies over them
    trusted: bool  # the signer's certificate chains to one of the given roots
    chain: tuple[str, ...]  # signer first, up to the root (empty when it does not chain)
    algorithm: str  # e.g. "sha256_rsa", "rsassa_pss", "sha256_ecdsa"
    coverage: str  # whether the signature covers the whole file (later incremental updates)
    summary: str  # pyHanko's one-line bottom line

    @property
    def ok(self) -> bool:
        return self.intact and self.trusted and self.timestamp_trusted is not False


def load_roots(files: Sequence[str | Path]) -> list[bytes]:
    """DER certificates from PEM (one or more) or DER files."""
    roots: list[bytes] = []
    for f in files:
        data = Path(f).read_bytes()
        if pem.detect(data):
            roots.extend(der for _, _, der in pem.unarmor(data, multiple=True))
        else:
            roots.append(data)
    return roots


def verify_pdf(path: str | Path, trust_roots: list[bytes]) -> list[SignatureReport]:
    """Every signature in ``path``, validated against ``trust_roots`` (DER root certificates, e.g.
    the last certificate ``GetCredential`` returns, and the timestamp authority's root). Offline:
    nothing is fetched; revocation is not checked without revocation data in the file."""
    roots = [x509.Certificate.load(r) for r in trust_roots]
    return asyncio.run(_verify(Path(path), roots))


async def _verify(path: Path, roots: list[x509.Certificate]) -> list[SignatureReport]:
    reports = []
    with path.open("rb") as f:
        reader = PdfFileReader(f, strict=False)
        for sig in reader.embedded_signatures:
            vc = ValidationContext(trust_roots=roots, allow_fetching=False)
            st = await async_validate_pdf_signature(sig, signer_validation_context=vc, ts_validation_context=vc)
            ts = st.timestamp_validity
            path_certs = _path_names(st)
            reports.append(
                SignatureReport(
                    field=sig.field_name,
                    signer=st.signing_cert.subject.human_friendly,
                    signing_time=st.signer_reported_dt,
                    timestamp=ts.timestamp if ts is not None else None,
                    timestamp_trusted=ts.trusted if ts is not None else None,
                    intact=bool(st.intact and st.valid),
                    trusted=bool(st.trusted),
                    chain=path_certs,
                    algorithm=str(sig.signer_info["signature_algorithm"]["algorithm"].native),
                    coverage=st.coverage.name if st.coverage is not None else "unknown",
                    summary=st.bottom_line if isinstance(st.bottom_line, str) else str(st.summary()),
                )
            )
    return reports


def _path_names(status: object) -> tuple[str, ...]:
    path = getattr(status, "validation_path", None)
    if path is None:
        return ()
    certs = [c for c in path.iter_certs(include_root=True)] if hasattr(path, "iter_certs") else []
    return tuple(c.subject.human_friendly for c in reversed(certs))
