"""``rsign users``: enrol and manage users, locally or through a server (--server --as)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from rsign.cli._common import friendly_errors, state_dir_option
from rsign.cli._output import print_enrolment, print_move, print_user
from rsign.cli._remote import admin_target, server_options_on_every_command, with_server_options
from rsign.domain.errors import InvalidRequest
from rsign.domain.principal import LOCAL_OPERATOR, Role, Scope, UserStatus, user_id_problem


@click.group()
@with_server_options
def users() -> None:
    """Enrol and manage users (locally, or through a server with --server --as)."""


@users.command("add")
@click.argument("user_id")
@click.option("--name", required=True, help="Full name (UTF-8, e.g. 'Lò Văn Tuấn').")
@click.option("--agency", default="", help="Agency the user belongs to.")
@click.option(
    "--role",
    default="signer",
    show_default=True,
    type=click.Choice([r.value for r in Role]),
)
@click.option(
    "--scope",
    default="agency",
    show_default=True,
    type=click.Choice([s.value for s in Scope]),
    help="For auditors: their own agency's records, or the whole province.",
)
@click.option(
    "--pin-stdin", is_flag=True, required=True, help="Read the PIN from standard input (never from the command line)."
)
@state_dir_option
@friendly_errors
def users_add(user_id: str, name: str, agency: str, role: str, scope: str, pin_stdin: bool, state_dir: Path) -> None:
    """Enrol USER_ID; prints the otpauth:// URI and a QR code for the authenticator app."""
    pin = sys.stdin.readline().rstrip("\r\n")
    if problem := user_id_problem(user_id):
        # Checked before the state directory is opened (or created): a refused id leaves nothing.
        raise InvalidRequest(problem)
    with admin_target(state_dir, create=True) as admin:
        enr = admin.enrol(LOCAL_OPERATOR, user_id, name, pin, agency, role, scope)
    click.echo(f"enrolled {enr.user_id}")
    click.echo("Scan this with the authenticator app (shown once; rsign keeps the seed only encrypted):")
    print_enrolment(enr.otpauth_uri)


@users.command("unlock")
@click.argument("user_id")
@state_dir_option
@friendly_errors
def users_unlock(user_id: str, state_dir: Path) -> None:
    """Unlock USER_ID after too many failed attempts."""
    with admin_target(state_dir) as admin:
        admin.unlock(LOCAL_OPERATOR, user_id)
    click.echo(f"unlocked {user_id}")


@users.command("suspend")
@click.argument("user_id")
@click.option("--reason", default="", help="Why (recorded in the audit log).")
@state_dir_option
@friendly_errors
def users_suspend(user_id: str, reason: str, state_dir: Path) -> None:
    """Suspend USER_ID: no login, no signing; open sessions end."""
    with admin_target(state_dir) as admin:
        print_user(admin.suspend(LOCAL_OPERATOR, user_id, reason))


@users.command("reactivate")
@click.argument("user_id")
@state_dir_option
@friendly_errors
def users_reactivate(user_id: str, state_dir: Path) -> None:
    """Lift a suspension."""
    with admin_target(state_dir) as admin:
        print_user(admin.reactivate(LOCAL_OPERATOR, user_id))


@users.command("reset-totp")
@click.argument("user_id")
@state_dir_option
@friendly_errors
def users_reset_totp(user_id: str, state_dir: Path) -> None:
    """New authenticator for USER_ID (lost phone): old seed, sessions and SADs stop working."""
    with admin_target(state_dir) as admin:
        enr = admin.reset_totp(LOCAL_OPERATOR, user_id)
    print_enrolment(enr.otpauth_uri)


@users.command("move")
@click.argument("user_id")
@click.option("--to", "agency", required=True, help="The agency the user moves to.")
@state_dir_option
@friendly_errors
def users_move(user_id: str, agency: str, state_dir: Path) -> None:
    """Job change: move USER_ID to another agency; their credentials are revoked (Decree 68)."""
    with admin_target(state_dir) as admin:
        res = admin.move(LOCAL_OPERATOR, user_id, agency)
    print_move(res)


@users.command("retire")
@click.argument("user_id")
@state_dir_option
@friendly_errors
def users_retire(user_id: str, state_dir: Path) -> None:
    """Retire USER_ID: their credentials are revoked, sessions end."""
    with admin_target(state_dir) as admin:
        res = admin.retire(LOCAL_OPERATOR, user_id)
    print_move(res)


@users.command("search")
@click.option("--agency", default="")
@click.option("--name", default="", help="Diacritic-insensitive: 'Lo Van Tuan' finds 'Lò Văn Tuấn'.")
@click.option("--status", default="", type=click.Choice(["", *(s.value for s in UserStatus)]))
@click.option("--limit", default=100, show_default=True)
@state_dir_option
@friendly_errors
def users_search(agency: str, name: str, status: str, limit: int, state_dir: Path) -> None:
    """Find users by agency, name and status."""
    with admin_target(state_dir) as admin:
        for u in admin.search_users(LOCAL_OPERATOR, agency, name, status, limit):
            print_user(u)


server_options_on_every_command(users)
