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
    """The audit table, readable at 80 columns: no vertical rules; the sequence number, time,
    action and result never fold; the free-text columns share what is left. Below 110 columns the
    digest and client columns are left out (the title says so; `audit export` has everything)."""
    from rich import box
    from rich.table import Table

    out = Console()
    wide = out.width >= 110
    table = Table(title=title, box=box.SIMPLE_HEAD, pad_edge=False, padding=0)
    if not wide:
        table.caption = "digest and client columns: on a terminal of 110 columns or more"
    table.add_column("seq", no_wrap=True, justify="right")
    table.add_column("time (UTC)", no_wrap=True, min_width=19)
    table.add_column("actor", overflow="fold", ratio=2, min_width=8)
    table.add_column("action", no_wrap=True)
    table.add_column("result", no_wrap=True)
    table.add_column("credential", overflow="fold", ratio=1, min_width=10)
    if wide:
        table.add_column("digest", no_wrap=True)
    table.add_column("reason", overflow="fold", ratio=3)
    if wide:
        table.add_column("client", overflow="fold", ratio=1)
    for r in rows:
        cells = [
            str(r["seq"]),
            r["ts"][:19].replace("T", " "),
            r["actor"],
            r["action"],
            "[green]ok[/]" if r["result"] == "success" else "[red]failed[/]",
            r["credential_id"],
            *([(r["digest"][:12] + "…") if r["digest"] else ""] if wide else []),
            r["reason"],
            *([r["client"]] if wide else []),
        ]
        table.add_row(*cells)
    out.print(table)


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
