"""Plain records handed out by the store to the domain services and the transports.

They carry no ORM state and no database handles. Every record here may travel up to the API and
the CLI, except ``UserSecrets``: the PIN hash and the sealed TOTP seed, which only the store (that
reads them) and ``rsign.auth`` (that checks them) ever hold. ``UserView`` carries no secret, so no
transport can leak one by serialising a user.
"""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field

from rsign.domain.principal import CredentialKind, CredentialStatus, KeyVersionStatus, Role, Scope, UserStatus


@dataclass(frozen=True)
class UserView:
    user_id: str
    name: str
    agency: str
    role: Role
    status: UserStatus
    locked: bool
    scope: Scope = Scope.AGENCY


@dataclass(frozen=True)
class UserSecrets:
    """What authentication checks; never handed above ``rsign.auth`` (see the module docstring)."""

    user_id: str
    pin_hash: str
    totp_sealed: bytes  # the TOTP seed, AES-GCM-sealed under the HSM key, bound to ``user_id``
    last_otp_step: int  # the last accepted TOTP step: a code for it or an earlier one is a replay

    def __repr__(self) -> str:
        # Keep the hash and the sealed seed out of logs and tracebacks.
        return f"UserSecrets(user_id={self.user_id!r}, last_otp_step={self.last_otp_step})"


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
    status: CredentialStatus
    key_version: int
    multisign: int
    cka_id: bytes
    certificate: bytes
    chain: tuple[bytes, ...]
    kind: CredentialKind = CredentialKind.PERSON
    status_reason: str = ""
    not_after: float = 0.0


@dataclass(frozen=True)
class KeyVersionView:
    credential_id: str
    version: int
    cka_id: bytes
    certificate: bytes
    chain: tuple[bytes, ...]
    status: KeyVersionStatus


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
class InflightView:
    """Hash occurrences consumed for one request or one stream chunk whose outcome (sign.hash
    records) is not committed yet: positions ``start`` .. ``start + count - 1`` of the SAD's list,
    and who asked (the reconciler's records name them)."""

    id: int
    replica_id: str
    stream_id: int | None
    sad_id: int
    credential_id: str
    key_version: int
    hash_alg: str
    start: int
    count: int
    actor: str
    agency: str
    request_id: str
    client: str


@dataclass(frozen=True)
class StreamView:
    """A SignHashStream whose batch.end is not written yet, with its running counts."""

    id: int
    replica_id: str
    sad_id: int
    credential_id: str
    key_version: int
    fingerprint: str  # of the SAD's ordered list, as in batch.start
    authorized: int
    received: int
    signed: int
    failed: int
    actor: str
    agency: str
    request_id: str
    client: str


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


@dataclass(frozen=True)
class AuditKeyEra:
    """An audit key rotated out and the last record (MAC key) or checkpoint (checkpoint key) it
    covered; it covered everything after the previous era's ``last_seq``."""

    key: AuditKeyView
    last_seq: int


@dataclass(frozen=True)
class Enrolment:
    """A user's new authenticator, handed once to whoever enrols them (to show as a QR code); the
    store keeps the seed only sealed."""

    user_id: str
    seed: bytes = field(repr=False)  # out of logs and tracebacks, like the URI that carries it
    otpauth_uri: str = field(repr=False)


def fold(text: str) -> str:
    """Case- and diacritic-insensitive form for search: "Lò Văn Tuấn" -> "lo van tuan"."""
    decomposed = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "D"))
    return " ".join("".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower().split())
