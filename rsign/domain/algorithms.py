"""Pure algorithm tables: digests, key algorithms, signature schemes and the mechanism choice.

Nothing here touches an HSM, so the whole table is tested without a token.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from rsign.domain.errors import InvalidRequest


class HashAlg(enum.Enum):
    SHA256 = "SHA256"
    SHA384 = "SHA384"
    SHA512 = "SHA512"

    @property
    def digest_size(self) -> int:
        return _DIGEST_SIZE[self]

    @property
    def digest_info_prefix(self) -> bytes:
        """DER DigestInfo header (RFC 8017 section 9.2, note 1) that precedes the digest."""
        return _DIGEST_INFO_PREFIX[self]


_DIGEST_SIZE = {HashAlg.SHA256: 32, HashAlg.SHA384: 48, HashAlg.SHA512: 64}
_DIGEST_INFO_PREFIX = {
    HashAlg.SHA256: bytes.fromhex("3031300d060960864801650304020105000420"),
    HashAlg.SHA384: bytes.fromhex("3041300d060960864801650304020205000430"),
    HashAlg.SHA512: bytes.fromhex("3051300d060960864801650304020305000440"),
}


class Scheme(enum.Enum):
    RSA_PKCS1_V15 = "RSA_PKCS1_V15"
    RSA_PSS = "RSA_PSS"
    ECDSA = "ECDSA"


class KeyAlgorithm(enum.Enum):
    RSA_2048 = "RSA-2048"
    RSA_3072 = "RSA-3072"
    EC_P256 = "EC-P256"
    EC_P384 = "EC-P384"

    @classmethod
    def parse(cls, text: str) -> KeyAlgorithm:
        """Accepts "RSA-2048" as well as the CLI spelling "rsa-2048"."""
        norm = text.strip().upper().replace("_", "-")
        if norm.startswith("EC-") and not norm.startswith("EC-P"):
            norm = "EC-P" + norm[3:]
        for alg in cls:
            if alg.value == norm:
                return alg
        choices = ", ".join(a.value.lower() for a in cls)
        raise InvalidRequest(f"unknown key algorithm {text!r}; expected one of {choices}")

    @property
    def is_rsa(self) -> bool:
        return self in (KeyAlgorithm.RSA_2048, KeyAlgorithm.RSA_3072)

    @property
    def rsa_bits(self) -> int:
        return {KeyAlgorithm.RSA_2048: 2048, KeyAlgorithm.RSA_3072: 3072}[self]

    @property
    def curve(self) -> str:
        """Named-curve name as used by OpenSSL/asn1crypto."""
        return {KeyAlgorithm.EC_P256: "secp256r1", KeyAlgorithm.EC_P384: "secp384r1"}[self]

    @property
    def schemes(self) -> tuple[Scheme, ...]:
        return (Scheme.RSA_PKCS1_V15, Scheme.RSA_PSS) if self.is_rsa else (Scheme.ECDSA,)

    def signature_algorithm_oids(self) -> list[str]:
        if self.is_rsa:
            # sha{256,384,512}WithRSAEncryption, then RSASSA-PSS.
            return [
                "1.2.840.113549.1.1.11",
                "1.2.840.113549.1.1.12",
                "1.2.840.113549.1.1.13",
                "1.2.840.113549.1.1.10",
            ]
        # ecdsa-with-SHA256/384/512
        return ["1.2.840.10045.4.3.2", "1.2.840.10045.4.3.3", "1.2.840.10045.4.3.4"]


class Mechanism(enum.Enum):
    """The PKCS#11 mechanisms rsign uses, named as in the standard (the adapter maps them)."""

    RSA_PKCS = "RSA_PKCS"
    RSA_PKCS_PSS = "RSA_PKCS_PSS"
    ECDSA = "ECDSA"


@dataclass(frozen=True, slots=True)
class SignSpec:
    """What to ask the HSM for one digest: mechanism, PSS parameters, and input framing."""

    mechanism: Mechanism
    hash_alg: HashAlg
    prefix: bytes = b""  # DigestInfo header for PKCS#1 v1.5
    pss_salt_len: int = 0
    der_ecdsa: bool = False  # HSM returns r||s; clients need DER

    def frame(self, digest: bytes) -> bytes:
        return self.prefix + digest


def max_pss_salt(key_alg: KeyAlgorithm, hash_alg: HashAlg) -> int:
    """The longest PSS salt a key of this size takes with this digest (RFC 8017 9.1.1: emLen - hLen - 2)."""
    return (key_alg.rsa_bits - 1 + 7) // 8 - hash_alg.digest_size - 2


def sign_spec(
    key_alg: KeyAlgorithm, hash_alg: HashAlg, scheme: Scheme, pss_salt_len: int | None = None
) -> SignSpec:
    """Choose the mechanism for (key, hash, scheme), or refuse a combination that cannot work.

    ``pss_salt_len``: the salt length the caller's signature parameters announce (CSC
    ``signAlgoParams``; pyHanko asks for the maximum); default: the digest size."""
    if scheme not in key_alg.schemes:
        allowed = " or ".join(s.value for s in key_alg.schemes)
        raise InvalidRequest(f"signature scheme {scheme.value} does not fit a {key_alg.value} key; use {allowed}")
    if pss_salt_len is not None and scheme is not Scheme.RSA_PSS:
        raise InvalidRequest("a PSS salt length applies to RSA_PSS signatures only")
    if scheme is Scheme.RSA_PKCS1_V15:
        # CKM_RSA_PKCS over DigestInfo, not CKM_SHAxxx_RSA_PKCS: the HSM must not hash again.
        return SignSpec(Mechanism.RSA_PKCS, hash_alg, prefix=hash_alg.digest_info_prefix)
    if scheme is Scheme.RSA_PSS:
        salt = hash_alg.digest_size if pss_salt_len is None else pss_salt_len
        if not 0 <= salt <= max_pss_salt(key_alg, hash_alg):
            raise InvalidRequest(
                f"PSS salt length {salt} is out of range for a {key_alg.value} key with {hash_alg.value}"
                f" (0..{max_pss_salt(key_alg, hash_alg)})"
            )
        return SignSpec(Mechanism.RSA_PKCS_PSS, hash_alg, pss_salt_len=salt)
    return SignSpec(Mechanism.ECDSA, hash_alg, der_ecdsa=True)


def check_digests(hash_alg: HashAlg, digests: list[bytes]) -> None:
    """Refuse any digest whose length does not match the hash algorithm (before any HSM call)."""
    size = hash_alg.digest_size
    if not digests or (min(map(len, digests)) == size == max(map(len, digests))):
        return  # the common case, checked at C speed (the batch path checks every chunk)
    for i, d in enumerate(digests):
        if len(d) != size:
            raise InvalidRequest(f"hash #{i + 1} is {len(d)} bytes long; {hash_alg.value} digests are {size} bytes")
