"""A consistent copy of a SQLite database while writers are busy: SQLite's online backup API."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from sqlalchemy import make_url

from rsign.domain.errors import ConfigurationError
from rsign.store._core import AUDIT


def sqlite_path(url: str) -> Path | None:
    """The database file of a SQLite URL; None for any other database (PostgreSQL)."""
    u = make_url(url)
    if u.get_backend_name() != "sqlite" or not u.database or u.database == ":memory:":
        return None
    return Path(u.database)


def backup_sqlite(url: str, dest: Path, busy_timeout: float = 30.0) -> int:
    """Copy the database at ``url`` to ``dest`` (a new file); returns the number of audit records
    in the copy. The copy is one snapshot: the backup runs in a single step (``pages=-1``), inside
    one read transaction, so commits made meanwhile (in the WAL) are either wholly in it or not at
    all, and writers are not blocked (WAL readers never block writers)."""
    src_path = sqlite_path(url)
    if src_path is None:
        raise ConfigurationError(
            "rsign backup copies a SQLite database; back up PostgreSQL with its own tools (pg_dump, "
            "or base backups with WAL archiving) and the HSM with its vendor's"
        )
    # Read-only: the backup never writes to the live database (mode=ro needs the URI form).
    src = sqlite3.connect(f"file:{src_path}?mode=ro", uri=True, timeout=busy_timeout)
    try:
        dst = sqlite3.connect(dest)
        try:
            src.backup(dst, pages=-1)
            problem = dst.execute("PRAGMA integrity_check").fetchone()[0]
            if problem != "ok":
                raise ConfigurationError(f"the database copy {dest} failed its integrity check: {problem}")
            return int(dst.execute(f"SELECT count(*) FROM {AUDIT.name}").fetchone()[0])
        finally:
            dst.close()
    finally:
        src.close()
