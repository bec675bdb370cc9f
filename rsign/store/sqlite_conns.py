"""SQLite connection handling for the store (``rsign.store.engine``): the writers' lock shared by
the processes on one database file, and each thread's kept read connection."""

from __future__ import annotations

import contextlib
import fcntl
import os
import threading
import time
from pathlib import Path
from typing import IO

from sqlalchemy import Connection, Engine, make_url
from sqlalchemy.exc import OperationalError


def sqlite_file(url: str) -> bool:
    u = make_url(url)
    memory = not u.database or ":memory:" in u.database or u.query.get("mode") == "memory"
    return u.get_backend_name() == "sqlite" and not memory


def writer_lock_path(url: str) -> Path | None:
    if not sqlite_file(url):
        return None
    db = Path(make_url(url).database or "")
    return db.with_name(db.name + ".writer-lock")


class WriterLock:
    """SQLite's writers queued in order: this process's on a thread lock, other processes' (a
    second ``rsign serve --processes`` process, a CLI command) on an flock of a file beside the
    database. Without it a writer of another process meets SQLite's busy handler, which sleeps
    (up to 100 ms a time) and wrecks latency under load. The flock is polled (at most 2 ms apart)
    up to the busy timeout, then the write fails closed as a locked database would."""

    def __init__(self, path: Path | None, timeout: float) -> None:
        self._thread = threading.Lock()
        self._timeout = timeout
        self._path = path
        self._file: IO[str] | None = None  # opened at the first write: the database exists by then
        self._closed = False

    def __enter__(self) -> None:
        self._thread.acquire()
        try:
            if self._file is None and self._path is not None and not self._closed:
                try:
                    self._file = os.fdopen(os.open(self._path, os.O_RDWR | os.O_CREAT, 0o600), "r+")
                except OSError as exc:
                    raise OperationalError("writer lock", None, exc) from None
            if self._file is not None:
                self._flock(self._file)
        except BaseException:
            self._thread.release()
            raise

    def __exit__(self, *exc: object) -> None:
        if self._file is not None:
            fcntl.flock(self._file, fcntl.LOCK_UN)
        self._thread.release()

    def _flock(self, f: IO[str]) -> None:
        deadline = time.monotonic() + self._timeout
        pause = 0.0002
        while True:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                return
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    raise OperationalError(
                        "writer lock", None, TimeoutError("another process held the database's writer lock")
                    ) from None
            time.sleep(pause)
            pause = min(2 * pause, 0.002)

    def close(self) -> None:
        # Under the thread lock: never under a write in progress (at shutdown one may still end).
        got = self._thread.acquire(timeout=max(self._timeout, 1.0))
        try:
            self._closed = True
            if self._file is not None:
                self._file.close()
                self._file = None
        finally:
            if got:
                self._thread.release()


class ThreadReaders:
    """SQLite: one read connection per thread, kept open. Checking one out of the pool for each
    read (a Connection object, the pool's bookkeeping and events, then the check-in) cost more
    than the read's statements, and a unary flow makes about fifteen reads. A connection whose
    read failed is closed and replaced; those of threads that ended are closed when the next
    thread opens one, and all of them at ``close``."""

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._local = threading.local()
        self._lock = threading.Lock()
        self._open: dict[int, tuple[threading.Thread, Connection]] = {}

    def get(self) -> Connection:
        conn: Connection | None = getattr(self._local, "conn", None)
        if conn is not None and not conn.closed and not conn.invalidated:
            return conn
        conn = self._engine.connect()
        me = threading.current_thread()
        with self._lock:
            ended = [k for k, (t, _) in self._open.items() if not t.is_alive()]
            stale = [self._open.pop(k)[1] for k in ended]
            old = self._open.pop(id(me), None)
            self._open[id(me)] = (me, conn)
        for c in stale + ([old[1]] if old else []):
            with contextlib.suppress(Exception):
                c.close()
        self._local.conn = conn
        return conn

    def reading(self) -> bool:
        """A read on this thread's connection is under way (``Store.read``)."""
        return bool(getattr(self._local, "reading", False))

    def set_reading(self, reading: bool) -> None:
        self._local.reading = reading

    def drop(self, conn: Connection) -> None:
        """After a failed read: the next read on this thread gets a new connection."""
        with self._lock:
            me = id(threading.current_thread())
            if me in self._open and self._open[me][1] is conn:
                del self._open[me]
        self._local.conn = None
        with contextlib.suppress(Exception):
            conn.close()

    def close(self) -> None:
        with self._lock:
            conns = [c for _, c in self._open.values()]
            self._open.clear()
        for c in conns:
            with contextlib.suppress(Exception):
                c.close()
        self._engine.dispose()
