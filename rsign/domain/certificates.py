"""Where certificates for HSM keys come from: the certificate-issuer port.

Keys are always generated in the HSM; their certificates come from a CA. With the embedded
development token a local development CA (``rsign.dev.devca``) issues one at once, so that a fresh
state directory signs out of the box. With a real HSM nothing is issued locally: a key has no
certificate until a key officer imports one from the real CA (CSR -> CA -> import), and only
``<state-dir>/trust-anchors/`` is trusted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from cryptography import x509


@dataclass(frozen=True)
class IssuedCertificate:
    certificate: bytes  # DER, end entity
    chain: tuple[bytes, ...]  # DER, its issuers up to the root


class CertificateIssuer(Protocol):
    def issue(self, spki_der: bytes, holder_name: str, user_id: str, agency: str) -> IssuedCertificate | None:
        """A signing certificate for a key in the HSM, or None: none until one is imported."""
        ...

    def issue_audit(self, spki_der: bytes) -> IssuedCertificate | None:
        """The audit checkpoint key's certificate, or None: none until one is imported."""
        ...

    def trust_anchors(self) -> list[x509.Certificate]:
        """Roots this issuer adds to ``<state-dir>/trust-anchors/`` for certificate imports."""
        ...


class ExternalCAOnly:
    """The issuer with a real HSM: issues nothing and trusts nothing beyond the configured trust
    anchors. Every certificate comes from the operator's CA through an import."""

    def issue(self, spki_der: bytes, holder_name: str, user_id: str, agency: str) -> IssuedCertificate | None:
        return None

    def issue_audit(self, spki_der: bytes) -> IssuedCertificate | None:
        return None

    def trust_anchors(self) -> list[x509.Certificate]:
        return []
