"""Where an administration command acts: the local state directory, or a running server.

The remote-connection options (--server, --as) are defined here only, so that connection options
(e.g. TLS) are added in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from rsign.admin.ports import AdminOps
from rsign.cli._common import F, local_app
from rsign.domain.errors import InvalidRequest

server_options = [
    click.option(
        "--server",
        default=None,
        metavar="HOST:PORT",
        help="Act through a running server's AdminService instead of the local state directory.",
    ),
    click.option(
        "--as",
        "as_user",
        default=None,
        metavar="USER_ID",
        help="With --server: your admin user id (PIN and one-time code are asked for).",
    ),
]


def with_server_options(fn: F) -> F:
    for opt in reversed(server_options):
        fn = opt(fn)
    return fn


def remember_server(ctx: click.Context, server: str | None, as_user: str | None) -> None:
    """Keep a group's --server/--as for its subcommands (read back by ``admin_target``)."""
    ctx.obj = {"server": server, "as": as_user}


def remote_requested() -> bool:
    obj = click.get_current_context().find_object(dict) or {}
    return bool(obj.get("server"))


@contextmanager
def admin_target(state_dir: Path) -> Iterator[AdminOps]:
    """The administration operations to use: the local state directory's AdminService, or a
    server's after an interactive login (PIN hidden, never on the command line; a fresh one-time
    code). Commands pass ``LOCAL_OPERATOR``, the operator at this terminal: the local AdminService
    authorizes it; a server is not told it, and acts for the --as user whose session this is."""
    obj = click.get_current_context().find_object(dict) or {}
    if not obj.get("server"):
        with local_app(state_dir) as app:
            yield app.admin
        return
    if not obj.get("as"):
        raise InvalidRequest("--server needs --as USER_ID (an admin, key officer or agency admin)")
    from rsign.api.admin_client import RemoteAdmin
    from rsign.api.client import RsignClient

    client = RsignClient(obj["server"])
    try:
        pin = click.prompt("PIN", hide_input=True, err=True)
        otp = click.prompt("one-time code", err=True)
        client.login(obj["as"], pin, otp)
        yield RemoteAdmin(client)
        client.logout()
    finally:
        client.close()
