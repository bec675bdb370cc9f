"""Typed ORM models. Times are float Unix seconds (UTC) except audit times, which are ISO strings
so that the exported log reads the same everywhere."""

from __future__ import annotations

from sqlalchemy import BigInteger, Boolean, Float, ForeignKey, Index, Integer, LargeBinary, String, Text
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from rsign.domain.principal import CredentialKind, CredentialStatus, KeyVersionStatus, Role, Scope, UserStatus


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    name: Mapped[str] = mapped_column(String(256))
    # Lower-case, diacritics removed ("Lò Văn Tuấn" -> "lo van tuan"), for search.
    name_folded: Mapped[str] = mapped_column(String(256), default="", index=True)
    agency: Mapped[str] = mapped_column(String(256), default="", index=True)
    role: Mapped[str] = mapped_column(String(32), default=Role.SIGNER)
    # For auditors: "agency" (their own agency's records) or "province" (all records).
    scope: Mapped[str] = mapped_column(String(16), default=Scope.AGENCY)
    status: Mapped[str] = mapped_column(String(16), default=UserStatus.ACTIVE)
    pin_hash: Mapped[str] = mapped_column(String(256))
    totp_sealed: Mapped[bytes] = mapped_column(LargeBinary)  # seed encrypted under the HSM seal key
    # Last TOTP time step accepted: any code for a step <= this one is a replay (RFC 6238 5.2).
    last_otp_step: Mapped[int] = mapped_column(BigInteger, default=-1)
    failed_attempts: Mapped[int] = mapped_column(Integer, default=0)
    locked: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[float] = mapped_column(Float)


class SessionRow(Base):
    __tablename__ = "sessions"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    token_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)  # SHA-256 of the token
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id"), index=True)
    created_at: Mapped[float] = mapped_column(Float)
    last_seen: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)  # absolute expiry
    ended_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    end_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)


class Credential(Base):
    __tablename__ = "credentials"

    credential_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    # A person's credential has a holder; an organisation seal has none (see SealUser).
    holder_user_id: Mapped[str | None] = mapped_column(ForeignKey("users.user_id"), index=True, nullable=True)
    kind: Mapped[str] = mapped_column(String(16), default=CredentialKind.PERSON)
    agency: Mapped[str] = mapped_column(String(256), default="", index=True)
    key_algorithm: Mapped[str] = mapped_column(String(16))
    # active, disabled (reversible), revoked (final: Decree 68 reasons), destroyed (keys gone)
    status: Mapped[str] = mapped_column(String(16), default=CredentialStatus.ACTIVE, index=True)
    status_reason: Mapped[str] = mapped_column(String(256), default="")
    key_version: Mapped[int] = mapped_column(Integer, default=1)
    multisign: Mapped[int] = mapped_column(Integer)
    not_after: Mapped[float] = mapped_column(Float, default=0.0, index=True)  # current certificate's expiry
    created_at: Mapped[float] = mapped_column(Float)


class SealUser(Base):
    """Users allowed to activate an organisation seal (each activation: their own fresh TOTP)."""

    __tablename__ = "seal_users"

    credential_id: Mapped[str] = mapped_column(ForeignKey("credentials.credential_id"), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id"), primary_key=True)


class DestroyApproval(Base):
    """Dual control: destroying a credential's keys needs two different key officers."""

    __tablename__ = "destroy_approvals"

    credential_id: Mapped[str] = mapped_column(ForeignKey("credentials.credential_id"), primary_key=True)
    officer_user_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    requested_at: Mapped[float] = mapped_column(Float)


class KeyVersion(Base):
    __tablename__ = "key_versions"

    credential_id: Mapped[str] = mapped_column(ForeignKey("credentials.credential_id"), primary_key=True)
    version: Mapped[int] = mapped_column(Integer, primary_key=True)
    cka_id: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)
    certificate: Mapped[bytes] = mapped_column(LargeBinary)  # DER
    chain: Mapped[bytes] = mapped_column(LargeBinary)  # DER certificates of the issuers, each length-prefixed
    # active (signs), retired (rotated out: verifies old signatures only), destroyed
    status: Mapped[str] = mapped_column(String(16), default=KeyVersionStatus.ACTIVE)
    created_at: Mapped[float] = mapped_column(Float)


class Sad(Base):
    __tablename__ = "sads"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    sad_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)  # SHA-256 of the SAD
    user_id: Mapped[str] = mapped_column(String(128))
    session_id: Mapped[int] = mapped_column(Integer)
    credential_id: Mapped[str] = mapped_column(String(128))
    key_version: Mapped[int] = mapped_column(Integer)
    hash_alg: Mapped[str] = mapped_column(String(16))
    hashes: Mapped[bytes] = mapped_column(LargeBinary)  # the ordered digests, concatenated
    count: Mapped[int] = mapped_column(Integer)
    issued_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    consumed_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class ConsumedHash(Base):
    """Every hash occurrence ever released for signing with a credential. Consumed before the HSM
    is called, so an item of a broken batch can never be signed again, under any SAD."""

    __tablename__ = "consumed_hashes"

    credential_id: Mapped[str] = mapped_column(String(128), primary_key=True)
    digest: Mapped[bytes] = mapped_column(LargeBinary(64), primary_key=True)
    occurrence: Mapped[int] = mapped_column(Integer, primary_key=True)  # k-th time in its SAD's list
    sad_id: Mapped[int] = mapped_column(Integer)
    position: Mapped[int] = mapped_column(Integer)


class Replica(Base):
    """A process that signs (a server replica, or a library user signing in-process) and may hold
    in-flight work. Its lease, in DATABASE time (replicas on different hosts need not agree on the
    time), says how long it is presumed alive where nothing better tells (PostgreSQL); a replica
    presumed dead has its in-flight work reconciled by another (``rsign.signing.recovery``)."""

    __tablename__ = "replicas"

    replica_id: Mapped[str] = mapped_column(String(32), primary_key=True)
    host: Mapped[str] = mapped_column(String(256), default="")
    pid: Mapped[int] = mapped_column(Integer, default=0)
    lease_until: Mapped[float] = mapped_column(Float)


class SigningInflight(Base):
    """The in-flight ledger: one row per unary request or stream chunk whose hash occurrences are
    consumed and whose outcome records (sign.hash) are not committed yet. Inserted in the
    transaction that consumes, deleted in the one that commits the outcome: a row that outlives
    its process names consumed occurrences that never got a signature out, which reconciliation
    records as interrupted and releases. One row per chunk, never per item (the batch hot path)."""

    __tablename__ = "signing_inflight"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    # No secondary indexes: the table only ever holds the work in flight right now (a few rows per
    # open stream), so the reconciler's scans are trivial, and each index would be one more page
    # written by every chunk's commit.
    replica_id: Mapped[str] = mapped_column(String(32))
    stream_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    sad_id: Mapped[int] = mapped_column(Integer)
    credential_id: Mapped[str] = mapped_column(String(128))
    key_version: Mapped[int] = mapped_column(Integer)
    hash_alg: Mapped[str] = mapped_column(String(16))
    start: Mapped[int] = mapped_column(Integer)  # first position in the SAD's list
    count: Mapped[int] = mapped_column(Integer)
    actor: Mapped[str] = mapped_column(String(128), default="")
    agency: Mapped[str] = mapped_column(String(256), default="")
    request_id: Mapped[str] = mapped_column(String(64), default="")
    client: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[float] = mapped_column(Float)


class SigningStream(Base):
    """A SignHashStream between its batch.start and its batch.end (inserted and deleted with
    them), with running counts updated in each chunk's commit, so that a stream whose process
    died still gets a batch.end that says what was signed."""

    __tablename__ = "signing_streams"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    replica_id: Mapped[str] = mapped_column(String(32))  # unindexed, as above: open streams only
    sad_id: Mapped[int] = mapped_column(Integer)
    credential_id: Mapped[str] = mapped_column(String(128))
    key_version: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(64), default="")
    authorized: Mapped[int] = mapped_column(Integer)
    received: Mapped[int] = mapped_column(Integer, default=0)
    signed: Mapped[int] = mapped_column(Integer, default=0)
    failed: Mapped[int] = mapped_column(Integer, default=0)
    actor: Mapped[str] = mapped_column(String(128), default="")
    agency: Mapped[str] = mapped_column(String(256), default="")
    request_id: Mapped[str] = mapped_column(String(64), default="")
    client: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[float] = mapped_column(Float)


class AuditRecord(Base):
    __tablename__ = "audit_log"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    ts: Mapped[str] = mapped_column(String(32))
    actor: Mapped[str] = mapped_column(String(128), default="")
    agency: Mapped[str] = mapped_column(String(256), default="")
    action: Mapped[str] = mapped_column(String(64))
    result: Mapped[str] = mapped_column(String(16))
    credential_id: Mapped[str] = mapped_column(String(128), default="")
    key_version: Mapped[int] = mapped_column(Integer, default=0)
    digest: Mapped[str] = mapped_column(String(160), default="")
    reason: Mapped[str] = mapped_column(Text, default="")
    request_id: Mapped[str] = mapped_column(String(64), default="")
    client: Mapped[str] = mapped_column(String(128), default="")
    details: Mapped[str] = mapped_column(Text, default="{}")
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    # HMAC (HSM key) over (seq, hash) on the last record of each append transaction; "" elsewhere.
    mac: Mapped[str] = mapped_column(String(64), default="")

    __table_args__ = (
        Index("ix_audit_ts", "ts"),
        Index("ix_audit_agency", "agency"),
        Index("ix_audit_action", "action"),
        Index("ix_audit_actor", "actor"),
        Index("ix_audit_credential", "credential_id"),
    )


class AuditCheckpoint(Base):
    """A signed statement "the log had ``seq`` records ending in ``head_hash`` at ``ts``"."""

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    head_hash: Mapped[str] = mapped_column(String(64))
    ts: Mapped[str] = mapped_column(String(32))
    signature: Mapped[bytes] = mapped_column(LargeBinary)  # DER ECDSA over chain.checkpoint_message


class AuditKey(Base):
    """The HSM keys that protect the log, by purpose ("mac", "checkpoint")."""

    __tablename__ = "audit_keys"

    purpose: Mapped[str] = mapped_column(String(16), primary_key=True)
    cka_id: Mapped[bytes] = mapped_column(LargeBinary(32))
    certificate: Mapped[bytes] = mapped_column(LargeBinary, default=b"")  # DER, checkpoint key only
    chain: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    created_at: Mapped[float] = mapped_column(Float)


class AuditKeyEra(Base):
    """An audit key rotated out (``audit_keys`` holds the current one per purpose), kept to verify
    what it covered: for "mac", the records up to ``last_seq``; for "checkpoint", the checkpoints
    up to ``last_seq`` (after the previous era's). Revision 0002."""

    __tablename__ = "audit_key_eras"

    purpose: Mapped[str] = mapped_column(String(16), primary_key=True)
    last_seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=False)
    cka_id: Mapped[bytes] = mapped_column(LargeBinary(32))
    certificate: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    chain: Mapped[bytes] = mapped_column(LargeBinary, default=b"")
    created_at: Mapped[float] = mapped_column(Float)
    retired_at: Mapped[float] = mapped_column(Float)


class AuditHead(Base):
    """One row: the chain head. Updating it serialises appenders (row lock on PostgreSQL,
    the database write lock on SQLite)."""

    __tablename__ = "audit_head"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
    hash: Mapped[str] = mapped_column(String(64))


class Meta(Base):
    """Facts about the database itself (the schema version)."""

    __tablename__ = "rsign_meta"

    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(String(256))


class Passkey(Base):
    """A signer's WebAuthn credential (user verification required), enrolled after PIN + TOTP."""

    __tablename__ = "passkeys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id"), index=True)
    credential_id: Mapped[bytes] = mapped_column(LargeBinary(1023), unique=True)  # WebAuthn credential id
    public_key: Mapped[bytes] = mapped_column(LargeBinary)  # COSE_Key
    # The authenticator's signature counter: an assertion must show a higher one (a cloned
    # authenticator shows a lower or equal one), unless the authenticator keeps none (both 0).
    sign_count: Mapped[int] = mapped_column(BigInteger, default=0)
    label: Mapped[str] = mapped_column(String(128), default="")
    created_at: Mapped[float] = mapped_column(Float)
    last_used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class PasskeyChallenge(Base):
    """A passkey enrolment in progress: the registration challenge, for one session, used once."""

    __tablename__ = "passkey_challenges"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id"))
    session_id: Mapped[int] = mapped_column(Integer)
    challenge: Mapped[bytes] = mapped_column(LargeBinary(64))
    expires_at: Mapped[float] = mapped_column(Float)
    used_at: Mapped[float | None] = mapped_column(Float, nullable=True)


class SigningApproval(Base):
    """An Authorize waiting for (or given) the official's passkey approval. The SAD is minted only
    when the driving software collects it (state approved -> delivered), so no SAD is stored."""

    __tablename__ = "signing_approvals"

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    approval_id: Mapped[str] = mapped_column(String(64), unique=True)  # public, in the page URL
    handle_hash: Mapped[bytes] = mapped_column(LargeBinary(32), unique=True)  # SHA-256 of the poll handle
    user_id: Mapped[str] = mapped_column(ForeignKey("users.user_id"), index=True)
    session_id: Mapped[int] = mapped_column(Integer)
    credential_id: Mapped[str] = mapped_column(String(128))
    key_version: Mapped[int] = mapped_column(Integer)
    hash_alg: Mapped[str] = mapped_column(String(16))
    hashes: Mapped[bytes] = mapped_column(LargeBinary)  # the ordered digests, concatenated
    count: Mapped[int] = mapped_column(Integer)
    labels: Mapped[str] = mapped_column(Text, default="[]")  # JSON list of document labels
    description: Mapped[str] = mapped_column(String(512), default="")
    nonce: Mapped[bytes] = mapped_column(LargeBinary(32))
    state: Mapped[str] = mapped_column(String(16), default="pending")
    created_at: Mapped[float] = mapped_column(Float)
    expires_at: Mapped[float] = mapped_column(Float)
    approved_at: Mapped[float | None] = mapped_column(Float, nullable=True)
    passkey_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
