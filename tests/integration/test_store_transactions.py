"""The store's transaction plumbing on a real SQLite file (rsign/store/engine.py): savepoints
issued on the driver, and each thread's kept read connection. What can go wrong there is a
savepoint left open or not undone, a driver error that escapes the fail-closed mapping, and a
read connection that outlives its thread, its failure or the store."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path
from typing import Any

import pytest

from rsign.domain.errors import AlreadyExists, AuditUnavailable, Unavailable
from rsign.store import Store, engine
from rsign.store._core import META


def _store(tmp_path: Path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'rsign.db'}")


def _meta(store: Store) -> dict[str, str]:
    with store.read() as t:
        return {r.key: r.value for r in t.c.execute(META.select())}


def _raw_insert(t: object, key: str) -> None:
    """An INSERT on the driver's own cursor, as the hot statements run (rsign/store/fast.py)."""
    cursor = t.c.connection.driver_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("INSERT INTO rsign_meta (key, value) VALUES (?, ?)", (key, "v"))
    cursor.close()


def test_a_failed_savepoint_is_undone_alone_and_driver_errors_are_mapped(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        w = store.begin_write()
        with w.savepoint() as t:
            _raw_insert(t, "kept")
        # A unique-key violation raised by the driver itself (not through SQLAlchemy) is the same
        # AlreadyExists, and only its savepoint is undone: the row inserted before it goes too.
        with pytest.raises(AlreadyExists), w.savepoint() as t:
            _raw_insert(t, "undone")
            _raw_insert(t, "kept")
        # Any other exception: undone, and raised unchanged.
        with pytest.raises(RuntimeError, match="domain refusal"), w.savepoint() as t:
            _raw_insert(t, "also undone")
            raise RuntimeError("domain refusal")
        with w.savepoint() as t:
            _raw_insert(t, "after")
        w.commit()
        meta = _meta(store)
        assert "kept" in meta and "after" in meta
        assert "undone" not in meta and "also undone" not in meta
        # No savepoint was left open: the connection takes a new transaction.
        w = store.begin_write()
        with w.savepoint() as t:
            _raw_insert(t, "next")
        w.commit()
        assert "next" in _meta(store)
    finally:
        store.close()


def test_a_savepoint_the_database_refuses_fails_closed(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        w = store.begin_write()
        # The database goes read-only under the open transaction (as when its disk fails).
        w.tx.c.connection.driver_connection.execute("PRAGMA query_only = ON")  # type: ignore[union-attr]
        with pytest.raises(AuditUnavailable), w.savepoint() as t:
            _raw_insert(t, "refused")
        assert not store.healthy
        w.tx.c.connection.driver_connection.execute("PRAGMA query_only = OFF")  # type: ignore[union-attr]
        w.rollback()
    finally:
        store.close()


def test_each_thread_keeps_one_read_connection_and_reads_see_commits(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        with store.read() as t:
            first = t.c
        with store.read() as t:
            assert t.c is first  # kept, not checked out again
            # A read inside a read gets a connection of its own (the kept one is in a transaction).
            with store.read() as inner:
                assert inner.c is not first
        w = store.begin_write()
        with w.savepoint() as t:
            _raw_insert(t, "committed")
        w.commit()
        assert "committed" in _meta(store)  # a kept connection starts a new snapshot per read

        seen: list[object] = []

        def other() -> None:
            with store.read() as t:
                seen.append(t.c)

        th = threading.Thread(target=other)
        th.start()
        th.join()
        assert seen and seen[0] is not first
        # The ended thread's connection is closed when the next thread opens one.
        th2 = threading.Thread(target=other)
        th2.start()
        th2.join()
        assert seen[0].closed  # type: ignore[attr-defined]
    finally:
        store.close()
    assert first.closed  # closing the store closes every kept connection


def test_a_read_that_fails_gets_a_new_connection_next_time(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        with store.read() as t:
            broken = t.c
        with pytest.raises(Unavailable), store.read() as t:
            t.c.exec_driver_sql("SELECT * FROM no_such_table")
        with store.read() as t:
            assert t.c is not broken
            assert t.get_user("nobody") is None
        assert broken.closed
    finally:
        store.close()



def test_a_driver_error_on_the_hot_statements_fails_closed(tmp_path: Path) -> None:
    """The hot statements run on the driver's cursor (rsign/store/fast.py); its errors must reach
    the store's mapping (UNAVAILABLE to the caller), not escape as an unexpected error (INTERNAL)."""
    store = _store(tmp_path)
    try:
        with store.read() as t:
            assert t.get_user("nobody") is None
        raw = sqlite3.connect(tmp_path / "rsign.db")
        raw.execute("ALTER TABLE users RENAME TO users_gone")  # the table the statement reads
        raw.commit()
        raw.close()
        with pytest.raises(Unavailable), store.read() as t:
            t.get_user("nobody")
        w = store.begin_write()
        with pytest.raises(AuditUnavailable), w.savepoint() as t:
            t.get_user("nobody")
        w.rollback()
    finally:
        store.close()


def test_a_transaction_the_database_rolled_back_by_itself_is_doomed(tmp_path: Path) -> None:
    """SQLite rolls back the whole transaction on some errors (here: the database is full). The
    group commit must then fail as a whole: committing the other callers' audit records over
    changes that are gone, or letting a later caller's statements autocommit, would break the rule
    that a change and its record commit together (found by review; the code before the driver
    savepoints did the same)."""
    store = _store(tmp_path)
    try:
        w = store.begin_write()
        raw = w.tx.c.connection.driver_connection
        with w.savepoint() as t:
            _raw_insert(t, "member 1")
        pages = raw.execute("PRAGMA page_count").fetchone()[0]  # type: ignore[union-attr]
        raw.execute(f"PRAGMA max_page_count = {pages + 1}")  # type: ignore[union-attr]
        with pytest.raises(AuditUnavailable), w.savepoint() as t:
            t.c.exec_driver_sql("INSERT INTO rsign_meta (key, value) VALUES ('member 2', zeroblob(1000000))")
        raw.execute("PRAGMA max_page_count = 1073741823")  # type: ignore[union-attr]
        # Every later caller is refused before it runs anything, and the commit fails closed.
        ran: list[str] = []
        with pytest.raises(AuditUnavailable), w.savepoint() as t:
            ran.append("member 3")
        assert ran == []
        with pytest.raises(AuditUnavailable):
            w.commit()
        meta = _meta(store)
        assert "member 1" not in meta and "member 2" not in meta
        assert not store.healthy
        # The store recovers: the next transaction is a new one.
        w = store.begin_write()
        with w.savepoint() as t:
            _raw_insert(t, "next")
        w.commit()
        assert "next" in _meta(store) and store.healthy
    finally:
        store.close()


def test_an_interrupted_undo_dooms_the_transaction(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = _store(tmp_path)
    try:
        w = store.begin_write()
        with w.savepoint() as t:
            _raw_insert(t, "member 1")
        real = engine.driver_exec

        def interrupted(conn: object, sql: str) -> None:
            if sql.startswith("ROLLBACK TO"):
                raise KeyboardInterrupt
            real(conn, sql)  # type: ignore[arg-type]

        monkeypatch.setattr(engine, "driver_exec", interrupted)
        with pytest.raises(KeyboardInterrupt), w.savepoint() as t:
            _raw_insert(t, "member 2")
            raise RuntimeError("refused")
        monkeypatch.setattr(engine, "driver_exec", real)
        with pytest.raises(AuditUnavailable):
            w.commit()
        assert "member 2" not in _meta(store) and "member 1" not in _meta(store)
    finally:
        store.close()


def test_bulk_inserts_are_atomic_across_their_multi_row_statements(tmp_path: Path) -> None:
    """``insert_values`` writes 256 rows per statement: a duplicate in the third statement undoes
    the caller's savepoint whole (the first two statements' rows too), and nothing else."""
    store = _store(tmp_path)
    try:
        keys = [(bytes([i % 256, i // 256]) * 16, 1) for i in range(700)]
        w = store.begin_write()
        with w.savepoint() as t:
            t.consume_hashes("C-1", 1, 0, keys[:10])  # type: ignore[attr-defined]
        with pytest.raises(AlreadyExists), w.savepoint() as t:
            t.consume_hashes("C-1", 2, 10, [*keys[10:600], keys[5]])  # type: ignore[attr-defined]
        with w.savepoint() as t:
            t.consume_hashes("C-1", 3, 10, keys[10:700])  # type: ignore[attr-defined]
        w.commit()
        with sqlite3.connect(tmp_path / "rsign.db") as c:
            rows = c.execute("SELECT sad_id, count(*) FROM consumed_hashes GROUP BY sad_id ORDER BY sad_id").fetchall()
            positions = [r[0] for r in c.execute("SELECT position FROM consumed_hashes WHERE sad_id = 3 ORDER BY 1")]
        assert rows == [(1, 10), (3, 690)]
        assert positions == list(range(10, 700))
    finally:
        store.close()


def test_savepoint_journals_stay_in_memory(tmp_path: Path) -> None:
    store = _store(tmp_path)
    try:
        w = store.begin_write()
        with w.savepoint() as t:
            assert t.c.exec_driver_sql("PRAGMA temp_store").scalar() == 2  # MEMORY
        w.commit()
        with store.read() as t:
            assert t.c.exec_driver_sql("PRAGMA temp_store").scalar() == 2
    finally:
        store.close()


def test_a_kept_connections_read_is_one_snapshot_and_always_ends(tmp_path: Path) -> None:
    """Reads on a thread's kept connection begin and end on the driver (fast.driver_read): the
    read is still one snapshot, a statement run through SQLAlchemy inside it joins it, and however
    the read ends (fast statements only, a SQLAlchemy statement, an exception) no transaction is
    left open on the connection: a read left open would pin an old snapshot for every later read
    of the thread, and stop SQLite's checkpoints from ever completing."""
    store = _store(tmp_path)

    def commit(key: str) -> None:
        w = store.begin_write()
        with w.savepoint() as t:
            _raw_insert(t, key)
        w.commit()

    try:
        with store.read() as t:
            kept = t.c
            driver: Any = t.c.connection.driver_connection
            assert t.get_user("nobody") is None  # the snapshot is taken at the first read
            commit("during")
            assert "during" not in {r.key for r in t.c.execute(META.select())}  # joined, same snapshot
            assert driver.in_transaction and t.c.in_transaction()
        assert not driver.in_transaction and not kept.in_transaction()
        assert "during" in _meta(store)  # the next read sees the commit
        assert not driver.in_transaction

        with store.read() as t:
            assert t.get_user("nobody") is None  # fast statements only
        assert not driver.in_transaction

        with pytest.raises(KeyError), store.read() as t:
            t.c.execute(META.select()).all()
            raise KeyError("the caller's own error, not the database's")
        assert not driver.in_transaction and not kept.in_transaction()
        with store.read() as t:
            assert t.c is kept  # a caller's error keeps the connection (only database errors drop it)
    finally:
        store.close()


def test_a_read_whose_connection_is_closed_under_it_fails_closed(tmp_path: Path) -> None:
    """The connection closed during a read (the store shutting down under a late read): the read
    ends as the database being unavailable, not as a raw driver error (INTERNAL)."""
    store = _store(tmp_path)
    try:
        with pytest.raises(Unavailable), store.read() as t:
            assert t.get_user("nobody") is None
            t.c.connection.driver_connection.close()  # type: ignore[union-attr]
        with store.read() as t:  # a new kept connection
            assert t.get_user("nobody") is None
    finally:
        store.close()


def test_a_transaction_left_open_on_a_kept_connection_is_not_reused(tmp_path: Path) -> None:
    """A read interrupted between its BEGIN and its end (an asynchronous exception) leaves a
    transaction, and maybe an old snapshot, on the thread's connection: the next read replaces
    that connection instead of routing every later read elsewhere or reading the old snapshot."""
    store = _store(tmp_path)
    try:
        with store.read() as t:
            stale = t.c
            stale_driver: Any = t.c.connection.driver_connection
        stale_driver.execute("BEGIN")
        stale_driver.execute("SELECT count(*) FROM rsign_meta").fetchall()  # the snapshot is taken
        w = store.begin_write()
        with w.savepoint() as t:
            _raw_insert(t, "after the leak")
        w.commit()
        with store.read() as t:
            assert t.c is not stale
            assert "after the leak" in {r.key for r in t.c.execute(META.select())}
            kept = t.c
        with store.read() as t:
            assert t.c is kept  # the new one is kept in turn
        assert stale.closed
    finally:
        store.close()
