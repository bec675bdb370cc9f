"""Alembic environment: runs on the connection ``rsign.store.migrate`` hands in (already inside its
transaction and lock), or, for a developer's ``alembic -x url=...`` (autogenerate), on a fresh one."""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from rsign.store.engine import make_engine
from rsign.store.models import Base


def _run(connection: Connection) -> None:
    # render_as_batch: SQLite alters a table by copying it; autogenerate writes scripts that do so.
    context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
    with context.begin_transaction():
        context.run_migrations()


_conn = context.config.attributes.get("connection")
if _conn is not None:
    _run(_conn)
else:
    _url = context.get_x_argument(as_dictionary=True).get("url") or context.config.get_main_option("sqlalchemy.url")
    if not _url:
        raise SystemExit("give the database: alembic -x url=sqlite:///path/rsign.db ...")
    with make_engine(_url).begin() as _c:
        _run(_c)
