"""The unary signing path's statements, run on the driver's cursor.

Every Authorize and SignHash runs about twenty fixed statements (session, user, credential, SAD,
the audit head). Through SQLAlchemy's execution layer each cost about 50 us of Python (execution
context, result processing, events) against 13 us on the sqlite3 cursor, and the server's Python
time per flow is what bounds the unary path (one process, one GIL). So the hot statements are
compiled once per dialect, from the same Core expressions, and run on the DBAPI cursor of the
connection SQLAlchemy already holds: same connection, same transaction, same SQL.

What this gives up, deliberately and only here: SQLAlchemy's type processing. Every statement
below reads and binds only values the drivers map themselves (str, int, float, bytes, None);
booleans are compared as literals in the SQL, and callers convert what they read (``bool()`` for a
flag, ``bytes()`` for a blob), as the views did already. Anything else stays on SQLAlchemy.
"""

from __future__ import annotations

import contextlib
import sqlite3
import threading
from collections import namedtuple
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from itertools import chain
from typing import Any

from sqlalchemy import Connection
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError
from sqlalchemy.sql import ClauseElement


@contextlib.contextmanager
def driver_errors(c: Connection, sql: str) -> Iterator[None]:
    """The driver's exceptions raised as SQLAlchemy would have raised them (``OperationalError``,
    ``IntegrityError``...): the store maps those, and only those, to its fail-closed errors."""
    try:
        yield
    except dbapi_error(c) as exc:
        raise as_sqlalchemy(c, sql, exc) from exc


# The hottest statements catch inline (``except dbapi_error(c)``, evaluated only when something
# was raised) rather than through ``driver_errors``: a generator-based context manager cost five
# Python calls per statement, a third of what the statement itself cost.


def dbapi_error(c: Connection) -> type[Exception]:
    """The driver's base exception class (the connection is open, so its module is loaded)."""
    dbapi: Any = c.dialect.dbapi
    return dbapi.Error  # type: ignore[no-any-return]


def as_sqlalchemy(c: Connection, sql: str, exc: Exception) -> Exception:
    """A driver exception as SQLAlchemy would have raised it (``OperationalError``, ``IntegrityError``...)."""
    return DBAPIError.instance(sql, None, exc, dbapi_error(c))


def driver_exec(conn: Connection, sql: str) -> None:
    """Run a statement without parameters or result (BEGIN, SAVEPOINT...) on the DBAPI connection
    that ``conn`` holds, in its transaction."""
    try:
        cursor = conn.connection.driver_connection.cursor()  # type: ignore[union-attr]
        try:
            cursor.execute(sql)
        finally:
            cursor.close()
    except dbapi_error(conn) as exc:  # inline, not driver_errors: BEGIN and SAVEPOINT run on every call
        raise as_sqlalchemy(conn, sql, exc) from exc


@contextlib.contextmanager
def driver_read(conn: Connection, driver: Any) -> Iterator[None]:
    """A read transaction on one of SQLite's kept read connections (``driver`` is its sqlite3
    connection), begun and ended on the driver. Through SQLAlchemy, beginning and committing cost
    about sixty Python calls per read, more than the read's statements, on seven reads per unary
    flow; the hot statements run on the driver's cursor already (``fast.py``). A statement run
    through SQLAlchemy inside it joins this transaction (``_sqlite_begin``), and SQLAlchemy's then
    ends it."""
    _on_driver(conn, driver, "BEGIN")
    try:
        yield
    except BaseException:
        _end_read(conn, driver, "ROLLBACK")
        raise
    _end_read(conn, driver, "COMMIT")


def _end_read(conn: Connection, driver: Any, sql: str) -> None:
    try:
        if conn.in_transaction():  # SQLAlchemy joined it: its transaction is this one
            if sql == "COMMIT":
                conn.commit()
            else:
                conn.rollback()
        elif driver.in_transaction:  # raises, mapped below, once the connection is closed (shutdown)
            driver.execute(sql)
    except dbapi_error(conn) as exc:
        raise as_sqlalchemy(conn, sql, exc) from exc


def _on_driver(conn: Connection, driver: Any, sql: str) -> None:
    try:
        driver.execute(sql)
    except dbapi_error(conn) as exc:
        raise as_sqlalchemy(conn, sql, exc) from exc


# Rows per multi-row INSERT (``insert_values``), within SQLite's bound-variable limit.
_VALUES_ROWS = 256


def insert_values(c: Connection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Insert ``rows`` on the driver's cursor as multi-row INSERTs (``VALUES (...), (...)``) of
    up to 256 rows, not one statement per row. The sqlite3 module releases the interpreter lock
    around every statement step, and a thread that releases it while others want it waits up to
    the switch interval (5 ms) to get it back: executemany() of a 1,000-row chunk took seconds
    under load, holding the audit head all along. A 256-row statement steps once."""
    if not rows:
        return
    width = len(columns)
    driver: Any = c.connection.driver_connection
    limit = driver.getlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER)
    per = max(1, min(_VALUES_ROWS, limit // width))
    one = f"({', '.join('?' * width)})"
    head = f"INSERT INTO {table} ({', '.join(columns)}) VALUES "
    for i in range(0, len(rows), per):
        part = rows[i : i + per]
        sql = head + ", ".join([one] * len(part))  # the module caches prepared statements by text
        with driver_errors(c, sql):
            cursor = driver.cursor()
            try:
                cursor.execute(sql, list(chain.from_iterable(part)))
            finally:
                cursor.close()


@dataclass(frozen=True)
class _Compiled:
    sql: str
    names: tuple[str, ...]  # bind parameter names, in order (positional paramstyles)
    positional: bool
    defaults: dict[str, Any]  # values the expression carries itself (``HEAD.c.id == 1``)


class FastStatement:
    """A Core statement compiled once per dialect and run on the driver's cursor."""

    def __init__(self, stmt: ClauseElement) -> None:
        self.stmt = stmt
        self._compiled: dict[str, _Compiled] = {}
        self._lock = threading.Lock()
        # A SELECT's columns, or a DML statement's RETURNING ones (none: nothing is read).
        keys = [c.key for c in getattr(stmt, "exported_columns", ())]
        self._row: Any = namedtuple("Row", keys) if keys else None  # type: ignore[misc]

    def _for(self, dialect: Dialect) -> _Compiled:
        found = self._compiled.get(dialect.name)
        if found is not None:
            return found
        with self._lock:
            compiled = self.stmt.compile(dialect=dialect)
            positional = bool(dialect.positional)
            names = tuple(getattr(compiled, "positiontup", None) or ()) if positional else ()
            found = _Compiled(str(compiled), names, positional, dict(compiled.params))
            self._compiled[dialect.name] = found
            return found

    def _cursor(self, c: Connection, params: Mapping[str, Any]) -> Any:
        comp = self._for(c.dialect)
        values = {**comp.defaults, **params}
        args: Any = tuple(map(values.__getitem__, comp.names)) if comp.positional else values
        try:
            cursor = c.connection.driver_connection.cursor()  # type: ignore[union-attr]
            cursor.execute(comp.sql, args)
        except dbapi_error(c) as exc:
            raise as_sqlalchemy(c, comp.sql, exc) from exc
        return cursor

    def _fetched(self, c: Connection, cursor: Any) -> list[Any]:
        try:
            return cursor.fetchall()  # type: ignore[no-any-return]
        except dbapi_error(c) as exc:
            raise as_sqlalchemy(c, self._compiled[c.dialect.name].sql, exc) from exc
        finally:
            cursor.close()

    def rows(self, c: Connection, params: Mapping[str, Any] | None = None) -> list[Any]:
        return list(map(self._row._make, self._fetched(c, self._cursor(c, params or {}))))

    def tuples(self, c: Connection, params: Mapping[str, Any] | None = None) -> list[tuple[Any, ...]]:
        """``rows`` as the driver gives them, in column order (no named rows: for bulk reads)."""
        return self._fetched(c, self._cursor(c, params or {}))

    def first(self, c: Connection, params: Mapping[str, Any] | None = None) -> Any:
        found = self.rows(c, params)
        return found[0] if found else None

    def rowcount(self, c: Connection, params: Mapping[str, Any] | None = None) -> int:
        cursor = self._cursor(c, params or {})
        try:
            return int(cursor.rowcount)
        finally:
            cursor.close()
