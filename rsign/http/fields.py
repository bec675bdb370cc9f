"""CSC request fields: reading them (v2 names and pyHanko's v1.0.4 names) and the algorithm OIDs.

Every refusal here is a ``BadRequest`` naming the field, before any domain call.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from asn1crypto import algos

from rsign.domain.algorithms import HashAlg, KeyAlgorithm, Scheme
from rsign.domain.limits import DIGEST_MAX
from rsign.http.plumbing import BadRequest

HASH_OIDS = {
    "2.16.840.1.101.3.4.2.1": HashAlg.SHA256,
    "2.16.840.1.101.3.4.2.2": HashAlg.SHA384,
    "2.16.840.1.101.3.4.2.3": HashAlg.SHA512,
}
_BY_SIZE = {h.digest_size: h for h in HashAlg}
_ASN1_HASH = {"sha256": HashAlg.SHA256, "sha384": HashAlg.SHA384, "sha512": HashAlg.SHA512}

# signAlgo -> (scheme, the digest the OID implies or None when hashAlgo must say it).
SIGN_OIDS: dict[str, tuple[Scheme, HashAlg | None]] = {
    "1.2.840.113549.1.1.1": (Scheme.RSA_PKCS1_V15, None),  # rsaEncryption
    "1.2.840.113549.1.1.11": (Scheme.RSA_PKCS1_V15, HashAlg.SHA256),
    "1.2.840.113549.1.1.12": (Scheme.RSA_PKCS1_V15, HashAlg.SHA384),
    "1.2.840.113549.1.1.13": (Scheme.RSA_PKCS1_V15, HashAlg.SHA512),
    "1.2.840.113549.1.1.10": (Scheme.RSA_PSS, None),  # RSASSA-PSS: the digest is in signAlgoParams
    "1.2.840.10045.2.1": (Scheme.ECDSA, None),  # id-ecPublicKey
    "1.2.840.10045.4.3.2": (Scheme.ECDSA, HashAlg.SHA256),
    "1.2.840.10045.4.3.3": (Scheme.ECDSA, HashAlg.SHA384),
    "1.2.840.10045.4.3.4": (Scheme.ECDSA, HashAlg.SHA512),
}
_INT_DIGITS = 9
# A digest is at most limits.DIGEST_MAX bytes (SHA-512), so its base64 at most this many characters;
# anything longer is refused before decoding, as gRPC refuses a longer digest.
_DIGEST_B64_MAX = 4 * -(-DIGEST_MAX // 3)
CURVE_OIDS = {KeyAlgorithm.EC_P256: "1.2.840.10045.3.1.7", KeyAlgorithm.EC_P384: "1.3.132.0.34"}


def text(body: dict[str, Any], *names: str, required: bool = True, limit: int = 1024) -> str:
    """The first of ``names`` present (v2 name first, then the v1 one)."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, str):
            raise BadRequest(f"{name} must be a string", name)
        if len(value) > limit:
            raise BadRequest(f"{name} is longer than {limit} characters", name)
        return value
    if required:
        raise BadRequest(f"missing string parameter {names[0]}", names[0])
    return ""


def flag(body: dict[str, Any], name: str) -> bool:
    value = body.get(name, False)
    if not isinstance(value, bool):
        raise BadRequest(f"{name} must be true or false", name)
    return value


def integer(body: dict[str, Any], name: str, required: bool = True) -> int | None:
    value = body.get(name)
    if value is None:
        if required:
            raise BadRequest(f"missing integer parameter {name}", name)
        return None
    # CSC v1 clients send numbers as strings now and then ("numSignatures": "1"). ASCII digits
    # only, and few of them: str.isdigit also takes "²" (which int() refuses) and int() refuses
    # more than 4300 digits; a count here is small anyway.
    text = str(value) if isinstance(value, int | str) and not isinstance(value, bool) else ""
    if not (text.isascii() and text.isdigit() and len(text) <= _INT_DIGITS):
        raise BadRequest(f"{name} must be a non-negative integer", name)
    return int(text)


def b64(value: Any, name: str) -> bytes:
    if not isinstance(value, str):
        raise BadRequest(f"{name} must be a base64 string", name)
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{name} is not valid base64", name) from None


def hashes(body: dict[str, Any], limit: int) -> list[bytes]:
    """``hashes`` (v2) or ``hash`` (v1.0.4): a non-empty list of standard-base64 digests."""
    name = "hashes" if "hashes" in body else "hash"
    values = body.get(name)
    if not isinstance(values, list) or not values:
        raise BadRequest("missing array parameter hashes (or hash): the digests to sign", "hashes")
    if len(values) > limit:
        raise BadRequest(f"{len(values)} hashes; at most {limit} per request", name)
    for i, v in enumerate(values):
        if isinstance(v, str) and len(v) > _DIGEST_B64_MAX:
            raise BadRequest(f"{name}[{i}] is longer than a SHA-512 digest in base64", name)
    return [b64(v, f"{name}[{i}]") for i, v in enumerate(values)]


def hash_alg(body: dict[str, Any], digests: list[bytes]) -> HashAlg:
    """``hashAlgorithmOID`` (v2) or ``hashAlgo`` (v1); pyHanko sends neither to authorize, so
    without one the digest length decides (SHA-256/384/512 have distinct lengths)."""
    oid = text(body, "hashAlgorithmOID", "hashAlgo", required=False, limit=64)
    if oid:
        alg = HASH_OIDS.get(oid)
        if alg is None:
            raise BadRequest(f"unsupported hash algorithm {oid!r}: use SHA-256, SHA-384 or SHA-512", "hashAlgo")
        return alg
    alg = _BY_SIZE.get(len(digests[0]))
    if alg is None:
        raise BadRequest(f"a {len(digests[0])}-byte hash is no SHA-256, SHA-384 or SHA-512 digest", "hashes")
    return alg


def sign_algorithm(body: dict[str, Any], digests: list[bytes]) -> tuple[Scheme, HashAlg, int | None]:
    """(scheme, digest, PSS salt length or None) from ``signAlgo``, ``signAlgoParams`` and the
    hash algorithm; a combination that contradicts itself is refused."""
    oid = text(body, "signAlgo", limit=64)
    if oid not in SIGN_OIDS:
        raise BadRequest(f"unsupported signAlgo {oid!r}", "signAlgo")
    scheme, implied = SIGN_OIDS[oid]
    named = hash_alg(body, digests) if (body.get("hashAlgo") or body.get("hashAlgorithmOID")) else None
    salt: int | None = None
    if scheme is Scheme.RSA_PSS:
        implied, salt = _pss(body)
    elif body.get("signAlgoParams"):
        raise BadRequest("signAlgoParams applies to RSASSA-PSS only", "signAlgoParams")
    alg = implied or named or hash_alg(body, digests)
    if named is not None and named is not alg:
        raise BadRequest(f"hashAlgo {named.value} contradicts signAlgo {oid} ({alg.value})", "hashAlgo")
    return scheme, alg, salt


def _pss(body: dict[str, Any]) -> tuple[HashAlg, int]:
    raw = b64(body.get("signAlgoParams"), "signAlgoParams")
    try:
        params = algos.RSASSAPSSParams.load(raw)
        digest = params["hash_algorithm"]["algorithm"].native
        mgf = params["mask_gen_algorithm"]
        mgf_digest = mgf["parameters"]["algorithm"].native
        salt = int(params["salt_length"].native)
        trailer = params["trailer_field"].native
        mgf_name = mgf["algorithm"].native
    except (ValueError, TypeError, KeyError):
        raise BadRequest("signAlgoParams is not DER RSASSA-PSS-params", "signAlgoParams") from None
    alg = _ASN1_HASH.get(digest)
    if alg is None or mgf_name != "mgf1" or mgf_digest != digest or trailer not in ("trailer_field_bc", 1):
        raise BadRequest(
            "RSASSA-PSS parameters must use SHA-256/384/512 with MGF1 over the same digest", "signAlgoParams"
        )
    return alg, salt
