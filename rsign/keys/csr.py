"""PKCS#10 certification requests whose signature is made inside the HSM (asn1crypto builds the
structure; the private key never leaves the token)."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

from asn1crypto import csr as acsr
from asn1crypto import keys as akeys
from asn1crypto import x509 as ax509

from rsign.domain.algorithms import HashAlg, KeyAlgorithm, Scheme, SignSpec, sign_spec

_SIG_ALG = {True: "sha256_rsa", False: "sha256_ecdsa"}


def subject_name(
    holder_name: str, agency: str, province: str = "Sơn La", country: str = "VN", user_id: str = ""
) -> ax509.Name:
    """Holder's subject, UTF8String throughout (Vietnamese names) except the country code."""
    attrs: dict[str, str] = {"country_name": country, "state_or_province_name": province}
    if agency:
        attrs["organization_name"] = agency[:64]
    if user_id:
        attrs["user_id"] = user_id[:64]
    attrs["common_name"] = holder_name[:64]
    return ax509.Name.build(attrs, use_printable=False)


def build_csr(
    spki_der: bytes, subject: ax509.Name, alg: KeyAlgorithm, sign: Callable[[SignSpec, bytes], bytes]
) -> bytes:
    """DER CSR; ``sign(spec, sha256_digest)`` signs inside the HSM."""
    info = acsr.CertificationRequestInfo(
        {
            "version": "v1",
            "subject": subject,
            "subject_pk_info": akeys.PublicKeyInfo.load(spki_der),
            "attributes": [],
        }
    )
    digest = hashlib.sha256(info.dump()).digest()
    scheme = Scheme.RSA_PKCS1_V15 if alg.is_rsa else Scheme.ECDSA
    signature = sign(sign_spec(alg, HashAlg.SHA256, scheme), digest)
    req = acsr.CertificationRequest(
        {
            "certification_request_info": info,
            "signature_algorithm": {"algorithm": _SIG_ALG[alg.is_rsa]},
            "signature": signature,
        }
    )
    return bytes(req.dump())
