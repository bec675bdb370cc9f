"""Schema migrations (Alembic): where a database stands, and bringing it to this rsign's head.

Three kinds of database meet rsign:

* empty (no table at all): a new deployment; ``upgrade`` builds the schema at head. ``Store``
  does so by itself on first use, since there is nothing in it to lose.
* released before migrations existed (rsign 0.1: tables made by ``create_all`` and
  ``rsign_meta.schema_version = "1"``, no ``alembic_version``): exactly the baseline revision's
  schema, so ``upgrade`` stamps it at the baseline and migrates on from there.
* versioned: ``alembic_version`` names its revision.

A non-empty database that is not at head is never migrated behind the operator's back: ``Store``
refuses it, naming ``rsign db upgrade`` (back up first; a migration may rewrite tables).

``upgrade`` runs in one transaction holding the database's write lock (SQLite: BEGIN IMMEDIATE;
PostgreSQL: an advisory lock, and DDL is transactional there), so two processes opening a new
database at once do not both build it, and a failed migration leaves the database as it was.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Connection, Engine, inspect, select, text
from sqlalchemy.exc import SQLAlchemyError

from rsign.domain.errors import ConfigurationError
from rsign.store._core import META

MIGRATIONS = Path(__file__).with_name("migrations")
# The revision whose schema rsign 0.1 created with ``create_all`` (see the module docstring).
BASELINE = "0001_baseline"
LEGACY_SCHEMA_VERSION = "1"
# Any constant: PostgreSQL advisory locks are named by a 64-bit number.
_PG_LOCK = 0x7273_6967_6E5F_6462  # "rsign_db"


@dataclass(frozen=True)
class SchemaState:
    """Where a database stands. ``revision`` is None for an empty or a pre-migration database."""

    empty: bool
    legacy: bool  # rsign 0.1's create_all schema, not yet stamped
    revision: str | None
    head: str

    @property
    def at_head(self) -> bool:
        return self.revision == self.head

    @property
    def known(self) -> bool:
        """Is the revision one of this rsign's (else a newer rsign migrated the database)?"""
        return self.revision is None or self.revision in _revisions()

    def describe(self) -> str:
        if self.empty:
            return "empty (no rsign schema yet)"
        if self.legacy:
            return f"rsign 0.1 schema (version {LEGACY_SCHEMA_VERSION}, before migrations)"
        if self.revision is None:
            return "not an rsign database"
        if self.at_head:
            return f"{self.revision} (head)"
        if not self.known:
            return f"{self.revision} (unknown to this rsign: migrated by a newer one)"
        return f"{self.revision} (behind head {self.head})"


def alembic_config(connection: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def _scripts() -> ScriptDirectory:
    return ScriptDirectory.from_config(alembic_config())


@functools.cache  # the scripts ship with the package: read them once per process
def head() -> str:
    h = _scripts().get_current_head()
    assert h is not None  # the package ships at least the baseline
    return h


@functools.cache
def _revisions() -> frozenset[str]:
    return frozenset(s.revision for s in _scripts().walk_revisions())


def state_of(conn: Connection) -> SchemaState:
    tables = set(inspect(conn).get_table_names())
    h = head()
    if not tables:
        return SchemaState(empty=True, legacy=False, revision=None, head=h)
    if "alembic_version" in tables:
        rev = MigrationContext.configure(conn).get_current_revision()
        return SchemaState(empty=False, legacy=False, revision=rev, head=h)
    legacy = False
    if "rsign_meta" in tables:
        found = conn.execute(select(META.c.value).where(META.c.key == "schema_version")).scalar()
        legacy = found == LEGACY_SCHEMA_VERSION
    return SchemaState(empty=False, legacy=legacy, revision=None, head=h)


def inspect_database(engine: Engine) -> SchemaState:
    with engine.connect() as conn:
        return state_of(conn)


def refusal(where: str, state: SchemaState) -> ConfigurationError:
    """The one-line message for a database this rsign will not run on."""
    if state.revision is not None and not state.known:
        return ConfigurationError(
            f"the database at {where} is at schema revision {state.revision}, which this rsign ({state.head}) does"
            " not know: it was migrated by a newer rsign; run that version"
        )
    if not state.legacy and state.revision is None:
        return ConfigurationError(
            f"the database at {where} has tables but no rsign schema version: not an rsign database"
        )
    return ConfigurationError(
        f"the database at {where} has schema {state.describe()}; this rsign needs {state.head}:"
        " back it up, then run `rsign db upgrade`"
    )


def upgrade(engine: Engine, where: str, target: str = "head") -> tuple[SchemaState, SchemaState]:
    """Migrate to ``target`` in one locked transaction; returns the states before and after."""
    # The store's write engine: on SQLite its transactions begin with BEGIN IMMEDIATE.
    with engine.execution_options(rsign_write=True).connect() as conn, conn.begin():
        if conn.dialect.name == "postgresql":
            conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _PG_LOCK})
        before = state_of(conn)
        if not before.empty and not before.legacy and before.revision is None:
            raise refusal(where, before)
        if before.revision is not None and not before.known:
            raise refusal(where, before)
        cfg = alembic_config(conn)
        try:
            if before.legacy:
                command.stamp(cfg, BASELINE)
            command.upgrade(cfg, target)
        except SQLAlchemyError as exc:
            # Rolled back with the transaction: the database is as it was.
            first = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
            raise ConfigurationError(
                f"migrating the database at {where} failed, nothing was changed: {type(exc).__name__}: {first}"
            ) from exc
        after = state_of(conn)
    return before, after
