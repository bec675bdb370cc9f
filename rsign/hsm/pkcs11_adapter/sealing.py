"""Sealing small secrets (users' TOTP seeds) under AES-256-GCM keys that stay on the token."""

from __future__ import annotations

import secrets
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import Mechanism as P11Mech
from pkcs11.exceptions import PKCS11Error

from rsign.domain.errors import HsmUnavailable, SecretIntegrityError
from rsign.domain.settings import HsmConfig
from rsign.hsm.pkcs11_adapter.session import TokenSession, serialised

SEAL_KEY_LABEL = "rsign-seal-v1"
_SEAL_VERSION = b"\x01"


class Sealing(TokenSession):
    def __init__(self, config: HsmConfig) -> None:
        super().__init__(config)
        self._seal_cache: list[Any] = []

    def _forget_handles(self) -> None:
        super()._forget_handles()
        self._seal_cache = []

    def _seal_keys(self) -> list[Any]:
        """Every sealing key on the token, oldest CKA_ID first, creating one if there is none.

        rsign's processes create it under the token file lock (re-listing first). With a real HSM,
        where there is no such lock, two processes starting at once on a fresh token may each
        create one: sealing uses the first key in CKA_ID order and unsealing tries them all (AES-GCM
        authentication tells the right key apart).
        """
        if not self._seal_cache:
            with self._file_lock.exclusive():
                self._seal_cache = sorted(self._find_or_create_seal_keys(), key=lambda k: bytes(k[Attribute.ID]))
        return self._seal_cache

    def _find_or_create_seal_keys(self) -> list[Any]:
        found = list(
            self._session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: SEAL_KEY_LABEL})
        )
        if found:
            return found
        key = self._session.generate_key(
            KeyType.AES,
            256,
            id=secrets.token_bytes(16),
            label=SEAL_KEY_LABEL,
            store=True,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
            },
        )
        return [key]

    @serialised
    def ensure_seal_key(self) -> None:
        try:
            self._seal_keys()
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM sealing key is unavailable ({type(exc).__name__})") from exc

    @serialised
    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        try:
            ct = self._seal_keys()[0].encrypt(
                plaintext, mechanism=P11Mech.AES_GCM, mechanism_param=pkcs11.GCMParams(nonce, aad, 128)
            )
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not seal the secret ({type(exc).__name__})") from exc
        return _SEAL_VERSION + nonce + bytes(ct)

    @serialised
    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """Raises ``SecretIntegrityError`` when the blob does not authenticate under any sealing key
        of a working HSM (altered, truncated, or bound to another ``aad``: copied from another
        user), and ``HsmUnavailable`` only when the HSM itself fails."""
        if blob[:1] != _SEAL_VERSION or len(blob) < 1 + 12 + 16:
            raise SecretIntegrityError("the sealed secret is malformed (altered or truncated)")
        nonce, ct = blob[1:13], blob[13:]
        for attempt in range(2):
            try:
                keys = self._seal_keys()
            except PKCS11Error as exc:
                raise HsmUnavailable(f"the HSM sealing key is unavailable ({type(exc).__name__})") from exc
            for key in keys:
                try:
                    return bytes(
                        key.decrypt(ct, mechanism=P11Mech.AES_GCM, mechanism_param=pkcs11.GCMParams(nonce, aad, 128))
                    )
                except PKCS11Error:
                    # A GCM tag mismatch has no error code of its own (SoftHSMv2 answers
                    # CKR_GENERAL_ERROR): try the other keys, then tell the cases apart below.
                    continue
            if attempt == 0:
                # Another process may have created a sealing key this one cannot see yet (two
                # workers starting on a fresh token; SoftHSMv2 refreshes its object index lazily).
                self._reopen(reinitialize=True)
        # No key opens it. If the HSM round-trips a fresh secret, the HSM works and the blob is
        # what is wrong: an integrity failure, which no retry will cure. Otherwise the HSM failed.
        if not self._seal_round_trip_ok():
            raise HsmUnavailable("the HSM could not unseal the secret (sealing is failing)")
        raise SecretIntegrityError("the sealed secret failed its integrity check (altered, or copied from elsewhere)")

    def _seal_round_trip_ok(self) -> bool:
        probe, aad, nonce = secrets.token_bytes(16), b"rsign-seal-probe", secrets.token_bytes(12)
        try:
            key = self._seal_keys()[0]
            ct = key.encrypt(probe, mechanism=P11Mech.AES_GCM, mechanism_param=pkcs11.GCMParams(nonce, aad, 128))
            back = key.decrypt(ct, mechanism=P11Mech.AES_GCM, mechanism_param=pkcs11.GCMParams(nonce, aad, 128))
        except PKCS11Error:
            return False
        return bytes(back) == probe
