"""The pure mechanism table and digest checks: no token needed."""

from __future__ import annotations

import hashlib

import pytest

from rsign.domain.algorithms import HashAlg, KeyAlgorithm, Mechanism, Scheme, check_digests, sign_spec
from rsign.domain.errors import InvalidRequest


@pytest.mark.parametrize("alg", list(HashAlg))
def test_digest_info_prefix_matches_hashlib_length(alg: HashAlg) -> None:
    d = hashlib.new(alg.value.lower(), b"x").digest()
    assert len(d) == alg.digest_size
    assert alg.digest_info_prefix[-1] == alg.digest_size


def test_mechanism_choice() -> None:
    spec = sign_spec(KeyAlgorithm.RSA_2048, HashAlg.SHA384, Scheme.RSA_PSS)
    assert spec.mechanism is Mechanism.RSA_PKCS_PSS and spec.pss_salt_len == 48
    spec = sign_spec(KeyAlgorithm.RSA_3072, HashAlg.SHA256, Scheme.RSA_PKCS1_V15)
    assert spec.mechanism is Mechanism.RSA_PKCS and spec.frame(b"\0" * 32).startswith(bytes.fromhex("3031300d"))
    spec = sign_spec(KeyAlgorithm.EC_P384, HashAlg.SHA512, Scheme.ECDSA)
    assert spec.mechanism is Mechanism.ECDSA and spec.der_ecdsa


@pytest.mark.parametrize(
    ("key", "scheme"),
    [(KeyAlgorithm.EC_P256, Scheme.RSA_PSS), (KeyAlgorithm.RSA_2048, Scheme.ECDSA)],
)
def test_scheme_that_does_not_fit_the_key_is_refused(key: KeyAlgorithm, scheme: Scheme) -> None:
    with pytest.raises(InvalidRequest):
        sign_spec(key, HashAlg.SHA256, scheme)


@pytest.mark.parametrize("length", [0, 31, 33, 48, 64])
def test_wrong_digest_length_is_refused(length: int) -> None:
    with pytest.raises(InvalidRequest, match="SHA256 digests are 32 bytes"):
        check_digests(HashAlg.SHA256, [b"\0" * 32, b"\0" * length])


def test_key_algorithm_parse() -> None:
    assert KeyAlgorithm.parse("rsa-2048") is KeyAlgorithm.RSA_2048
    assert KeyAlgorithm.parse("EC-P256") is KeyAlgorithm.EC_P256
    with pytest.raises(InvalidRequest):
        KeyAlgorithm.parse("dsa-1024")
