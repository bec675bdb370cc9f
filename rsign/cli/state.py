"""``rsign init``, ``rsign backup`` and ``rsign restore``: a state directory's creation and copies."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rsign.cli._common import friendly_errors, local_app, state_dir_option
from rsign.dev.embedded import EMBEDDED
from rsign.domain.principal import LOCAL_OPERATOR
from rsign.runtime.config import load_settings


@click.command()
@state_dir_option
@friendly_errors
def init(state_dir: Path) -> None:
    """Create a state directory (database, audit keys; without a configured PKCS#11 module, the
    embedded SoftHSMv2 token and development CA). Idempotent: an existing one is left as it is.
    Commands other than serve, demo, provision and users add refuse a directory not set up so."""
    with local_app(state_dir, create=True) as app:
        click.echo(f"rsign state directory ready: {app.settings.state_dir}")


@click.command()
@click.argument("dest", type=click.Path(file_okay=True, path_type=Path))
@state_dir_option
@friendly_errors
def backup(dest: Path, state_dir: Path) -> None:
    """Copy the state directory to the new directory DEST: the SQLite database (online backup) and
    the embedded token, consistent with each other, while servers keep running. DEST is itself a
    state directory; `rsign restore DEST --state-dir NEW` puts it back."""
    from rsign.runtime.backup import backup as run_backup

    # Settings only: the backup copies files and the database; it needs no HSM session.
    rep = run_backup(load_settings(state_dir, embedded=EMBEDDED, create=False), dest)
    token = f"{rep.token_files} token files" if rep.token_files else "no token (a real HSM: use its vendor's backup)"
    click.echo(f"backup written to {rep.dest}: {rep.audit_records} audit records, {token}")


@click.command()
@click.argument("src", type=click.Path(exists=True, file_okay=False, path_type=Path))
@state_dir_option
@friendly_errors
def restore(src: Path, state_dir: Path) -> None:
    """Restore the backup SRC into the new state directory --state-dir (never over an existing
    one), then verify its audit log: exit 0 when intact, 1 otherwise."""
    from rsign.runtime.backup import restore as run_restore

    target = run_restore(src, state_dir)
    with local_app(target) as app:
        report = app.audit.verify_log(LOCAL_OPERATOR)
    if not report.ok:
        click.echo(f"restored into {target}, but its audit log is BROKEN at record {report.bad_seq}: {report.problem}",
                   err=True)  # fmt: skip
        sys.exit(1)
    click.echo(f"restored into {target}; audit log intact: {report.records} records")
