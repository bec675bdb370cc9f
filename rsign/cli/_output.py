"""How results are shown to a person: user and credential lines, audit tables, QR codes, progress."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TaskID, TextColumn, TimeElapsedColumn

from rsign.admin.ports import MoveResult
from rsign.cli._common import console
from rsign.domain.records import CredentialView, UserView


def print_enrolment(otpauth_uri: str) -> None:
    """The authenticator enrolment, shown once: a terminal QR code and the otpauth:// URI."""
    import segno

    segno.make(otpauth_uri, error="m").terminal(compact=True)
    click.echo(otpauth_uri)


def print_user(u: UserView) -> None:
    click.echo(f"{u.user_id}\t{u.name}\t{u.agency}\t{u.role}\t{u.status}" + ("\tLOCKED" if u.locked else ""))


def print_move(res: MoveResult) -> None:
    print_user(res.user)
    click.echo(f"revoked: {', '.join(res.revoked) or 'none'}")


def print_cred(c: CredentialView) -> None:
    from datetime import UTC, datetime

    exp = datetime.fromtimestamp(c.not_after, UTC).date().isoformat() if c.not_after else "-"
    who = c.holder_user_id or f"seal of {c.agency}"
    click.echo(f"{c.credential_id}\t{c.key_algorithm}\tv{c.key_version}\t{c.status}\t{who}\t{c.agency}\texpires {exp}")


def print_events(rows: list[dict[str, Any]], title: str) -> None:
    from rich.table import Table

    table = Table(title=title)
    for col in ("seq", "time (UTC)", "actor", "action", "result", "credential", "digest", "reason", "client"):
        table.add_column(col, overflow="fold")
    for r in rows:
        table.add_row(
            str(r["seq"]),
            r["ts"][:19].replace("T", " "),
            r["actor"],
            r["action"],
            "[green]ok[/]" if r["result"] == "success" else "[red]failure[/]",
            r["credential_id"],
            (r["digest"][:16] + "…") if r["digest"] else "",
            r["reason"],
            r["client"],
        )
    Console().print(table)


def progress_bar(label: str) -> tuple[Progress, Callable[[int, int], None]]:
    """One bar whose total is learnt from the first update."""
    prog = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
    task = prog.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        prog.update(task, completed=done, total=total)

    return prog, update


def stage_bars(
    describe: Callable[[str], str], key: Callable[[str, int], str] = lambda stage, total: stage
) -> tuple[Progress, Callable[[str, int, int], None]]:
    """One bar per stage (``key`` names a bar; a new key starts a new one), added on first report."""
    prog = Progress(
        TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
    )
    tasks: dict[str, TaskID] = {}

    def update(stage: str, done: int, total: int) -> None:
        k = key(stage, total)
        if k not in tasks:
            tasks[k] = prog.add_task(describe(stage), total=total)
        prog.update(tasks[k], completed=done)

    return prog, update
