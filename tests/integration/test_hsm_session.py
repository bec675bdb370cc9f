"""HSM-02: the adapter's session goes away under it (closed and logged out, the library
re-initialised as after an HSM restart, the token gone for a while): the request logs in again and
succeeds; while the token stays unusable, a bounded number of retries ends in a clean
``HsmUnavailable`` naming the PKCS#11 error, and the next request after it came back succeeds.

A real SoftHSMv2 token opened in this process (the faults reach into the adapter's own session,
which a worker process would hide)."""

from __future__ import annotations

import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from rsign.dev import EMBEDDED
from rsign.domain.algorithms import HashAlg, KeyAlgorithm, Scheme, sign_spec
from rsign.domain.errors import HsmUnavailable
from rsign.domain.settings import Settings
from rsign.hsm.pkcs11_adapter import Pkcs11Token
from rsign.runtime.config import load_settings

SPEC = sign_spec(KeyAlgorithm.EC_P256, HashAlg.SHA256, Scheme.ECDSA)
# python-pkcs11 finalises a search of a dead session when the iterator is collected, and reports
# the PKCS#11 error it gets there as "ignored in __del__": expected here, nothing of rsign's.
pytestmark = pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")


@dataclass
class Token:
    settings: Settings
    token: Pkcs11Token
    cka_id: bytes
    mac_id: bytes
    public: ec.EllipticCurvePublicKey

    def signs(self) -> bool:
        """One real signature, checked against the key's public half."""
        digest = os.urandom(32)
        (sig,) = self.token.sign(self.cka_id, SPEC, [digest])
        assert isinstance(sig, bytes)
        self.public.verify(sig, digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        return True

    def token_dir(self) -> Path:
        assert self.settings.hsm.softhsm_conf
        for line in Path(self.settings.hsm.softhsm_conf).read_text().splitlines():
            if line.startswith("directories.tokendir"):
                return Path(line.split("=", 1)[1].strip())
        raise AssertionError("no token directory in the SoftHSMv2 configuration")


@pytest.fixture(scope="module")
def tok(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Token]:
    os.environ.pop("RSIGN_PKCS11_MODULE", None)
    settings = load_settings(tmp_path_factory.mktemp("hsm-session"), embedded=EMBEDDED)
    token = Pkcs11Token(settings.hsm)
    cka_id, mac_id = secrets.token_bytes(16), secrets.token_bytes(16)
    spki = token.generate_keypair(KeyAlgorithm.EC_P256, cka_id, "hsm-02")
    token.generate_mac_key(mac_id, "hsm-02-mac")
    public = serialization.load_der_public_key(spki)
    assert isinstance(public, ec.EllipticCurvePublicKey)
    try:
        yield Token(settings, token, cka_id, mac_id, public)
    finally:
        token.close()


def test_session_closed_behind_its_back(tok: Token) -> None:
    assert tok.signs()
    tok.token._session.close()  # C_Logout + C_CloseSession: the handle and its key handles are gone
    assert tok.signs()
    tok.token._session.close()
    assert len(tok.token.mac(tok.mac_id, [b"audit record"])) == 1  # the audit MAC recovers too


def test_library_reinitialised_as_after_an_hsm_restart(tok: Token) -> None:
    tok.token._lib.reinitialize()  # every session of the process is invalid, nobody is logged in
    assert tok.signs()


def test_token_unusable_then_back(tok: Token) -> None:
    tok.token._session.close()
    where = tok.token_dir()
    away = where.with_name(where.name + ".away")
    where.rename(away)
    try:
        started = time.monotonic()
        with pytest.raises(HsmUnavailable) as e:
            tok.signs()
        took = time.monotonic() - started
    finally:
        away.rename(where)
    # Bounded: 5 retries with back-off (0.05 + 0.1 + 0.2 + 0.4 + 0.8 s), then one clean error.
    assert "could not be restored (5 retries)" in e.value.message and "Error" in e.value.message
    assert took < 10
    # The token is back: the next request logs in again (the library reloaded) and signs.
    assert tok.signs()
