"""Command groups whose commands are imported when they run: the server's commands need the
``server`` extra, and ``rsign client ...`` must work in a client-only install without it."""

from __future__ import annotations

import importlib
from typing import Any

import click

SERVER_MISSING = "this command needs the server's packages: pip install 'rsign[server]'"


def load(name: str, spec: str) -> click.Command:
    """The command at ``"module:attribute"``; when a server dependency is missing, a stand-in that
    says so (listed in --help, refusing to run) instead of a traceback."""
    module, _, attr = spec.partition(":")
    try:
        command = getattr(importlib.import_module(module), attr)
    except ModuleNotFoundError as e:
        if (e.name or "").startswith("rsign"):
            raise
        message = f"{SERVER_MISSING} (missing: {e.name})"

        def refuse() -> None:
            raise click.ClickException(message)

        return click.Command(name, callback=refuse, help=message, short_help="(needs the server extra)")
    if not isinstance(command, click.Command):
        raise TypeError(f"{spec} is not a click command")
    return command


class LazyGroup(click.Group):
    """A group with, besides its own commands, ``lazy``: command name -> "module:attribute"."""

    def __init__(self, *args: Any, lazy: dict[str, str] | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.lazy = dict(lazy or {})

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self.lazy])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.lazy:
            return load(cmd_name, self.lazy[cmd_name])
        return super().get_command(ctx, cmd_name)
