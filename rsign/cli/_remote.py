"""Where an administration command acts: the local state directory, or a running server.

The remote-connection options (--server, --as, and TLS: --ca, --cert, --key) are defined here
only, so that connection options are added in one place.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from rsign.admin.ports import AdminOps
from rsign.cli._common import F, local_app
from rsign.domain.errors import InvalidRequest


def _keep_tls(ctx: click.Context, param: click.Parameter, value: Path | None) -> None:
    # Kept in the context for ``tls_options`` (read where the channel is made), so that the
    # command groups' signatures do not change with every connection option.
    if value is not None:
        ctx.meta[f"rsign.tls.{param.name}"] = value


_pem_file = click.Path(exists=True, dir_okay=False, path_type=Path)
tls_client_options = [
    click.option(
        "--ca",
        type=_pem_file,
        expose_value=False,
        callback=_keep_tls,
        help="The CA certificate (PEM) that issued the server's TLS certificate: connect over TLS.",
    ),
    click.option(
        "--cert",
        type=_pem_file,
        expose_value=False,
        callback=_keep_tls,
        help="With --ca: your TLS client certificate (PEM), for a server that requires one (mutual TLS).",
    ),
    click.option(
        "--key", type=_pem_file, expose_value=False, callback=_keep_tls, help="With --cert: its private key (PEM)."
    ),
]


def with_tls_client_options(fn: F) -> F:
    for opt in reversed(tls_client_options):
        fn = opt(fn)
    return fn


def tls_options() -> dict[str, Path | None]:
    """--ca, --cert and --key as ``RsignClient`` keyword arguments."""
    meta = click.get_current_context().meta
    ca, cert, key = (meta.get(f"rsign.tls.{name}") for name in ("ca", "cert", "key"))
    if (cert is None) != (key is None):
        raise InvalidRequest("--cert and --key go together")
    if cert is not None and ca is None:
        raise InvalidRequest("--cert needs --ca: a client certificate is only sent over TLS")
    return {"ca_file": ca, "cert_file": cert, "key_file": key}


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
    *tls_client_options,
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

    tls = tls_options()
    client = RsignClient(obj["server"], tls["ca_file"], tls["cert_file"], tls["key_file"])
    try:
        pin = click.prompt("PIN", hide_input=True, err=True)
        otp = click.prompt("one-time code", err=True)
        client.login(obj["as"], pin, otp)
        yield RemoteAdmin(client)
        client.logout()
    finally:
        client.close()
