"""Passkey approval of a signing activation: the records and the challenge (pure; no I/O).

The WebAuthn challenge of an approval is not a random number the server must remember: it is a
SHA-256 commitment to what is being activated, recomputed from the stored request at
verification time. An assertion over it is therefore an approval of exactly that credential, key
version, hash algorithm and ordered list of hashes, and of nothing else: it cannot be replayed for
another request (other hashes give another challenge), and the server nonce makes two requests
for the same hashes differ too.
"""

from __future__ import annotations

import enum
import hashlib
import struct
from collections.abc import Sequence
from dataclasses import dataclass

CHALLENGE_DOMAIN = b"rsign-passkey-approval-v1"


class ApprovalState(enum.StrEnum):
    PENDING = "pending"  # waiting for the official's passkey
    APPROVED = "approved"  # assertion verified; the driving software has not collected its SAD yet
    DELIVERED = "delivered"  # its SAD was handed out (once)


def _field(data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + data


def approval_challenge(
    approval_id: str, credential_id: str, key_version: int, hash_alg: str, hashes: Sequence[bytes], nonce: bytes
) -> bytes:
    """SHA-256 over length-prefixed fields, so that no two different requests encode alike."""
    h = hashlib.sha256(CHALLENGE_DOMAIN)
    for part in (approval_id.encode(), credential_id.encode(), struct.pack(">Q", key_version), hash_alg.encode()):
        h.update(_field(part))
    h.update(struct.pack(">I", len(hashes)))
    for d in hashes:
        h.update(_field(d))
    h.update(_field(nonce))
    return h.digest()


@dataclass(frozen=True)
class PasskeyView:
    id: int
    user_id: str
    credential_id: bytes  # the WebAuthn credential id (raw)
    public_key: bytes  # COSE_Key
    sign_count: int
    label: str
    created_at: float
    last_used_at: float | None


@dataclass(frozen=True)
class ApprovalView:
    id: int
    approval_id: str  # public: in the approval page's URL
    user_id: str
    session_id: int  # the driving software's session: only it collects the SAD
    credential_id: str
    key_version: int
    hash_alg: str
    hashes: tuple[bytes, ...]
    labels: tuple[str, ...]
    description: str
    nonce: bytes
    state: ApprovalState
    created_at: float
    expires_at: float
    passkey_id: int | None

    @property
    def challenge(self) -> bytes:
        return approval_challenge(
            self.approval_id, self.credential_id, self.key_version, self.hash_alg, self.hashes, self.nonce
        )


@dataclass(frozen=True)
class PendingApproval:
    """What Authorize answers instead of a SAD: poll with ``handle`` (a secret of the driving
    software's session); the official opens ``path`` on the HTTP face."""

    handle: str
    approval_id: str
    expires_at: float

    @property
    def path(self) -> str:
        return f"/approve/{self.approval_id}"


@dataclass(frozen=True)
class VerifiedAssertion:
    """What the transport's WebAuthn library established (origin, RP id, signature, user
    verification, challenge = the approval's) and the domain now applies."""

    credential_id: bytes
    new_sign_count: int
    user_verified: bool
