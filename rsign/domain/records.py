"""Plain records handed out by the store to the domain services and the transports.

They carry no ORM state and no database handles. Secrets (the PIN hash and the sealed TOTP seed)
live only in ``UserSecrets``, which the store hands to ``rsign.auth`` and nothing hands further up.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass


@dataclass(frozen=True)
class UserView:
    user_id: str
    name: str
    agency: str
    role: str
    status: str
    pin_hash: str
    totp_sealed: bytes
    last_otp_step: int
    failed_attempts: int
    locked: bool
    scope: str = "agency"


@dataclass(frozen=True)
class SessionView:
    id: int
    user_id: str
    created_at: float
    last_seen: float
    expires_at: float
    ended_at: float | None
    end_reason: str | None


@dataclass(frozen=True)
class CredentialView:
    credential_id: str
    holder_user_id: str  # "" for an organisation seal
    agency: str
    key_algorithm: str
    status: str
    key_version: int
    multisign: int
    cka_id: bytes
    certificate: bytes
    chain: tuple[bytes, ...]
    kind: str = "person"
    status_reason: str = ""
    not_after: float = 0.0


@dataclass(frozen=True)
class KeyVersionView:
    credential_id: str
    version: int
    cka_id: bytes
    certificate: bytes
    chain: tuple[bytes, ...]
    status: str


@dataclass(frozen=True)
class SadView:
    id: int
    user_id: str
    session_id: int
    credential_id: str
    key_version: int
    hash_alg: str
    hashes: tuple[bytes, ...]
    issued_at: float
    expires_at: float
    consumed_at: float | None


@dataclass(frozen=True)
class CheckpointView:
    seq: int
    head_hash: str
    ts: str
    signature: bytes


@dataclass(frozen=True)
class AuditKeyView:
    purpose: str
    cka_id: bytes
    certificate: bytes
    chain: tuple[bytes, ...]



def fold(text: str) -> str:
    """Case- and diacritic-insensitive form for search: "Lò Văn Tuấn" -> "lo van tuan"."""
    decomposed = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "D"))
    return " ".join("".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower().split())
