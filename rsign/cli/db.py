"""``rsign db``: the database schema's revision, and migrating it (Alembic)."""

from __future__ import annotations

from pathlib import Path

import click

from rsign.cli._common import console, friendly_errors, local_context, state_dir_option
from rsign.dev.embedded import EMBEDDED
from rsign.domain.errors import ConfigurationError
from rsign.runtime import database
from rsign.runtime.config import database_url, load_settings


@click.group()
def db() -> None:
    """The database schema: its revision, and migrating it to this rsign's."""


def _require_database(state_dir: Path) -> str:
    url = database_url(state_dir)
    if url.startswith("sqlite:///") and not Path(url.removeprefix("sqlite:///")).exists():
        raise ConfigurationError(f"no rsign database at {url.removeprefix('sqlite:///')}")
    return url


@db.command("current")
@state_dir_option
@friendly_errors
def db_current(state_dir: Path) -> None:
    """Print the database's schema revision and this rsign's (head)."""
    state = database.schema_state(_require_database(state_dir))
    click.echo(f"database: {state.describe()}")
    click.echo(f"this rsign: {state.head}")
    if not state.at_head:
        raise SystemExit(1)


@db.command("upgrade")
@state_dir_option
@friendly_errors
def db_upgrade(state_dir: Path) -> None:
    """Migrate the database to this rsign's schema (back it up first). Safe to run again."""
    _require_database(state_dir)
    settings = load_settings(state_dir, embedded=EMBEDDED)
    with local_context():
        before, after = database.upgrade(settings)
    if before.revision == after.revision:
        console.print(f"database already at {after.describe()}: nothing to do", soft_wrap=True)
    else:
        console.print(f"database migrated: {before.describe()} -> {after.describe()}", soft_wrap=True)
