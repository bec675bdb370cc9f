"""The approval challenge commits to every field of the request, and the pages' language choice."""

from __future__ import annotations

import hashlib

import pytest
from starlette.requests import Request

from rsign.domain.algorithms import HashAlg, KeyAlgorithm, Scheme, max_pss_salt, sign_spec
from rsign.domain.approvals import approval_challenge
from rsign.domain.errors import InvalidRequest
from rsign.http.i18n import language

H = [hashlib.sha256(b"a").digest(), hashlib.sha256(b"b").digest()]
BASE = ("appr-1", "CRED-1", 1, "SHA256", H, b"n" * 32)


def test_every_field_changes_the_challenge() -> None:
    c = approval_challenge(*BASE)
    assert len(c) == 32 and approval_challenge(*BASE) == c
    variants = [
        ("appr-2", *BASE[1:]),
        (BASE[0], "CRED-2", *BASE[2:]),
        (*BASE[:2], 2, *BASE[3:]),
        (*BASE[:3], "SHA384", *BASE[4:]),
        (*BASE[:4], list(reversed(H)), BASE[5]),  # the order of the hashes is committed to
        (*BASE[:4], H[:1], BASE[5]),
        (*BASE[:5], b"m" * 32),
    ]
    assert len({approval_challenge(*v) for v in variants} | {c}) == len(variants) + 1  # type: ignore[arg-type]


def test_fields_cannot_slide_into_each_other() -> None:
    # Length prefixes: "ab"+"c" and "a"+"bc" are different requests.
    assert approval_challenge("ab", "c", 1, "SHA256", H, b"") != approval_challenge("a", "bc", 1, "SHA256", H, b"")


def _req(query: str = "", accept: str = "") -> Request:
    headers = [(b"accept-language", accept.encode())] if accept else []
    return Request({"type": "http", "method": "GET", "path": "/", "query_string": query.encode(), "headers": headers})


@pytest.mark.parametrize(
    ("query", "accept", "lang"),
    [
        ("", "", "vi"),
        ("lang=en", "", "en"),
        ("lang=vi", "en-GB,en;q=0.9", "vi"),
        ("", "en-GB,en;q=0.9", "en"),
        ("", "fr-FR,fr;q=0.9", "vi"),
        ("", "en;q=0.5,vi;q=0.8", "vi"),
        ("", "vi-VN,en;q=0.9", "vi"),
        ("lang=xx", "en", "en"),
    ],
)
def test_language(query: str, accept: str, lang: str) -> None:
    assert language(_req(query, accept)) == lang


def test_pss_salt_length_is_bounded() -> None:
    assert sign_spec(KeyAlgorithm.RSA_2048, HashAlg.SHA256, Scheme.RSA_PSS, 222).pss_salt_len == 222
    assert max_pss_salt(KeyAlgorithm.RSA_2048, HashAlg.SHA256) == 222
    with pytest.raises(InvalidRequest, match="out of range"):
        sign_spec(KeyAlgorithm.RSA_2048, HashAlg.SHA256, Scheme.RSA_PSS, 223)
    with pytest.raises(InvalidRequest, match="RSA_PSS"):
        sign_spec(KeyAlgorithm.EC_P256, HashAlg.SHA256, Scheme.ECDSA, 32)
