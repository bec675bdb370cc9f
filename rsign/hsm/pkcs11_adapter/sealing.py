"""Sealing small secrets (users' TOTP seeds) under AES-256-GCM keys that stay on the token.

The sealing key rotates (``rotate_seal_key``): the new key takes the label ``rsign-seal-v1``, the
old ones are relabelled ``rsign-seal-retired`` and kept for unsealing until every seed is
re-sealed (``reseal``: unsealed and sealed again here, in the adapter's process, so the seed never
leaves it in clear). A blob names the key that sealed it (format 2); format 1 blobs, which do not,
are tried under every key. Every process checks, before sealing, that its cached key still bears
the current label (one attribute read): a rotation made by another process is seen at once.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import pkcs11
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import Mechanism as P11Mech
from pkcs11.exceptions import PKCS11Error

from rsign.domain.errors import HsmUnavailable, SecretIntegrityError
from rsign.domain.settings import HsmConfig
from rsign.hsm.pkcs11_adapter.session import TokenSession, serialised

SEAL_KEY_LABEL = "rsign-seal-v1"
RETIRED_SEAL_KEY_LABEL = "rsign-seal-retired"
_SEAL_V1 = b"\x01"  # nonce, ciphertext: the key is not named
_SEAL_V2 = b"\x02"  # key id length, key id (CKA_ID), nonce, ciphertext


class Sealing(TokenSession):
    def __init__(self, config: HsmConfig) -> None:
        super().__init__(config)
        self._seal_cache: list[Any] = []
        self._retired_cache: list[Any] = []

    def _forget_handles(self) -> None:
        super()._forget_handles()
        self._seal_cache = []
        self._retired_cache = []

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
                self._retired_cache = sorted(
                    self._session.get_objects(
                        {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: RETIRED_SEAL_KEY_LABEL}
                    ),
                    key=lambda k: bytes(k[Attribute.ID]),
                )
        return self._seal_cache

    def _current_seal_key(self) -> Any:
        """The key to seal with, re-listed if another process rotated it since it was cached."""
        key = self._seal_keys()[0]
        if key[Attribute.LABEL] != SEAL_KEY_LABEL:
            self._seal_cache = []
            key = self._seal_keys()[0]
        return key

    def _all_seal_keys(self) -> list[Any]:
        return [*self._seal_keys(), *self._retired_cache]

    def _find_or_create_seal_keys(self) -> list[Any]:
        found = list(
            self._session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: SEAL_KEY_LABEL})
        )
        if found:
            return found
        return [self._new_seal_key()]

    def _new_seal_key(self) -> Any:
        return self._session.generate_key(
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

    @serialised
    def ensure_seal_key(self) -> None:
        try:
            self._seal_keys()
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM sealing key is unavailable ({type(exc).__name__})") from exc

    @serialised
    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        try:
            return self._seal(self._current_seal_key(), plaintext, aad)
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not seal the secret ({type(exc).__name__})") from exc

    @staticmethod
    def _seal(key: Any, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        ct = key.encrypt(plaintext, mechanism=P11Mech.AES_GCM, mechanism_param=pkcs11.GCMParams(nonce, aad, 128))
        kid = bytes(key[Attribute.ID])
        return _SEAL_V2 + bytes([len(kid)]) + kid + nonce + bytes(ct)

    @serialised
    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """Raises ``SecretIntegrityError`` when the blob does not authenticate under any sealing key
        of a working HSM (altered, truncated, or bound to another ``aad``: copied from another
        user), and ``HsmUnavailable`` only when the HSM itself fails."""
        return self._unseal(blob, aad)

    def _unseal(self, blob: bytes, aad: bytes) -> bytes:
        kid, nonce, ct = _parse(blob)
        for attempt in range(2):
            try:
                keys = self._all_seal_keys()
            except PKCS11Error as exc:
                raise HsmUnavailable(f"the HSM sealing key is unavailable ({type(exc).__name__})") from exc
            for key in keys:
                if kid is not None and bytes(key[Attribute.ID]) != kid:
                    continue
                try:
                    return bytes(
                        key.decrypt(ct, mechanism=P11Mech.AES_GCM, mechanism_param=pkcs11.GCMParams(nonce, aad, 128))
                    )
                except PKCS11Error:
                    # A GCM tag mismatch has no error code of its own (SoftHSMv2 answers
                    # CKR_GENERAL_ERROR): try the other keys, then tell the cases apart below.
                    continue
            if attempt == 0:
                # Another process may have created or rotated a sealing key this one cannot see yet
                # (two workers starting on a fresh token; SoftHSMv2 refreshes its object index lazily).
                self._reopen(reinitialize=True)
        # No key opens it. If the HSM round-trips a fresh secret, the HSM works and the blob is
        # what is wrong: an integrity failure, which no retry will cure. Otherwise the HSM failed.
        if not self._seal_round_trip_ok():
            raise HsmUnavailable("the HSM could not unseal the secret (sealing is failing)")
        raise SecretIntegrityError("the sealed secret failed its integrity check (altered, or copied from elsewhere)")

    # -- rotation ------------------------------------------------------------------------------

    @serialised
    def seal_key_id(self) -> bytes:
        """The CKA_ID of the key ``seal`` uses now."""
        try:
            self._seal_cache = []  # a rotation by another process: list afresh
            return bytes(self._current_seal_key()[Attribute.ID])
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM sealing key is unavailable ({type(exc).__name__})") from exc

    @serialised
    def rotate_seal_key(self) -> tuple[bytes, list[bytes]]:
        """A new sealing key; the current ones are relabelled retired (kept: they unseal what they
        sealed until it is re-sealed). Returns the new key's CKA_ID and the retired ones'."""
        try:
            with self._file_lock.exclusive():
                old = list(
                    self._session.get_objects(
                        {Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: SEAL_KEY_LABEL}
                    )
                )
                new = self._new_seal_key()
                for key in old:
                    key[Attribute.LABEL] = RETIRED_SEAL_KEY_LABEL
            self._seal_cache = []
            return bytes(new[Attribute.ID]), [bytes(k[Attribute.ID]) for k in old]
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not rotate the sealing key ({type(exc).__name__})") from exc

    @serialised
    def reseal(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes | None]:
        """Each ``(blob, aad)`` sealed under the current key: the same blob when it already is, a
        new one when it was not, None when it does not unseal (integrity failure: left as it is).
        The seed exists in clear only here, for the instant between unsealing and sealing."""
        try:
            self._seal_cache = []  # seal under the newest key, whoever rotated it
            key = self._current_seal_key()
            current = bytes(key[Attribute.ID])
            out: list[bytes | None] = []
            for blob, aad in items:
                if blob[:1] == _SEAL_V2 and blob[2 : 2 + blob[1]] == current:
                    out.append(blob)
                    continue
                try:
                    out.append(self._seal(key, self._unseal(blob, aad), aad))
                except SecretIntegrityError:
                    out.append(None)
            return out
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not re-seal ({type(exc).__name__})") from exc

    def _seal_round_trip_ok(self) -> bool:
        probe, aad, nonce = secrets.token_bytes(16), b"rsign-seal-probe", secrets.token_bytes(12)
        try:
            key = self._current_seal_key()
            ct = key.encrypt(probe, mechanism=P11Mech.AES_GCM, mechanism_param=pkcs11.GCMParams(nonce, aad, 128))
            back = key.decrypt(ct, mechanism=P11Mech.AES_GCM, mechanism_param=pkcs11.GCMParams(nonce, aad, 128))
        except PKCS11Error:
            return False
        return bytes(back) == probe


def _parse(blob: bytes) -> tuple[bytes | None, bytes, bytes]:
    """(key id or None for format 1, nonce, ciphertext); ``SecretIntegrityError`` if malformed."""
    if blob[:1] == _SEAL_V1 and len(blob) >= 1 + 12 + 16:
        return None, blob[1:13], blob[13:]
    if blob[:1] == _SEAL_V2 and len(blob) >= 2 and len(blob) >= 2 + blob[1] + 12 + 16:
        n = blob[1]
        return blob[2 : 2 + n], blob[2 + n : 14 + n], blob[14 + n :]
    raise SecretIntegrityError("the sealed secret is malformed (altered or truncated)")
