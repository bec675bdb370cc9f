"""Engine set-up and the unit of work: ``Store.tx()`` (write) and ``Store.read()``.

Every write goes through one ``Tx``; ``rsign.audit.journal`` adds the audit append to it, so a
change and its audit record are committed together or not at all. ``Tx`` gathers the repository
sections (users, sessions, credentials, SADs, audit rows), one module each.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

from sqlalchemy import Connection, Engine, create_engine, event, insert, make_url
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.pool import NullPool

from rsign.domain.clock import Clock, SystemClock
from rsign.domain.errors import AlreadyExists, AuditUnavailable, Unavailable
from rsign.store import migrate
from rsign.store._core import AUDIT
from rsign.store.audit_log import AuditLogRepo
from rsign.store.credentials import CredentialRepo
from rsign.store.fast import driver_exec as driver_exec  # savepoints; tests interrupt it here
from rsign.store.fast import driver_read
from rsign.store.inflight import InflightRepo
from rsign.store.passkeys import PasskeyRepo
from rsign.store.sads import SadRepo
from rsign.store.sessions import SessionRepo
from rsign.store.sqlite_conns import ThreadReaders, WriterLock, sqlite_file, writer_lock_path
from rsign.store.users import UserRepo

log = logging.getLogger(__name__)

class Tx(UserRepo, SessionRepo, CredentialRepo, SadRepo, AuditLogRepo, InflightRepo, PasskeyRepo):
    """Repository methods over one database transaction (SQLAlchemy Core)."""

    def __init__(self, conn: Connection, clock: Clock) -> None:
        self.c = conn
        self.clock = clock


def make_engine(url: str, busy_timeout: float = 5.0, pooled: bool = True) -> Engine:
    if url.startswith("sqlite"):
        # ``pooled=False``: connections kept by their user (``ThreadReaders``), closed when it closes them.
        pool: dict[str, Any] = {"pool_size": 20} if pooled else {"poolclass": NullPool}
        engine = create_engine(url, connect_args={"timeout": 30, "check_same_thread": False}, **pool)

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
            # Savepoint and statement journals in memory, not in temporary files: every group-
            # committed caller runs in a savepoint, and SQLite journals each page it changes that
            # the group had already changed; as files that was 25,000 page writes (system calls)
            # in 6 s of batch signing. They hold one transaction's pages and vanish with it;
            # durability is the WAL's, which this does not touch.
            cur.execute("PRAGMA temp_store=MEMORY")
            cur.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
            cur.close()

        @event.listens_for(engine, "begin")
        def _sqlite_begin(conn: Any) -> None:
            # Writers take the write lock up front, so the audit head read and the append that
            # follows are serialised across threads, processes and CLI commands. Straight to the
            # driver: every read and write transaction begins here, and SQLAlchemy's execution
            # layer cost several times the statement itself.
            write = conn.get_execution_options().get("rsign_write")
            if not write and conn.connection.driver_connection.in_transaction:
                # A read begun on the driver (``Store.read``, ``fast.driver_read``) and a statement
                # run through SQLAlchemy within it: SQLAlchemy's transaction is that one.
                return
            driver_exec(conn, "BEGIN IMMEDIATE" if write else "BEGIN")

        return engine
    return create_engine(url, pool_size=20, max_overflow=20, pool_pre_ping=True)


class Store:
    def __init__(self, url: str, clock: Clock | None = None, busy_timeout: float = 5.0) -> None:
        self.url = url
        self.clock = clock or SystemClock()
        self.engine = make_engine(url, busy_timeout)
        self._healthy = True
        self.errors = 0  # failed database operations since start (the metrics endpoint reads it)
        self._listeners: list[Callable[[bool], None]] = []
        self._write_engine = self.engine.execution_options(rsign_write=True)
        # A read transaction sees one snapshot: on PostgreSQL's default READ COMMITTED every
        # statement sees the latest commits, so a verifier reading the head and then the records
        # found records beyond the head while another replica appended. (SQLite's WAL read
        # transactions are snapshots already.)
        snapshot = {} if url.startswith("sqlite") else {"isolation_level": "REPEATABLE READ"}
        self._read_engine = self.engine.execution_options(**snapshot)
        # SQLite only: a file on this host, one connection per thread costs a file descriptor.
        # (On PostgreSQL a connection is a server process: reads share the pool.)
        self._readers = (
            ThreadReaders(make_engine(url, busy_timeout, pooled=False)) if sqlite_file(url) else None
        )
        # SQLite allows one writer; waiting writers poll with sleeps of up to 100 ms (busy
        # handler back-off), which wrecks latency under load. Queue this process's writers on a
        # lock instead; other processes (CLI commands) still meet the busy timeout.
        self._write_lock: WriterLock | contextlib.nullcontext[None] = (
            WriterLock(writer_lock_path(url), busy_timeout) if url.startswith("sqlite") else contextlib.nullcontext()
        )
        self._replica_lock: IO[str] | None = None
        # A new (empty) database gets the schema at head; one with data at another revision is
        # refused until the operator runs `rsign db upgrade` (see rsign.store.migrate).
        where = url.split("@")[-1]  # never the credentials in the URL
        state = migrate.inspect_database(self.engine)
        if state.empty:
            migrate.upgrade(self.engine, where)
        elif not state.at_head:
            raise migrate.refusal(where, state)
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
            with self._write_lock, self._write_engine.begin() as conn:
                yield Tx(conn, self.clock)
        except IntegrityError as exc:
            raise AlreadyExists("the object already exists") from exc
        except (DBAPIError, SQLAlchemyError) as exc:
            raise self._write_failed(exc) from exc
        self._set_health(True)

    def begin_write(self) -> WriteTx:
        """A write transaction held open across calls: the audit journal's group commit runs
        several callers' changes in it, each in a savepoint, and commits them together."""
        return WriteTx(self)

    def _write_failed(self, exc: BaseException) -> AuditUnavailable:
        self.errors += 1
        log.error("audit store write failed: %s", type(exc).__name__)
        self._set_health(False)
        return AuditUnavailable("the audit store is unavailable; the operation was not performed")

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
            self.errors += 1
            self._set_health(False)
            return False
        self._set_health(True)
        return True

    # -- replica liveness (SQLite) ------------------------------------------------------------
    #
    # A SQLite database is shared only by processes of one host, so whether the process that owns
    # in-flight signing rows is alive is known exactly, at once: each signing process holds an
    # exclusive flock on its own file beside the database while it lives, and the kernel releases
    # it when the process dies, SIGKILL included. (On PostgreSQL, replicas on other hosts are
    # judged by their lease in the database instead: ``rsign.signing.recovery``.)

    def _replica_dir(self) -> Path | None:
        url = make_url(self.url)
        if url.get_backend_name() != "sqlite" or not url.database or url.database == ":memory:":
            return None
        db = Path(url.database)
        return db.with_name(db.name + ".replicas")

    def hold_replica_lock(self, replica_id: str) -> bool:
        """Take this process's liveness lock (held until ``close``); False where there is none."""
        where = self._replica_dir()
        if where is None:
            return False
        if self._replica_lock is None:
            where.mkdir(mode=0o700, exist_ok=True)
            f = open(where / f"{replica_id}.lock", "w")  # held (open) for the process's life
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a new random id: nobody else holds it
            self._replica_lock = f
        return True

    def release_replica_lock(self, remove: bool) -> None:
        """Give up the liveness lock; ``remove`` its file too (this replica holds nothing, so nobody
        needs to learn that it died)."""
        f, self._replica_lock = self._replica_lock, None
        if f is None:
            return
        if remove:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f.name)
        f.close()

    def replica_alive(self, replica_id: str) -> bool | None:
        """True/False when the replica's liveness lock tells (SQLite), None when it cannot: no lock
        file (on PostgreSQL, or a replica that never took one)."""
        where = self._replica_dir()
        path = where / f"{replica_id}.lock" if where is not None else None
        if path is None or not path.exists():
            return None
        try:
            with open(path, "a") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    return True
                return False  # closing the file releases the lock at once
        except OSError:
            return None

    def forget_replica(self, replica_id: str) -> None:
        """Remove a dead replica's liveness file (once it holds nothing): ids are never reused."""
        where = self._replica_dir()
        if where is not None and self.replica_alive(replica_id) is False:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(where / f"{replica_id}.lock")

    def database_time(self) -> float:
        """The database server's clock (Unix seconds): the time-sync health check compares it with
        the service clock."""
        with self.read() as t:
            return t.database_time()

    @contextlib.contextmanager
    def read(self) -> Iterator[Tx]:
        readers = self._readers
        # A read inside this thread's read gets a connection of its own (the pool's).
        own = readers.get() if readers is not None and not readers.reading() else None
        try:
            if own is None:
                with self._read_engine.begin() as conn:
                    yield Tx(conn, self.clock)
            else:
                assert readers is not None
                driver: Any = own.connection.driver_connection
                if own.in_transaction() or driver.in_transaction:
                    # Left open by a read that was interrupted (no read of this thread is under
                    # way): its snapshot is stale. A new connection, not that one.
                    readers.drop(own)
                    own = readers.get()
                    driver = own.connection.driver_connection
                readers.set_reading(True)
                try:
                    with driver_read(own, driver):
                        yield Tx(own, self.clock)
                finally:
                    readers.set_reading(False)
        except (DBAPIError, SQLAlchemyError) as exc:
            if own is not None and self._readers is not None:
                self._readers.drop(own)
            self.errors += 1
            log.error("database read failed: %s", type(exc).__name__)
            raise Unavailable("the database is unavailable") from exc

    def close(self) -> None:
        if self._readers is not None:
            self._readers.close()
        if isinstance(self._write_lock, WriterLock):
            self._write_lock.close()
        self.engine.dispose()
        self.release_replica_lock(remove=False)  # the file stays: whoever looks sees it died


class WriteTx:
    """An open write transaction (SQLite: the process's write lock and BEGIN IMMEDIATE). Errors
    are mapped as in ``Store.tx()``: an integrity violation in a savepoint is ``AlreadyExists``
    for that savepoint alone; any other database failure is ``AuditUnavailable``."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._stack = contextlib.ExitStack()
        try:
            self._stack.enter_context(store._write_lock)
            self._conn = self._stack.enter_context(store._write_engine.connect())
            self._trans = self._conn.begin()
        except (DBAPIError, SQLAlchemyError) as exc:
            self._stack.close()
            raise store._write_failed(exc) from exc
        except BaseException:
            self._stack.close()
            raise
        self.tx = Tx(self._conn, store.clock)
        self._savepoints = 0
        dbapi: Any = self._conn.dialect.dbapi  # loaded: the connection is open
        # The driver's own exceptions too: the hot statements run on its cursor (``fast.py``).
        self._integrity: tuple[type[BaseException], ...] = (IntegrityError, dbapi.IntegrityError)
        self._db_error: tuple[type[BaseException], ...] = (DBAPIError, SQLAlchemyError, dbapi.Error)
        self._doomed: BaseException | None = None  # why this transaction can only be rolled back

    @contextlib.contextmanager
    def savepoint(self) -> Iterator[Tx]:
        """The body's changes, undone alone if it raises. SAVEPOINT, RELEASE and ROLLBACK TO go
        straight to the driver (SQLAlchemy's nested transaction cost ten times the statements, on
        every group-committed caller); SQLAlchemy's own transaction is the enclosing one.

        Whenever the transaction's state is in doubt (a savepoint that could not be taken, undone
        or released, an undo interrupted, or SQLite having rolled the whole transaction back by
        itself: disk full, I/O error), the transaction is *doomed*: every later savepoint and the
        commit refuse with ``AuditUnavailable`` and it is rolled back. Otherwise the group commit
        would go on and commit the other callers' audit records over changes that are gone (or a
        failed caller's changes without its records)."""
        self._usable()
        self._savepoints += 1
        name = f"rsign_sp_{self._savepoints}"
        try:
            driver_exec(self._conn, f"SAVEPOINT {name}")
        except BaseException as exc:
            raise self._doom(exc) from exc
        try:
            yield self.tx
        except BaseException as exc:
            try:
                driver_exec(self._conn, f"ROLLBACK TO SAVEPOINT {name}")
                driver_exec(self._conn, f"RELEASE SAVEPOINT {name}")
            except BaseException as undo:
                raise self._doom(undo) from exc
            self._usable()
            if isinstance(exc, self._integrity):
                raise AlreadyExists("the object already exists") from exc
            if isinstance(exc, self._db_error):
                raise self._store._write_failed(exc) from exc
            raise
        try:
            driver_exec(self._conn, f"RELEASE SAVEPOINT {name}")
        except BaseException as exc:
            raise self._doom(exc) from exc
        self._usable()

    def _doom(self, exc: BaseException) -> BaseException:
        """Mark the transaction as lost; what to raise: the store's fail-closed error for a
        database failure, the exception itself otherwise (an interrupt)."""
        if self._doomed is None:
            self._doomed = exc
        return self._store._write_failed(exc) if isinstance(exc, self._db_error) else exc

    def _usable(self) -> None:
        """Refuse to go on in a doomed transaction, or one the database ended by itself (SQLite
        rolls back the whole transaction on some errors; the connection is then in autocommit
        mode, where each later statement would commit at once)."""
        if self._doomed is None and not getattr(self._conn.connection.driver_connection, "in_transaction", True):
            self._doomed = RuntimeError("the database ended the transaction")
        if self._doomed is not None:
            raise self._store._write_failed(self._doomed)

    def commit(self) -> None:
        try:
            self._usable()
        except AuditUnavailable:
            with contextlib.suppress(BaseException):
                self.rollback()
            raise
        try:
            self._trans.commit()
        except (DBAPIError, SQLAlchemyError) as exc:
            raise self._store._write_failed(exc) from exc
        finally:
            self._stack.close()
        self._store._set_health(True)

    def rollback(self) -> None:
        try:
            self._trans.rollback()
        except (DBAPIError, SQLAlchemyError) as exc:
            raise self._store._write_failed(exc) from exc
        finally:
            self._stack.close()

