"""Engine set-up and the unit of work (``Store.tx()``), with typed repository methods on ``Tx``.

Every state change goes through one ``Tx``: its audit records are appended in the same database
transaction, so a change and its audit record are committed together or not at all.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import struct
import threading
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, Engine, Table, create_engine, delete, event, func, insert, inspect, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError

from rsign.audit import chain
from rsign.audit.events import AuditEvent, EventFilter
from rsign.clock import Clock, SystemClock, iso_utc
from rsign.errors import AlreadyExists, AuditIntegrityError, AuditUnavailable, ConfigurationError, Unavailable
from rsign.store import models as m

log = logging.getLogger(__name__)


# Core tables: the hot paths run on SQLAlchemy Core (a fraction of the ORM's per-statement cost);
# the ORM classes in models.py define the schema.
USERS: Table = m.User.__table__  # type: ignore[assignment]
SESSIONS: Table = m.SessionRow.__table__  # type: ignore[assignment]
CREDS: Table = m.Credential.__table__  # type: ignore[assignment]
KEYS: Table = m.KeyVersion.__table__  # type: ignore[assignment]
SADS: Table = m.Sad.__table__  # type: ignore[assignment]
CONSUMED: Table = m.ConsumedHash.__table__  # type: ignore[assignment]
AUDIT: Table = m.AuditRecord.__table__  # type: ignore[assignment]
HEAD: Table = m.AuditHead.__table__  # type: ignore[assignment]
CHECKPOINTS: Table = m.AuditCheckpoint.__table__  # type: ignore[assignment]
META: Table = m.Meta.__table__  # type: ignore[assignment]
# Bump with every schema change (and give operators a migration).
SCHEMA_VERSION = "1"
AUDIT_KEYS: Table = m.AuditKey.__table__  # type: ignore[assignment]
SEAL_USERS: Table = m.SealUser.__table__  # type: ignore[assignment]
APPROVALS: Table = m.DestroyApproval.__table__  # type: ignore[assignment]


# -- plain views handed to the domain (no ORM objects leave this package) ----------------------


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


def _user_view(u: Any) -> UserView:
    return UserView(
        u.user_id,
        u.name,
        u.agency,
        u.role,
        u.status,
        u.pin_hash,
        bytes(u.totp_sealed),
        u.last_otp_step,
        u.failed_attempts,
        bool(u.locked),
        u.scope or "agency",
    )


def fold(text: str) -> str:
    """Case- and diacritic-insensitive form for search: "Lò Văn Tuấn" -> "lo van tuan"."""
    decomposed = unicodedata.normalize("NFD", text.replace("đ", "d").replace("Đ", "D"))
    return " ".join("".join(ch for ch in decomposed if not unicodedata.combining(ch)).lower().split())


def _rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0))


def pack_certs(certs: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(c)) + c for c in certs)


def unpack_certs(blob: bytes) -> tuple[bytes, ...]:
    out, i = [], 0
    while i < len(blob):
        (n,) = struct.unpack_from(">I", blob, i)
        out.append(blob[i + 4 : i + 4 + n])
        i += 4 + n
    return tuple(out)


def split_hashes(blob: bytes, size: int) -> tuple[bytes, ...]:
    return tuple(blob[i : i + size] for i in range(0, len(blob), size))


# -- engine --------------------------------------------------------------------------------------


def make_engine(url: str, busy_timeout: float = 5.0) -> Engine:
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, pool_size=20)

        @event.listens_for(engine, "connect")
        def _sqlite_connect(dbapi_conn: Any, _rec: Any) -> None:
            # Let SQLAlchemy's "begin" event below issue BEGIN itself (pysqlite's implicit BEGIN
            # is deferred, which lets two writers deadlock on lock upgrade).
            dbapi_conn.isolation_level = None
            cur = dbapi_conn.cursor()
            cur.execute("PRAGMA journal_mode=WAL")
            # FULL: a commit is on disk before we answer; an audit record must survive a power cut.
            cur.execute("PRAGMA synchronous=FULL")
            cur.execute("PRAGMA foreign_keys=ON")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writers take the write lock up front, so the audit head read and the append that
            # follows are serialised across threads, processes and CLI commands.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("rsign_write") else "BEGIN")

        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


class Store:
    def __init__(self, url: str, clock: Clock | None = None, busy_timeout: float = 5.0) -> None:
        self.url = url
        self.clock = clock or SystemClock()
        self.engine = make_engine(url, busy_timeout)
        # Set by the audit layer once its HSM MAC key is known; appends fail closed without it.
        self.mac: Callable[[Sequence[bytes]], list[str]] | None = None
        self._healthy = True
        self._listeners: list[Callable[[bool], None]] = []
        self._write_engine = self.engine.execution_options(rsign_write=True)
        # SQLite allows one writer; waiting writers poll with sleeps of up to 100 ms (busy
        # handler back-off), which wrecks latency under load. Queue this process's writers on a
        # lock instead; other processes (CLI commands) still meet the busy timeout.
        self._write_lock: threading.Lock | contextlib.nullcontext[None] = (
            threading.Lock() if url.startswith("sqlite") else contextlib.nullcontext()
        )
        fresh = self._check_schema()
        try:
            m.Base.metadata.create_all(self.engine)
            with self.tx() as t:
                t.init_head()
                if fresh:
                    t.c.execute(insert(META).values(key="schema_version", value=SCHEMA_VERSION))
        except AlreadyExists:
            pass  # another process initialised the database at the same moment
        if url.startswith("sqlite"):
            self._check_sqlite_durability()

    def _check_schema(self) -> bool:
        """True for an empty database. A database of another schema version is refused with a
        clear message rather than failing later on a missing column."""
        tables = set(inspect(self.engine).get_table_names())
        if not tables:
            return True
        found = None
        if "rsign_meta" in tables:
            with self.engine.connect() as c:
                found = c.execute(select(META.c.value).where(META.c.key == "schema_version")).scalar()
        if found != SCHEMA_VERSION:
            raise ConfigurationError(
                f"the database at {self.url.split('@')[-1]} has schema version {found or 'unknown (early)'};"
                f" this rsign needs {SCHEMA_VERSION}. Start a new state directory (development), or migrate."
            )
        return False

    def _check_sqlite_durability(self) -> None:
        with self.engine.connect() as c:
            mode = c.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = c.exec_driver_sql("PRAGMA synchronous").scalar()
        if str(mode).lower() != "wal" or int(sync or 0) != 2:
            raise Unavailable(f"SQLite durability settings not in force (journal_mode={mode}, synchronous={sync})")

    @contextlib.contextmanager
    def tx(self) -> Iterator[Tx]:
        """A write transaction. Any database failure becomes ``AuditUnavailable``: every write
        carries audit records, and failing closed is the point."""
        try:
            with self._write_lock, self._write_engine.begin() as conn:
                yield Tx(conn, self.clock, self.mac)
        except IntegrityError as exc:
            raise AlreadyExists("the object already exists") from exc
        except (DBAPIError, SQLAlchemyError) as exc:
            log.error("audit store write failed: %s", type(exc).__name__)
            self._set_health(False)
            raise AuditUnavailable("the audit store is unavailable; the operation was not performed") from exc
        self._set_health(True)

    # -- health ------------------------------------------------------------------------------

    @property
    def healthy(self) -> bool:
        return self._healthy

    def on_health_change(self, listener: Callable[[bool], None]) -> None:
        self._listeners.append(listener)

    def _set_health(self, ok: bool) -> None:
        if ok != self._healthy:
            self._healthy = ok
            log.warning("audit store is %s", "back" if ok else "UNAVAILABLE: signing refused until it returns")
            for fn in list(self._listeners):
                fn(ok)

    def probe(self) -> bool:
        """Can an audit record be written right now? Inserts one and rolls it back."""
        try:
            with self._write_lock, self._write_engine.connect() as conn, conn.begin() as trans:
                conn.execute(
                    insert(AUDIT).values(
                        seq=-1,
                        ts="",
                        actor="",
                        agency="",
                        action="probe",
                        result="",
                        credential_id="",
                        key_version=0,
                        digest="",
                        reason="",
                        request_id="",
                        client="",
                        details="{}",
                        prev_hash="",
                        hash="",
                        mac="",
                    )
                )
                trans.rollback()
        except (DBAPIError, SQLAlchemyError):
            self._set_health(False)
            return False
        self._set_health(True)
        return True

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        try:
            with self.engine.begin() as conn:
                yield Tx(conn, self.clock)
        except (DBAPIError, SQLAlchemyError) as exc:
            log.error("database read failed: %s", type(exc).__name__)
            raise Unavailable("the database is unavailable") from exc

    def close(self) -> None:
        self.engine.dispose()


class Tx:
    """Repository methods over one database transaction (SQLAlchemy Core)."""

    def __init__(
        self, conn: Connection, clock: Clock, mac: Callable[[Sequence[bytes]], list[str]] | None = None
    ) -> None:
        self.c = conn
        self._clock = clock
        self._mac = mac

    def init_head(self) -> None:
        if self.c.execute(select(HEAD.c.id).where(HEAD.c.id == 1)).first() is None:
            self.c.execute(insert(HEAD).values(id=1, seq=0, hash=chain.GENESIS))

    # -- users -------------------------------------------------------------------------------

    def get_user(self, user_id: str) -> UserView | None:
        u = self.c.execute(select(USERS).where(USERS.c.user_id == user_id)).first()
        return None if u is None else _user_view(u)

    def add_user(
        self,
        user_id: str,
        name: str,
        agency: str,
        role: str,
        pin_hash: str,
        totp_sealed: bytes,
        now: float,
        scope: str = "agency",
    ) -> None:
        self.c.execute(
            insert(USERS).values(
                user_id=user_id,
                name=name,
                agency=agency,
                role=role,
                status="active",
                pin_hash=pin_hash,
                totp_sealed=totp_sealed,
                last_otp_step=-1,
                failed_attempts=0,
                locked=False,
                created_at=now,
                scope=scope,
                name_folded=fold(name),
            )
        )

    def search_users(
        self, agency: str = "", name_folded: str = "", status: str = "", limit: int = 1000
    ) -> list[UserView]:
        q = select(USERS)
        if agency:
            q = q.where(USERS.c.agency == agency)
        if status:
            q = q.where(USERS.c.status == status)
        if name_folded:
            q = q.where(USERS.c.name_folded.contains(name_folded, autoescape=True))
        return [_user_view(u) for u in self.c.execute(q.order_by(USERS.c.user_id).limit(limit)).all()]

    def user_ids(self) -> set[str]:
        return {r[0] for r in self.c.execute(select(USERS.c.user_id)).all()}

    def credential_ids(self) -> set[str]:
        return {r[0] for r in self.c.execute(select(CREDS.c.credential_id)).all()}

    def set_user_status(self, user_id: str, status: str) -> bool:
        res = self.c.execute(update(USERS).where(USERS.c.user_id == user_id).values(status=status))
        return _rowcount(res) == 1

    def set_user_agency(self, user_id: str, agency: str) -> None:
        self.c.execute(update(USERS).where(USERS.c.user_id == user_id).values(agency=agency))

    def set_totp(self, user_id: str, sealed: bytes) -> None:
        self.c.execute(update(USERS).where(USERS.c.user_id == user_id).values(totp_sealed=sealed, failed_attempts=0))

    def end_user_sessions(self, user_id: str, now: float, reason: str) -> int:
        res = self.c.execute(
            update(SESSIONS)
            .where(SESSIONS.c.user_id == user_id, SESSIONS.c.ended_at.is_(None))
            .values(ended_at=now, end_reason=reason)
        )
        return _rowcount(res)

    def expire_user_sads(self, user_id: str, now: float) -> int:
        """Unused SADs of the user stop working now (kept, for the audit trail)."""
        res = self.c.execute(
            update(SADS)
            .where(SADS.c.user_id == user_id, SADS.c.consumed_at.is_(None), SADS.c.expires_at > now)
            .values(expires_at=now)
        )
        return _rowcount(res)

    def set_pin_hash(self, user_id: str, pin_hash: str) -> None:
        self.c.execute(update(USERS).where(USERS.c.user_id == user_id).values(pin_hash=pin_hash))

    def accept_otp_step(self, user_id: str, step: int) -> bool:
        """Atomically accept ``step`` if it is later than every step accepted before and the user
        is not locked; resets the failure counter. Correct across replicas: the check and the
        write are one conditional UPDATE."""
        res = self.c.execute(
            update(USERS)
            .where(USERS.c.user_id == user_id, USERS.c.last_otp_step < step, USERS.c.locked.is_(False))
            .values(last_otp_step=step, failed_attempts=0)
        )
        return _rowcount(res) == 1

    def record_auth_failure(self, user_id: str, threshold: int) -> tuple[int, bool]:
        """Count one failure atomically; lock at ``threshold``. Returns (failures, locked_now)."""
        row = self.c.execute(
            update(USERS)
            .where(USERS.c.user_id == user_id)
            .values(failed_attempts=USERS.c.failed_attempts + 1)
            .returning(USERS.c.failed_attempts, USERS.c.locked)
        ).one()
        failures, locked = int(row[0]), bool(row[1])
        if not locked and failures >= threshold:
            res = self.c.execute(
                update(USERS).where(USERS.c.user_id == user_id, USERS.c.locked.is_(False)).values(locked=True)
            )
            return failures, _rowcount(res) == 1
        return failures, False

    def unlock_user(self, user_id: str) -> bool:
        res = self.c.execute(update(USERS).where(USERS.c.user_id == user_id).values(locked=False, failed_attempts=0))
        return _rowcount(res) == 1

    # -- sessions ----------------------------------------------------------------------------

    def add_session(self, token_hash: bytes, user_id: str, now: float, expires_at: float) -> int:
        res = self.c.execute(
            insert(SESSIONS)
            .values(token_hash=token_hash, user_id=user_id, created_at=now, last_seen=now, expires_at=expires_at)
            .returning(SESSIONS.c.id)
        )
        return int(res.scalar_one())

    def get_session(self, token_hash: bytes) -> SessionView | None:
        r = self.c.execute(select(SESSIONS).where(SESSIONS.c.token_hash == token_hash)).first()
        if r is None:
            return None
        return SessionView(r.id, r.user_id, r.created_at, r.last_seen, r.expires_at, r.ended_at, r.end_reason)

    def touch_session(self, session_id: int, now: float) -> None:
        self.c.execute(update(SESSIONS).where(SESSIONS.c.id == session_id).values(last_seen=now))

    def end_session(self, session_id: int, now: float, reason: str) -> bool:
        res = self.c.execute(
            update(SESSIONS)
            .where(SESSIONS.c.id == session_id, SESSIONS.c.ended_at.is_(None))
            .values(ended_at=now, end_reason=reason)
        )
        return _rowcount(res) == 1

    # -- credentials -------------------------------------------------------------------------

    def _credentials(self, *where: Any) -> list[CredentialView]:
        rows = self.c.execute(
            select(CREDS, KEYS.c.cka_id, KEYS.c.certificate, KEYS.c.chain)
            .join(KEYS, (KEYS.c.credential_id == CREDS.c.credential_id) & (KEYS.c.version == CREDS.c.key_version))
            .where(*where)
            .order_by(CREDS.c.credential_id)
        ).all()
        return [
            CredentialView(
                r.credential_id,
                r.holder_user_id or "",
                r.agency,
                r.key_algorithm,
                r.status,
                r.key_version,
                r.multisign,
                bytes(r.cka_id),
                bytes(r.certificate),
                unpack_certs(bytes(r.chain)),
                r.kind,
                r.status_reason,
                r.not_after,
            )
            for r in rows
        ]

    def get_credential(self, credential_id: str) -> CredentialView | None:
        found = self._credentials(CREDS.c.credential_id == credential_id)
        return found[0] if found else None

    def list_credentials(self, holder_user_id: str) -> list[CredentialView]:
        """The user's own credentials and the organisation seals they may activate."""
        seals = select(SEAL_USERS.c.credential_id).where(SEAL_USERS.c.user_id == holder_user_id)
        return self._credentials((CREDS.c.holder_user_id == holder_user_id) | CREDS.c.credential_id.in_(seals))

    def may_activate(self, credential_id: str, user_id: str) -> bool:
        """Holder of a personal credential, or an authorized user of a seal."""
        row = self.c.execute(
            select(CREDS.c.kind, CREDS.c.holder_user_id).where(CREDS.c.credential_id == credential_id)
        ).first()
        if row is None:
            return False
        if row.kind != "seal":
            return bool(row.holder_user_id == user_id)
        return (
            self.c.execute(
                select(SEAL_USERS.c.user_id).where(
                    SEAL_USERS.c.credential_id == credential_id, SEAL_USERS.c.user_id == user_id
                )
            ).first()
            is not None
        )

    def set_seal_users(self, credential_id: str, user_ids: Sequence[str]) -> None:
        self.c.execute(delete(SEAL_USERS).where(SEAL_USERS.c.credential_id == credential_id))
        if user_ids:
            self.c.execute(insert(SEAL_USERS), [{"credential_id": credential_id, "user_id": u} for u in user_ids])

    def seal_users(self, credential_id: str) -> list[str]:
        rows = self.c.execute(select(SEAL_USERS.c.user_id).where(SEAL_USERS.c.credential_id == credential_id)).all()
        return sorted(r[0] for r in rows)

    def search_credentials(
        self, agency: str = "", name_folded: str = "", status: str = "", expires_before: float = 0.0, limit: int = 1000
    ) -> list[CredentialView]:
        where: list[Any] = []
        if agency:
            where.append(CREDS.c.agency == agency)
        if status:
            where.append(CREDS.c.status == status)
        if expires_before:
            where.append(CREDS.c.not_after < expires_before)
        if name_folded:
            holders = select(USERS.c.user_id).where(USERS.c.name_folded.contains(name_folded, autoescape=True))
            where.append(CREDS.c.holder_user_id.in_(holders))
        return self._credentials(*where)[:limit]

    def credentials_of(self, user_id: str) -> list[CredentialView]:
        return self._credentials(CREDS.c.holder_user_id == user_id)

    def key_versions(self, credential_id: str) -> list[KeyVersionView]:
        rows = self.c.execute(select(KEYS).where(KEYS.c.credential_id == credential_id).order_by(KEYS.c.version)).all()
        return [
            KeyVersionView(
                r.credential_id,
                r.version,
                bytes(r.cka_id),
                bytes(r.certificate),
                unpack_certs(bytes(r.chain)),
                r.status,
            )
            for r in rows
        ]

    def add_key_version(
        self,
        credential_id: str,
        version: int,
        cka_id: bytes,
        certificate: bytes,
        chain_certs: Sequence[bytes],
        not_after: float,
        now: float,
    ) -> None:
        """A new current key version; the previous one is retired (verifies, never signs)."""
        self.c.execute(
            update(KEYS)
            .where(KEYS.c.credential_id == credential_id, KEYS.c.status == "active")
            .values(status="retired")
        )
        self.c.execute(
            insert(KEYS).values(
                credential_id=credential_id,
                version=version,
                cka_id=cka_id,
                certificate=certificate,
                chain=pack_certs(chain_certs),
                status="active",
                created_at=now,
            )
        )
        self.c.execute(
            update(CREDS).where(CREDS.c.credential_id == credential_id).values(key_version=version, not_after=not_after)
        )

    def set_certificate(
        self, credential_id: str, version: int, certificate: bytes, chain_certs: Sequence[bytes], not_after: float
    ) -> None:
        self.c.execute(
            update(KEYS)
            .where(KEYS.c.credential_id == credential_id, KEYS.c.version == version)
            .values(certificate=certificate, chain=pack_certs(chain_certs))
        )
        self.c.execute(
            update(CREDS)
            .where(CREDS.c.credential_id == credential_id, CREDS.c.key_version == version)
            .values(not_after=not_after)
        )

    def set_credential_status(self, credential_id: str, status: str, reason: str, only_from: Sequence[str]) -> bool:
        """Move to ``status`` if the credential is currently in one of ``only_from``."""
        res = self.c.execute(
            update(CREDS)
            .where(CREDS.c.credential_id == credential_id, CREDS.c.status.in_(list(only_from)))
            .values(status=status, status_reason=reason)
        )
        return _rowcount(res) == 1

    def mark_keys_destroyed(self, credential_id: str) -> None:
        self.c.execute(update(KEYS).where(KEYS.c.credential_id == credential_id).values(status="destroyed"))

    def destroy_approvals(self, credential_id: str) -> list[str]:
        rows = self.c.execute(
            select(APPROVALS.c.officer_user_id).where(APPROVALS.c.credential_id == credential_id)
        ).all()
        return [r[0] for r in rows]

    def add_destroy_approval(self, credential_id: str, officer: str, now: float) -> None:
        self.c.execute(insert(APPROVALS).values(credential_id=credential_id, officer_user_id=officer, requested_at=now))

    def add_credential(
        self,
        credential_id: str,
        holder_user_id: str,
        agency: str,
        key_algorithm: str,
        multisign: int,
        cka_id: bytes,
        certificate: bytes,
        chain_certs: Sequence[bytes],
        now: float,
        kind: str = "person",
        not_after: float = 0.0,
    ) -> None:
        self.c.execute(
            insert(CREDS).values(
                credential_id=credential_id,
                holder_user_id=holder_user_id or None,
                kind=kind,
                agency=agency,
                key_algorithm=key_algorithm,
                status="active",
                status_reason="",
                key_version=1,
                multisign=multisign,
                not_after=not_after,
                created_at=now,
            )
        )
        self.c.execute(
            insert(KEYS).values(
                credential_id=credential_id,
                version=1,
                cka_id=cka_id,
                certificate=certificate,
                chain=pack_certs(chain_certs),
                status="active",
                created_at=now,
            )
        )

    def count_credentials(self) -> int:
        return int(self.c.execute(select(func.count()).select_from(CREDS)).scalar_one())

    # -- SADs --------------------------------------------------------------------------------

    def add_sad(
        self,
        sad_hash: bytes,
        user_id: str,
        session_id: int,
        credential_id: str,
        key_version: int,
        hash_alg: str,
        hashes: Sequence[bytes],
        issued_at: float,
        expires_at: float,
    ) -> int:
        res = self.c.execute(
            insert(SADS)
            .values(
                sad_hash=sad_hash,
                user_id=user_id,
                session_id=session_id,
                credential_id=credential_id,
                key_version=key_version,
                hash_alg=hash_alg,
                hashes=b"".join(hashes),
                count=len(hashes),
                issued_at=issued_at,
                expires_at=expires_at,
            )
            .returning(SADS.c.id)
        )
        return int(res.scalar_one())

    def get_sad(self, sad_hash: bytes, digest_size: int) -> SadView | None:
        r = self.c.execute(select(SADS).where(SADS.c.sad_hash == sad_hash)).first()
        if r is None:
            return None
        blob = bytes(r.hashes)
        count = int(r._mapping["count"])
        size = len(blob) // count if count else digest_size
        return SadView(
            r.id,
            r.user_id,
            r.session_id,
            r.credential_id,
            r.key_version,
            r.hash_alg,
            split_hashes(blob, size),
            r.issued_at,
            r.expires_at,
            r.consumed_at,
        )

    def consume_sad(self, sad_id: int, now: float) -> bool:
        """Exactly-once consumption: a conditional UPDATE, so two replicas cannot both win."""
        res = self.c.execute(
            update(SADS)
            .where(SADS.c.id == sad_id, SADS.c.consumed_at.is_(None), SADS.c.expires_at > now)
            .values(consumed_at=now)
        )
        return _rowcount(res) == 1

    # -- consumed hash occurrences ----------------------------------------------------------

    def consumed(self, credential_id: str, keys: Sequence[tuple[bytes, int]]) -> set[tuple[bytes, int]]:
        """Which (digest, occurrence) pairs of ``keys`` were already consumed for the credential."""
        found: set[tuple[bytes, int]] = set()
        digests = sorted({d for d, _ in keys})
        for i in range(0, len(digests), 500):
            rows = self.c.execute(
                select(CONSUMED.c.digest, CONSUMED.c.occurrence).where(
                    CONSUMED.c.credential_id == credential_id, CONSUMED.c.digest.in_(digests[i : i + 500])
                )
            ).all()
            found.update((bytes(r[0]), int(r[1])) for r in rows)
        return found & set(keys)

    def consume_hashes(self, credential_id: str, sad_id: int, start: int, keys: Sequence[tuple[bytes, int]]) -> None:
        """Consume hash occurrences; a primary-key violation (already consumed, possibly by a
        concurrent request) aborts the transaction."""
        if keys:
            self._insert_many(
                CONSUMED,
                [
                    {
                        "credential_id": credential_id,
                        "digest": d,
                        "occurrence": o,
                        "sad_id": sad_id,
                        "position": start + i,
                    }
                    for i, (d, o) in enumerate(keys)
                ],
            )

    def _insert_many(self, table: Table, rows: list[dict[str, Any]]) -> None:
        """Bulk insert. On SQLite, straight to the driver's executemany: SQLAlchemy's per-row
        parameter processing was a third of the batch path's database time. Elsewhere, Core's
        insertmanyvalues (multi-row INSERTs) is already the fast path."""
        if self.c.dialect.name != "sqlite":
            self.c.execute(insert(table), rows)
            return
        cols = list(rows[0])
        sql = f"INSERT INTO {table.name} ({', '.join(cols)}) VALUES ({', '.join('?' * len(cols))})"
        self.c.exec_driver_sql(sql, [tuple(r[c] for c in cols) for r in rows])

    def release_hashes(self, credential_id: str, sad_id: int, positions: Sequence[int]) -> None:
        """Give back occurrences the HSM failed to sign (no signature exists), so that they can be
        authorized again."""
        for i in range(0, len(positions), 500):
            self.c.execute(
                delete(CONSUMED).where(
                    CONSUMED.c.credential_id == credential_id,
                    CONSUMED.c.sad_id == sad_id,
                    CONSUMED.c.position.in_(positions[i : i + 500]),
                )
            )

    # -- audit -------------------------------------------------------------------------------

    def append(self, *events: AuditEvent) -> int:
        """Append events to the chain in this transaction; returns the last sequence number."""
        head = self.c.execute(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == 1).with_for_update()).one()
        ts = iso_utc(self._clock.now())
        rows: list[dict[str, Any]] = []
        seq, prev = int(head.seq), str(head.hash)
        for ev in events:
            seq += 1
            fields: dict[str, Any] = {
                "seq": seq,
                "ts": ts,
                "actor": ev.actor,
                "agency": ev.agency,
                "action": str(ev.action),
                "result": str(ev.result),
                "credential_id": ev.credential_id,
                "key_version": ev.key_version,
                "digest": ev.digest,
                "reason": ev.reason,
                "request_id": ev.request_id,
                "client": ev.client,
                "details": json.dumps(ev.details, sort_keys=True, ensure_ascii=False, separators=(",", ":")),
                "prev_hash": prev,
            }
            fields["hash"] = prev = chain.record_hash(fields)
            rows.append(fields)
        if rows:
            for r in rows:
                r["mac"] = ""
            self._insert_many(AUDIT, rows)
            # The MACs come after the insert succeeded, so a store that refuses writes never
            # causes an HSM call. One HSM call checks the record we build on (the previous
            # transaction's last record must carry rsign's MAC: nothing was slipped in or cut off
            # since) and MACs the new last record, which covers every record before it.
            if self._mac is None:
                raise AuditUnavailable("the audit MAC key is not configured")
            old_seq, old_hash = int(head.seq), str(head.hash)
            if old_seq > 0:
                stored = self.c.execute(select(AUDIT.c.mac, AUDIT.c.hash).where(AUDIT.c.seq == old_seq)).first()
                want, mac = self._mac([chain.mac_message(old_seq, old_hash), chain.mac_message(seq, prev)])
                if stored is None or stored.hash != old_hash or not hmac.compare_digest(str(stored.mac), want):
                    raise AuditIntegrityError(
                        f"audit record {old_seq}, the last one written, does not carry rsign's MAC: the log was"
                        " altered outside rsign; refusing to append (run 'rsign audit verify')"
                    )
            else:
                (mac,) = self._mac([chain.mac_message(seq, prev)])
            self.c.execute(update(AUDIT).where(AUDIT.c.seq == seq).values(mac=mac))
            self.c.execute(update(HEAD).where(HEAD.c.id == 1).values(seq=seq, hash=prev))
        return seq

    def audit_head(self) -> tuple[int, str]:
        h = self.c.execute(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == 1)).first()
        return (0, chain.GENESIS) if h is None else (int(h.seq), str(h.hash))

    def audit_rows(self, after: int = 0, upto: int | None = None, batch: int = 5000) -> Iterator[dict[str, Any]]:
        """Records ``after`` < seq <= ``upto`` in order, with prev_hash, hash and mac."""
        cols = [AUDIT.c[f] for f in (*chain.CONTENT_FIELDS, "prev_hash", "hash", "mac")]
        last = after
        while True:
            q = select(*cols).where(AUDIT.c.seq > last)
            if upto is not None:
                q = q.where(AUDIT.c.seq <= upto)
            rows = self.c.execute(q.order_by(AUDIT.c.seq).limit(batch)).all()
            if not rows:
                return
            for r in rows:
                yield dict(r._mapping)
            last = int(rows[-1].seq)

    def audit_record(self, seq: int) -> dict[str, Any] | None:
        r = self.c.execute(select(AUDIT).where(AUDIT.c.seq == seq)).first()
        return None if r is None else dict(r._mapping)

    def find_events(self, flt: EventFilter, after: int, limit: int) -> list[dict[str, Any]]:
        """Records matching ``flt`` with seq > ``after``, oldest first (stable pagination by seq)."""
        q = select(AUDIT).where(AUDIT.c.seq > after)
        for clause in _filter_clauses(flt):
            q = q.where(clause)
        return [dict(r._mapping) for r in self.c.execute(q.order_by(AUDIT.c.seq).limit(limit)).all()]

    def last_events(self, flt: EventFilter, limit: int) -> list[dict[str, Any]]:
        q = select(AUDIT)
        for clause in _filter_clauses(flt):
            q = q.where(clause)
        rows = self.c.execute(q.order_by(AUDIT.c.seq.desc()).limit(limit)).all()
        return [dict(r._mapping) for r in reversed(rows)]

    # -- checkpoints and audit keys -------------------------------------------------------------

    def checkpoints(self) -> list[CheckpointView]:
        rows = self.c.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.seq)).all()
        return [CheckpointView(int(r.seq), r.head_hash, r.ts, bytes(r.signature)) for r in rows]

    def last_checkpoint(self) -> CheckpointView | None:
        r = self.c.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.seq.desc()).limit(1)).first()
        return None if r is None else CheckpointView(int(r.seq), r.head_hash, r.ts, bytes(r.signature))

    def add_checkpoint(self, cp: CheckpointView) -> bool:
        """Insert unless a checkpoint at or beyond this sequence exists (another replica won)."""
        newer = self.c.execute(select(CHECKPOINTS.c.seq).where(CHECKPOINTS.c.seq >= cp.seq).limit(1)).first()
        if newer is not None:
            return False
        self.c.execute(insert(CHECKPOINTS).values(seq=cp.seq, head_hash=cp.head_hash, ts=cp.ts, signature=cp.signature))
        return True

    def audit_key(self, purpose: str) -> AuditKeyView | None:
        r = self.c.execute(select(AUDIT_KEYS).where(AUDIT_KEYS.c.purpose == purpose)).first()
        if r is None:
            return None
        return AuditKeyView(r.purpose, bytes(r.cka_id), bytes(r.certificate), unpack_certs(bytes(r.chain)))

    def add_audit_key(
        self, purpose: str, cka_id: bytes, certificate: bytes, chain_certs: Sequence[bytes], now: float
    ) -> None:
        self.c.execute(
            insert(AUDIT_KEYS).values(
                purpose=purpose, cka_id=cka_id, certificate=certificate, chain=pack_certs(chain_certs), created_at=now
            )
        )


def _filter_clauses(flt: EventFilter) -> list[Any]:
    out: list[Any] = []
    if flt.from_ts:
        out.append(AUDIT.c.ts >= flt.from_ts)
    if flt.to_ts:
        out.append(AUDIT.c.ts < flt.to_ts)
    for col, value in (
        ("actor", flt.actor),
        ("credential_id", flt.credential_id),
        ("agency", flt.agency),
        ("action", flt.action),
        ("result", flt.result),
    ):
        if value:
            out.append(AUDIT.c[col] == value)
    return out
