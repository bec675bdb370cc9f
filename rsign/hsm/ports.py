"""What the rest of rsign needs from an HSM, independent of PKCS#11.

Two implementations exist: ``Pkcs11Token`` (one logged-in session, single-threaded: the CLI and each
worker process use it) and ``HsmPool`` (worker processes, thread-safe: the server uses it).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from dataclasses import dataclass
from typing import Protocol

from rsign.domain.algorithms import KeyAlgorithm, SignSpec


@dataclass(frozen=True, slots=True)
class ItemFailure:
    """One digest the HSM refused or could not sign; the rest of the batch is unaffected."""

    reason: str


SignResult = bytes | ItemFailure


class Hsm(Protocol):
    def sign(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> list[SignResult]:
        """Sign each digest with the private key ``cka_id``. Per-item failures are returned,
        a failure of the HSM as a whole raises ``HsmUnavailable``."""
        ...

    def sign_async(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> Future[list[SignResult]]:
        """Like ``sign``, but returns at once; the future fails with ``HsmUnavailable``."""
        ...

    def generate_keypair(self, alg: KeyAlgorithm, cka_id: bytes, label: str) -> bytes:
        """Generate a non-extractable key pair inside the HSM; returns the SubjectPublicKeyInfo DER."""
        ...

    def generate_keypairs(self, items: Sequence[tuple[KeyAlgorithm, bytes, str]]) -> list[bytes]:
        """Generate several key pairs in one go (one worker: on SoftHSMv2 every object another
        process creates makes the others rescan the token, so bulk generation stays in one)."""
        ...

    def public_key(self, cka_id: bytes) -> bytes:
        """SubjectPublicKeyInfo DER of the key pair ``cka_id``."""
        ...

    def destroy_keypair(self, cka_id: bytes) -> int:
        """Destroy every object with this CKA_ID (private and public key); returns how many."""
        ...

    def generate_mac_key(self, cka_id: bytes, label: str) -> None:
        """Generate an HMAC-SHA256 key inside the HSM (sensitive, non-extractable)."""
        ...

    def mac(self, cka_id: bytes, messages: Sequence[bytes]) -> list[bytes]:
        """HMAC-SHA256 of each message under the HSM key ``cka_id``."""
        ...

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        """Encrypt a small secret (a TOTP seed) under the HSM-resident wrapping key."""
        ...

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """Decrypt what ``seal`` produced; fails if ``blob`` or ``aad`` were altered."""
        ...

    def seal_key_id(self) -> bytes:
        """The CKA_ID of the wrapping key ``seal`` uses now."""
        ...

    def rotate_seal_key(self) -> tuple[bytes, list[bytes]]:
        """A new wrapping key for ``seal``; the old ones are kept for ``unseal`` (retired). Returns
        the new key's CKA_ID and the retired ones'."""
        ...

    def reseal(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes | None]:
        """Each ``(blob, aad)`` under the current wrapping key, unsealed and sealed again inside
        the HSM adapter (the secret never comes out): the same blob when it already is, None when
        it fails its integrity check."""
        ...

    # -- the audit anchor (rsign.domain.anchor): the latest signed checkpoint, kept where a
    # database administrator cannot write. Private token data objects labelled
    # "rsign-audit-anchor"; several may exist (one per writing process), the highest
    # (epoch, seq) is the anchor.

    def read_anchor(self) -> bytes | None:
        """The highest anchor on the token (None: none yet). Finds every anchor object, so it costs
        a token scan; objects below the highest, left by other processes, are destroyed."""
        ...

    def write_anchor(self, data: bytes) -> bool:
        """Store the anchor ``data`` if it is above the one this process stored last; False when
        it is not (nothing written). Never lowers the highest anchor on the token."""
        ...

    def reset_anchor(self, data: bytes) -> bytes:
        """Replace every anchor with ``data`` under an epoch above all of them (an accepted
        rollback); returns the anchor as stored."""
        ...

    def close(self) -> None: ...
