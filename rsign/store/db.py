"""Engine set-up and the unit of work (``Store.tx()``), with typed repository methods on ``Tx``.

Every state change goes through one ``Tx``: its audit records are appended in the same database
transaction, so a change and its audit record are committed together or not at all.
"""

from __future__ import annotations

import contextlib
import json
import logging
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, create_engine, delete, event, func, insert, select, update
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from rsign.audit import chain
from rsign.audit.events import AuditEvent
from rsign.clock import Clock, SystemClock, iso_utc
from rsign.errors import AlreadyExists, AuditUnavailable, Unavailable
from rsign.store import models as m

log = logging.getLogger(__name__)


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
    holder_user_id: str
    agency: str
    key_algorithm: str
    status: str
    key_version: int
    multisign: int
    cka_id: bytes
    certificate: bytes
    chain: tuple[bytes, ...]


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


def make_engine(url: str) -> Engine:
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
            cur.execute("PRAGMA busy_timeout=30000")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writers take the write lock up front, so the audit head read and the append that
            # follows are serialised across threads, processes and CLI commands.
            conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("rsign_write") else "BEGIN")

        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


class Store:
    def __init__(self, url: str, clock: Clock | None = None) -> None:
        self.url = url
        self.clock = clock or SystemClock()
        self.engine = make_engine(url)
        self._write_engine = self.engine.execution_options(rsign_write=True)
        try:
            m.Base.metadata.create_all(self.engine)
            with self.tx() as t:
                if t.s.get(m.AuditHead, 1) is None:
                    t.s.add(m.AuditHead(id=1, seq=0, hash=chain.GENESIS))
        except IntegrityError:
            pass  # another process created the head at the same moment
        if url.startswith("sqlite"):
            self._check_sqlite_durability()

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
            with Session(self._write_engine, expire_on_commit=False) as s, s.begin():
                yield Tx(s, self.clock)
        except IntegrityError as exc:
            raise AlreadyExists("the object already exists") from exc
        except (DBAPIError, SQLAlchemyError) as exc:
            log.error("audit store write failed: %s", type(exc).__name__)
            raise AuditUnavailable("the audit store is unavailable; the operation was not performed") from exc

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        try:
            with Session(self.engine, expire_on_commit=False) as s, s.begin():
                yield Tx(s, self.clock)
        except (DBAPIError, SQLAlchemyError) as exc:
            log.error("database read failed: %s", type(exc).__name__)
            raise Unavailable("the database is unavailable") from exc

    def close(self) -> None:
        self.engine.dispose()


class Tx:
    def __init__(self, session: Session, clock: Clock) -> None:
        self.s = session
        self._clock = clock

    # -- users -------------------------------------------------------------------------------

    def get_user(self, user_id: str) -> UserView | None:
        u = self.s.get(m.User, user_id)
        if u is None:
            return None
        return UserView(
            u.user_id,
            u.name,
            u.agency,
            u.role,
            u.status,
            u.pin_hash,
            u.totp_sealed,
            u.last_otp_step,
            u.failed_attempts,
            u.locked,
        )

    def add_user(
        self, user_id: str, name: str, agency: str, role: str, pin_hash: str, totp_sealed: bytes, now: float
    ) -> None:
        self.s.add(
            m.User(
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
            )
        )
        self.s.flush()

    def accept_otp_step(self, user_id: str, step: int) -> bool:
        """Atomically accept ``step`` if it is later than every step accepted before and the user
        is not locked; resets the failure counter. Correct across replicas: the check and the
        write are one conditional UPDATE."""
        res = self.s.execute(
            update(m.User)
            .where(m.User.user_id == user_id, m.User.last_otp_step < step, m.User.locked.is_(False))
            .values(last_otp_step=step, failed_attempts=0)
        )
        return _rowcount(res) == 1

    def record_auth_failure(self, user_id: str, threshold: int) -> tuple[int, bool]:
        """Count one failure atomically; lock at ``threshold``. Returns (failures, locked_now)."""
        row = self.s.execute(
            update(m.User)
            .where(m.User.user_id == user_id)
            .values(failed_attempts=m.User.failed_attempts + 1)
            .returning(m.User.failed_attempts, m.User.locked)
        ).one()
        failures, locked = int(row[0]), bool(row[1])
        if not locked and failures >= threshold:
            res = self.s.execute(
                update(m.User).where(m.User.user_id == user_id, m.User.locked.is_(False)).values(locked=True)
            )
            return failures, _rowcount(res) == 1
        return failures, False

    def unlock_user(self, user_id: str) -> bool:
        res = self.s.execute(update(m.User).where(m.User.user_id == user_id).values(locked=False, failed_attempts=0))
        return _rowcount(res) == 1

    # -- sessions ----------------------------------------------------------------------------

    def add_session(self, token_hash: bytes, user_id: str, now: float, expires_at: float) -> int:
        row = m.SessionRow(token_hash=token_hash, user_id=user_id, created_at=now, last_seen=now, expires_at=expires_at)
        self.s.add(row)
        self.s.flush()
        return row.id

    def get_session(self, token_hash: bytes) -> SessionView | None:
        r = self.s.execute(select(m.SessionRow).where(m.SessionRow.token_hash == token_hash)).scalar_one_or_none()
        if r is None:
            return None
        return SessionView(r.id, r.user_id, r.created_at, r.last_seen, r.expires_at, r.ended_at, r.end_reason)

    def touch_session(self, session_id: int, now: float) -> None:
        self.s.execute(update(m.SessionRow).where(m.SessionRow.id == session_id).values(last_seen=now))

    def end_session(self, session_id: int, now: float, reason: str) -> bool:
        res = self.s.execute(
            update(m.SessionRow)
            .where(m.SessionRow.id == session_id, m.SessionRow.ended_at.is_(None))
            .values(ended_at=now, end_reason=reason)
        )
        return _rowcount(res) == 1

    # -- credentials -------------------------------------------------------------------------

    def _credential_view(self, c: m.Credential) -> CredentialView:
        kv = self.s.get(m.KeyVersion, (c.credential_id, c.key_version))
        assert kv is not None, "credential without its current key version"
        return CredentialView(
            c.credential_id,
            c.holder_user_id,
            c.agency,
            c.key_algorithm,
            c.status,
            c.key_version,
            c.multisign,
            kv.cka_id,
            kv.certificate,
            unpack_certs(kv.chain),
        )

    def get_credential(self, credential_id: str) -> CredentialView | None:
        c = self.s.get(m.Credential, credential_id)
        return None if c is None else self._credential_view(c)

    def list_credentials(self, holder_user_id: str) -> list[CredentialView]:
        rows = self.s.execute(
            select(m.Credential)
            .where(m.Credential.holder_user_id == holder_user_id)
            .order_by(m.Credential.credential_id)
        ).scalars()
        return [self._credential_view(c) for c in rows]

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
    ) -> None:
        self.s.add(
            m.Credential(
                credential_id=credential_id,
                holder_user_id=holder_user_id,
                agency=agency,
                key_algorithm=key_algorithm,
                status="active",
                key_version=1,
                multisign=multisign,
                created_at=now,
            )
        )
        self.s.flush()
        self.s.add(
            m.KeyVersion(
                credential_id=credential_id,
                version=1,
                cka_id=cka_id,
                certificate=certificate,
                chain=pack_certs(chain_certs),
                created_at=now,
            )
        )
        self.s.flush()

    def count_credentials(self) -> int:
        return int(self.s.execute(select(func.count()).select_from(m.Credential)).scalar_one())

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
        row = m.Sad(
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
        self.s.add(row)
        self.s.flush()
        return row.id

    def get_sad(self, sad_hash: bytes, digest_size: int) -> SadView | None:
        r = self.s.execute(select(m.Sad).where(m.Sad.sad_hash == sad_hash)).scalar_one_or_none()
        if r is None:
            return None
        size = len(r.hashes) // r.count if r.count else digest_size
        return SadView(
            r.id,
            r.user_id,
            r.session_id,
            r.credential_id,
            r.key_version,
            r.hash_alg,
            split_hashes(r.hashes, size),
            r.issued_at,
            r.expires_at,
            r.consumed_at,
        )

    def consume_sad(self, sad_id: int, now: float) -> bool:
        """Exactly-once consumption: a conditional UPDATE, so two replicas cannot both win."""
        res = self.s.execute(
            update(m.Sad)
            .where(m.Sad.id == sad_id, m.Sad.consumed_at.is_(None), m.Sad.expires_at > now)
            .values(consumed_at=now)
        )
        return _rowcount(res) == 1

    # -- consumed hash occurrences ----------------------------------------------------------------

    def consumed(self, credential_id: str, keys: Sequence[tuple[bytes, int]]) -> set[tuple[bytes, int]]:
        """Which (digest, occurrence) pairs of ``keys`` were already consumed for the credential."""
        found: set[tuple[bytes, int]] = set()
        digests = sorted({d for d, _ in keys})
        for i in range(0, len(digests), 500):
            part = digests[i : i + 500]
            rows = self.s.execute(
                select(m.ConsumedHash.digest, m.ConsumedHash.occurrence).where(
                    m.ConsumedHash.credential_id == credential_id, m.ConsumedHash.digest.in_(part)
                )
            ).all()
            found.update((bytes(r[0]), int(r[1])) for r in rows)
        return found & set(keys)

    def consume_hashes(self, credential_id: str, sad_id: int, start: int, keys: Sequence[tuple[bytes, int]]) -> None:
        """Consume hash occurrences (a primary-key violation, i.e. a concurrent consumer, aborts
        the transaction)."""
        if keys:
            self.s.execute(
                insert(m.ConsumedHash),
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

    def release_hashes(self, credential_id: str, sad_id: int, positions: Sequence[int]) -> None:
        """Give back occurrences the HSM failed to sign (no signature exists), so that they can be
        authorized again."""
        for i in range(0, len(positions), 500):
            self.s.execute(
                delete(m.ConsumedHash).where(
                    m.ConsumedHash.credential_id == credential_id,
                    m.ConsumedHash.sad_id == sad_id,
                    m.ConsumedHash.position.in_(positions[i : i + 500]),
                )
            )

    # -- audit -------------------------------------------------------------------------------

    def append(self, *events: AuditEvent) -> int:
        """Append events to the chain in this transaction; returns the last sequence number."""
        head = self.s.execute(select(m.AuditHead).where(m.AuditHead.id == 1).with_for_update()).scalar_one()
        ts = iso_utc(self._clock.now())
        rows: list[dict[str, Any]] = []
        seq, prev = head.seq, head.hash
        for ev in events:
            seq += 1
            fields: dict[str, Any] = {
                "seq": seq,
                "ts": ts,
                "actor": ev.actor,
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
            self.s.execute(insert(m.AuditRecord), rows)
            head.seq, head.hash = seq, prev
            self.s.flush()
        return seq

    def audit_head(self) -> tuple[int, str]:
        h = self.s.get(m.AuditHead, 1)
        return (0, chain.GENESIS) if h is None else (h.seq, h.hash)

    def audit_rows(self, batch: int = 5000) -> Iterator[Mapping[str, Any]]:
        cols = [getattr(m.AuditRecord, f) for f in (*chain.HASHED_FIELDS, "hash")]
        last = 0
        while True:
            rows = (
                self.s.execute(select(*cols).where(m.AuditRecord.seq > last).order_by(m.AuditRecord.seq).limit(batch))
                .mappings()
                .all()
            )
            if not rows:
                return
            for r in rows:
                yield dict(r)
            last = int(rows[-1]["seq"])
