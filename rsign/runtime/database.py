"""The database's schema revision, for ``rsign db``: where it stands, and migrating it to head.

A migration is an operator's act on the audited system, so it is recorded: once the schema is at
head, a ``db.upgrade`` record (from which revision to which) is appended through the journal like
any other change. The record follows the migration's own commit (the journal cannot run on a
schema it does not know yet); if the HSM is down at that moment the migration stands and the
command says the record is missing.
"""

from __future__ import annotations

from rsign.domain.events import Action, event
from rsign.domain.settings import Settings
from rsign.runtime.app import build_app
from rsign.store import migrate
from rsign.store.engine import make_engine
from rsign.store.migrate import SchemaState


def _where(url: str) -> str:
    return url.split("@")[-1]  # never the credentials in the URL


def schema_state(url: str) -> SchemaState:
    engine = make_engine(url)
    try:
        return migrate.inspect_database(engine)
    finally:
        engine.dispose()


def upgrade(settings: Settings) -> tuple[SchemaState, SchemaState]:
    """Migrate the settings' database to head and record it; returns the states before and after."""
    engine = make_engine(settings.database_url, settings.database_busy_timeout_seconds)
    try:
        before, after = migrate.upgrade(engine, _where(settings.database_url))
    finally:
        engine.dispose()
    if before.revision != after.revision:
        app = build_app(settings, pool=False)
        try:
            with app.journal.tx() as t:
                t.append(
                    event(
                        Action.DB_UPGRADE,
                        details={"from": before.describe(), "to": after.revision or ""},
                    )
                )
        finally:
            app.close()
    return before, after
