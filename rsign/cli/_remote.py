"""Where an administration command acts: the local state directory, or a running server.

The remote-connection options (--server, --as, and TLS: --ca, --cert, --key) are defined here
only, so that connection options are added in one place.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
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


def _keep_server(ctx: click.Context, param: click.Parameter, value: str | None) -> None:
    # In the shared context meta, like the TLS options: given on the group (``rsign users
    # --server H suspend U``) or after the subcommand (``rsign users suspend U --server H``).
    if value is not None:
        ctx.meta[f"rsign.remote.{param.name}"] = value


def _server_options() -> list[Callable[[F], F]]:
    return [
        click.option(
            "--server",
            default=None,
            metavar="HOST:PORT",
            expose_value=False,
            callback=_keep_server,
            help="Act through a running server's AdminService instead of the local state directory.",
        ),
        click.option(
            "--as",
            "as_user",
            default=None,
            metavar="USER_ID",
            expose_value=False,
            callback=_keep_server,
            help="With --server: your admin user id (PIN and one-time code are asked for).",
        ),
        *tls_client_options,
    ]


def with_server_options(fn: F) -> F:
    for opt in reversed(_server_options()):
        fn = opt(fn)
    return fn


def server_options_on_every_command(group: click.Group) -> None:
    """Accept --server/--as (and --ca/--cert/--key) after the subcommand too, where a person types
    them: every subcommand of ``group`` gets the same options as the group."""
    for command in group.commands.values():
        with_server_options(command)


def _remote() -> tuple[str, str]:
    meta = click.get_current_context().meta
    return meta.get("rsign.remote.server", ""), meta.get("rsign.remote.as_user", "")


def remote_requested() -> bool:
    return bool(_remote()[0])


@contextmanager
def admin_target(state_dir: Path, *, create: bool = False) -> Iterator[AdminOps]:
    """The administration operations to use: the local state directory's AdminService, or a
    server's after an interactive login (PIN hidden, never on the command line; a fresh one-time
    code). Commands pass ``LOCAL_OPERATOR``, the operator at this terminal: the local AdminService
    authorizes it; a server is not told it, and acts for the --as user whose session this is.
    ``create``: the command may initialise a new local state directory (enrolment)."""
    server, as_user = _remote()
    if not server:
        with local_app(state_dir, create=create, all_or_nothing=create) as app:
            yield app.admin
        return
    if not as_user:
        raise InvalidRequest("--server needs --as USER_ID (an admin, key officer or agency admin)")
    from rsign.api.admin_client import RemoteAdmin
    from rsign.client.raw import RsignClient

    tls = tls_options()
    client = RsignClient(server, tls["ca_file"], tls["cert_file"], tls["key_file"])
    try:
        pin = click.prompt("PIN", hide_input=True, err=True)
        otp = click.prompt("one-time code", err=True)
        client.login(as_user, pin, otp)
        yield RemoteAdmin(client)
        client.logout()
    finally:
        client.close()
