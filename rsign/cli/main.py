"""``rsign``: serve, manage users and keys, verify the audit log, run the demo.

State-changing commands open the state directory directly (initialising it on first use) and work
whether or not a server is running on it: SQLite serialises writers, SoftHSMv2 shares the token.
"""

from __future__ import annotations

import getpass
import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from rsign.domain import context
from rsign.domain.errors import InvalidRequest, RsignError
from rsign.domain.events import EventFilter
from rsign.runtime.app import App, build_app
from rsign.runtime.config import DEFAULT_STATE_DIR, load_settings

F = TypeVar("F", bound=Callable[..., Any])
console = Console(stderr=True)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "son-la"

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get("RSIGN_STATE_DIR", str(DEFAULT_STATE_DIR)),
    show_default="./.rsign or $RSIGN_STATE_DIR",
    help="State directory (database, embedded SoftHSMv2 token, development CA).",
)


def friendly_errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RsignError as exc:
            console.print(f"[red]error:[/red] {exc.message}")
            sys.exit(2)
        except Exception as exc:
            # A status from a remote server (grpc.RpcError: this layer does not import grpc).
            details, code = getattr(exc, "details", None), getattr(exc, "code", None)
            if not (callable(details) and callable(code)):
                raise
            console.print(f"[red]error ({code().name}):[/red] {details()}")
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


@contextmanager
def admin_target(state_dir: Path) -> Iterator[Any]:
    """The AdminService to use: the local state directory's, or a server's after an interactive
    login (PIN hidden, never on the command line; a fresh one-time code)."""
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


@contextmanager
def local_app(state_dir: Path, *, pool: bool = False) -> Iterator[App]:
    settings = load_settings(state_dir)
    app = build_app(settings, pool=pool)
    try:
        with context.request(client="cli", actor=f"cli:{_os_user()}"):
            yield app
    finally:
        app.close()


def iso_bound(text: str) -> str:
    """'2026-11-26' or '2026-11-26T08:00:00' (UTC) -> the audit log's fixed-width ISO form."""
    if not text:
        return ""
    from datetime import UTC, datetime

    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise InvalidRequest(f"not an ISO 8601 time: {text!r}") from None
    if t.tzinfo is None:
        t = t.replace(tzinfo=UTC)
    return t.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())


@click.group()
@click.option("-v", "--verbose", is_flag=True, help="Log at INFO level.")
def main(verbose: bool) -> None:
    """rsign: centralized remote signing with keys kept in a PKCS#11 HSM."""
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


# -- serve --------------------------------------------------------------------------------------


@main.command()
@state_dir_option
@click.option("--listen", default=None, help="HOST:PORT to listen on [default: 127.0.0.1:50051].")
@friendly_errors
def serve(state_dir: Path, listen: str | None) -> None:
    """Run the gRPC service (also serves grpc.health.v1.Health)."""
    from rsign.api.server import serve_forever

    settings = load_settings(state_dir)
    app = build_app(settings, pool=True)
    addr = listen or settings.listen
    try:
        serve_forever(app, addr, on_ready=f"rsign serving on {addr} (state: {settings.state_dir})")
    finally:
        app.close()


# -- users --------------------------------------------------------------------------------------


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


@main.group()
@with_server_options
@click.pass_context
def users(ctx: click.Context, server: str | None, as_user: str | None) -> None:
    """Enrol and manage users (locally, or through a server with --server --as)."""
    ctx.obj = {"server": server, "as": as_user}


@users.command("add")
@click.argument("user_id")
@click.option("--name", required=True, help="Full name (UTF-8, e.g. 'Lò Văn Tuấn').")
@click.option("--agency", default="", help="Agency the user belongs to.")
@click.option(
    "--role",
    default="signer",
    show_default=True,
    type=click.Choice(["signer", "auditor", "agency_admin", "key_officer", "admin"]),
)
@click.option(
    "--scope",
    default="agency",
    show_default=True,
    type=click.Choice(["agency", "province"]),
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
    with admin_target(state_dir) as admin:
        enr = admin.enrol(None, user_id, name, pin, agency, role, scope)
    click.echo(f"enrolled {enr.user_id}")
    click.echo("Scan this with the authenticator app (shown once; rsign keeps the seed only encrypted):")
    _print_enrolment(enr.otpauth_uri)


@users.command("unlock")
@click.argument("user_id")
@state_dir_option
@friendly_errors
def users_unlock(user_id: str, state_dir: Path) -> None:
    """Unlock USER_ID after too many failed attempts."""
    with admin_target(state_dir) as admin:
        admin.unlock(None, user_id)
    click.echo(f"unlocked {user_id}")


def _print_enrolment(otpauth_uri: str) -> None:
    """The authenticator enrolment, shown once: a terminal QR code and the otpauth:// URI."""
    import segno

    segno.make(otpauth_uri, error="m").terminal(compact=True)
    click.echo(otpauth_uri)


def _print_move(res: Any) -> None:
    _print_user(res.user)
    click.echo(f"revoked: {', '.join(res.revoked) or 'none'}")


def _print_user(u: Any) -> None:
    click.echo(f"{u.user_id}\t{u.name}\t{u.agency}\t{u.role}\t{u.status}" + ("\tLOCKED" if u.locked else ""))


@users.command("suspend")
@click.argument("user_id")
@click.option("--reason", default="", help="Why (recorded in the audit log).")
@state_dir_option
@friendly_errors
def users_suspend(user_id: str, reason: str, state_dir: Path) -> None:
    """Suspend USER_ID: no login, no signing; open sessions end."""
    with admin_target(state_dir) as admin:
        _print_user(admin.suspend(None, user_id, reason))


@users.command("reactivate")
@click.argument("user_id")
@state_dir_option
@friendly_errors
def users_reactivate(user_id: str, state_dir: Path) -> None:
    """Lift a suspension."""
    with admin_target(state_dir) as admin:
        _print_user(admin.reactivate(None, user_id))


@users.command("reset-totp")
@click.argument("user_id")
@state_dir_option
@friendly_errors
def users_reset_totp(user_id: str, state_dir: Path) -> None:
    """New authenticator for USER_ID (lost phone): old seed, sessions and SADs stop working."""
    with admin_target(state_dir) as admin:
        enr = admin.reset_totp(None, user_id)
    _print_enrolment(enr.otpauth_uri)


@users.command("move")
@click.argument("user_id")
@click.option("--to", "agency", required=True, help="The agency the user moves to.")
@state_dir_option
@friendly_errors
def users_move(user_id: str, agency: str, state_dir: Path) -> None:
    """Job change: move USER_ID to another agency; their credentials are revoked (Decree 68)."""
    with admin_target(state_dir) as admin:
        res = admin.move(None, user_id, agency)
    _print_move(res)


@users.command("retire")
@click.argument("user_id")
@state_dir_option
@friendly_errors
def users_retire(user_id: str, state_dir: Path) -> None:
    """Retire USER_ID: their credentials are revoked, sessions end."""
    with admin_target(state_dir) as admin:
        res = admin.retire(None, user_id)
    _print_move(res)


@users.command("search")
@click.option("--agency", default="")
@click.option("--name", default="", help="Diacritic-insensitive: 'Lo Van Tuan' finds 'Lò Văn Tuấn'.")
@click.option("--status", default="", type=click.Choice(["", "active", "suspended", "retired"]))
@click.option("--limit", default=100, show_default=True)
@state_dir_option
@friendly_errors
def users_search(agency: str, name: str, status: str, limit: int, state_dir: Path) -> None:
    """Find users by agency, name and status."""
    with admin_target(state_dir) as admin:
        for u in admin.search_users(None, agency, name, status, limit):
            _print_user(u)


# -- keys ---------------------------------------------------------------------------------------


@main.group()
@with_server_options
@click.pass_context
def keys(ctx: click.Context, server: str | None, as_user: str | None) -> None:
    """Generate and manage HSM keys and certificates (locally, or through a server with --server --as)."""
    ctx.obj = {"server": server, "as": as_user}


@keys.command("generate")
@click.argument("credential_id")
@click.option(
    "--algorithm",
    required=True,
    type=click.Choice(["rsa-2048", "rsa-3072", "ec-p256", "ec-p384"], case_sensitive=False),
)
@click.option("--holder", default="", help="User id of the key holder (a personal credential).")
@click.option("--seal-agency", default="", help="Instead of --holder: an organisation seal of this agency.")
@click.option("--seal-user", "seal_users", multiple=True, help="A user allowed to activate the seal (repeatable).")
@click.option("--multisign", type=int, default=None, help="Most hashes one authorization may cover.")
@state_dir_option
@friendly_errors
def keys_generate(
    credential_id: str,
    algorithm: str,
    holder: str,
    seal_agency: str,
    seal_users: tuple[str, ...],
    multisign: int | None,
    state_dir: Path,
) -> None:
    """Generate a key pair inside the HSM and a development certificate for it."""
    with admin_target(state_dir) as admin:
        cred = admin.generate(None, credential_id, algorithm, holder, multisign, seal_agency, seal_users)
    click.echo(
        f"generated {cred.credential_id} ({cred.key_algorithm}, key version {cred.key_version})"
        f" for {cred.holder_user_id or 'the seal of ' + cred.agency}"
    )


@keys.command("destroy")
@click.argument("credential_id")
@state_dir_option
@friendly_errors
def keys_destroy(credential_id: str, state_dir: Path) -> None:
    """Destroy a revoked credential's keys: needs two different key officers, through a server."""
    obj = click.get_current_context().find_object(dict) or {}
    if not obj.get("server"):
        raise InvalidRequest("destroying keys needs two authenticated key officers: use --server HOST:PORT --as USER")
    with admin_target(state_dir) as admin:
        state = admin.destroy(None, credential_id)
    click.echo("destroyed" if state == "destroyed" else "requested: a second, different key officer must confirm")


def _print_cred(c: Any) -> None:
    from datetime import UTC, datetime

    exp = datetime.fromtimestamp(c.not_after, UTC).date().isoformat() if c.not_after else "-"
    who = c.holder_user_id or f"seal of {c.agency}"
    click.echo(f"{c.credential_id}\t{c.key_algorithm}\tv{c.key_version}\t{c.status}\t{who}\t{c.agency}\texpires {exp}")


def _cred_command(name: str, help_text: str) -> Callable[[F], F]:
    def deco(fn: F) -> F:
        return keys.command(name, help=help_text)(  # type: ignore[return-value]
            click.argument("credential_id")(state_dir_option(friendly_errors(fn)))
        )

    return deco


@_cred_command("csr", "Print a PKCS#10 request for the current key, signed inside the HSM.")
def keys_csr(credential_id: str, state_dir: Path) -> None:
    with admin_target(state_dir) as admin:
        click.echo(admin.csr(None, credential_id).decode("ascii"), nl=False)


@keys.command("import-certificate")
@click.argument("credential_id")
@click.argument("chain", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@state_dir_option
@friendly_errors
def keys_import(credential_id: str, chain: Path, state_dir: Path) -> None:
    """Install a CA-issued certificate chain (PEM, leaf first); it must certify the credential's key
    and chain to a trust anchor (<state-dir>/trust-anchors/*.pem)."""
    with admin_target(state_dir) as admin:
        _print_cred(admin.import_certificate(None, credential_id, chain.read_bytes()))


@_cred_command("rotate", "New key version in the HSM; the old one stops signing, its certificate stays.")
def keys_rotate(credential_id: str, state_dir: Path) -> None:
    with admin_target(state_dir) as admin:
        _print_cred(admin.rotate(None, credential_id))


@_cred_command("disable", "Stop the credential from signing (reversible).")
def keys_disable(credential_id: str, state_dir: Path) -> None:
    with admin_target(state_dir) as admin:
        _print_cred(admin.set_enabled(None, credential_id, False))


@_cred_command("enable", "Re-enable a disabled credential.")
def keys_enable(credential_id: str, state_dir: Path) -> None:
    with admin_target(state_dir) as admin:
        _print_cred(admin.set_enabled(None, credential_id, True))


@keys.command("revoke")
@click.argument("credential_id")
@click.option(
    "--reason",
    required=True,
    type=click.Choice(["job change", "retirement", "agency request", "key compromise", "other"]),
)
@state_dir_option
@friendly_errors
def keys_revoke(credential_id: str, reason: str, state_dir: Path) -> None:
    """Revoke (final)."""
    with admin_target(state_dir) as admin:
        _print_cred(admin.revoke(None, credential_id, reason))


@_cred_command("history", "Every key version with its status and certificate subject.")
def keys_history(credential_id: str, state_dir: Path) -> None:
    from cryptography import x509

    with admin_target(state_dir) as admin:
        for v in admin.history(None, credential_id):
            cert = x509.load_der_x509_certificate(v.certificate)
            click.echo(
                f"v{v.version}\t{v.status}\t{cert.subject.rfc4514_string()}\tuntil {cert.not_valid_after_utc.date()}"
            )


@keys.command("search")
@click.option("--agency", default="")
@click.option("--holder", default="", help="Holder name, diacritic-insensitive.")
@click.option("--status", default="", type=click.Choice(["", "active", "disabled", "revoked", "destroyed"]))
@click.option("--expires-within", "days", default=0, help="Only certificates expiring within N days.")
@click.option("--limit", default=100, show_default=True)
@state_dir_option
@friendly_errors
def keys_search(agency: str, holder: str, status: str, days: int, limit: int, state_dir: Path) -> None:
    """Find credentials by agency, holder name, status and expiry window."""
    with admin_target(state_dir) as admin:
        for c in admin.search_credentials(None, agency, holder, status, days, limit):
            _print_cred(c)


@keys.command("expiring")
@click.option("--days", default=30, show_default=True)
@click.option("--agency", default="")
@state_dir_option
@friendly_errors
def keys_expiring(days: int, agency: str, state_dir: Path) -> None:
    """Expiry report: active credentials whose certificate expires within DAYS."""
    with admin_target(state_dir) as admin:
        found = admin.expiring(None, days, agency)
    for c in found:
        _print_cred(c)
    click.echo(f"{len(found)} certificate(s) expire within {days} days")


# -- audit --------------------------------------------------------------------------------------


@main.group()
def audit() -> None:
    """Inspect and verify the audit log."""


@audit.command("verify")
@state_dir_option
@friendly_errors
def audit_verify(state_dir: Path) -> None:
    """Verify the stored log (chain, HSM MACs, signed checkpoints); exit 0 when intact, 1 naming
    the first bad record or checkpoint otherwise."""
    with local_app(state_dir) as app:
        report = app.audit.verify_log()
    if report.ok:
        click.echo(
            f"audit log intact: {report.records} records, {report.checkpoints} signed checkpoints"
            f" (last at {report.last_checkpoint_seq})"
        )
        return
    click.echo(f"audit log BROKEN at record {report.bad_seq}: {report.problem}", err=True)
    sys.exit(1)


@audit.command("checkpoint")
@state_dir_option
@friendly_errors
def audit_checkpoint(state_dir: Path) -> None:
    """Sign a checkpoint now (the server does so on its own every N records or T seconds)."""
    with local_app(state_dir) as app:
        cp = app.audit.checkpoint()
    click.echo(f"checkpoint signed at record {cp.seq}" if cp else "nothing new since the last checkpoint")


def filter_options(fn: F) -> F:
    for opt in reversed(
        [
            click.option(
                "--from", "from_", default="", help="From this UTC time (ISO 8601, e.g. 2026-11-26T00:00:00)."
            ),
            click.option("--to", default="", help="Before this UTC time (ISO 8601)."),
            click.option("--user", default="", help="Actor (user id)."),
            click.option("--credential", default="", help="Credential id."),
            click.option("--agency", default="", help="Agency."),
            click.option("--action", default="", help="Action, e.g. sign.hash, auth.login, sad.refuse."),
            click.option("--result", default="", type=click.Choice(["", "success", "failure"])),
        ]
    ):
        fn = opt(fn)
    return fn


def _filter(from_: str, to: str, user: str, credential: str, agency: str, action: str, result: str) -> EventFilter:
    return EventFilter(
        from_ts=iso_bound(from_),
        to_ts=iso_bound(to),
        actor=user,
        credential_id=credential,
        agency=agency,
        action=action,
        result=result,
    )


@audit.command("export")
@click.option("--out", required=True, type=click.Path(dir_okay=False, path_type=Path), help="Export file to write.")
@filter_options
@state_dir_option
@friendly_errors
def audit_export(out: Path, state_dir: Path, **flt: str) -> None:
    """Write a self-contained, signed export (records, checkpoints, audit certificate)."""
    with local_app(state_dir) as app:
        lines = app.audit.export(None, _filter(**flt))
        n = 0
        with console.status("exporting") as status, open(out, "wb") as f:
            for line in lines:
                f.write(line)
                n += 1
                if n % 5000 == 0:
                    status.update(f"exporting: {n} lines")
    click.echo(f"wrote {out} ({n} lines)")


@audit.command("verify-export")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--audit-cert",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Pin the audit certificate (DER or PEM) the export must be signed with.",
)
def audit_verify_export(file: Path, audit_cert: Path | None) -> None:
    """Verify an export offline (no database, no HSM): exit 0 when intact, 1 naming the problem."""
    from rsign.audit.offline import verify_export

    pinned = None
    if audit_cert is not None:
        from cryptography import x509
        from cryptography.hazmat.primitives.serialization import Encoding

        data = audit_cert.read_bytes()
        cert = x509.load_pem_x509_certificate(data) if b"-----BEGIN" in data else x509.load_der_x509_certificate(data)
        pinned = cert.public_bytes(Encoding.DER)
    rep = verify_export(file, pinned)
    click.echo(
        f"{rep.records} records, {rep.links} links (other scopes), {rep.checkpoints} checkpoints, head {rep.head_seq};"
        f" audit certificate SHA-256 {rep.certificate_sha256}"
    )
    if rep.ok:
        click.echo("export intact")
        return
    for p in rep.problems:
        click.echo(f"FAILED: {p}", err=True)
    sys.exit(1)


def _print_events(rows: list[dict[str, Any]], title: str) -> None:
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


@audit.command("tail")
@click.option("-n", "count", default=20, show_default=True, help="How many records.")
@filter_options
@state_dir_option
@friendly_errors
def audit_tail(count: int, state_dir: Path, **flt: str) -> None:
    """Show the latest records as a table."""
    with local_app(state_dir) as app:
        rows = app.audit.tail(_filter(**flt), count)
    _print_events(rows, f"last {len(rows)} audit records")


@audit.command("search")
@click.option("--limit", default=100, show_default=True)
@filter_options
@state_dir_option
@friendly_errors
def audit_search(limit: int, state_dir: Path, **flt: str) -> None:
    """Find records by time range, user, credential, agency, action and result."""
    with local_app(state_dir) as app:
        page = app.audit.list_events(None, _filter(**flt), limit, "")
    _print_events(
        page.events, f"{len(page.events)} matching records" + (" (more: narrow the filter)" if page.next_token else "")
    )


# -- demo ---------------------------------------------------------------------------------------


def _progress_bar(label: str) -> tuple[Progress, Callable[[int, int], None]]:
    prog = Progress(TextColumn(label), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console)
    task = prog.add_task(label, total=None)

    def update(done: int, total: int) -> None:
        prog.update(task, completed=done, total=total)

    return prog, update


@main.command()
@click.option(
    "--state-dir", type=click.Path(file_okay=False, path_type=Path), default=Path(".rsign-demo"), show_default=True
)
@click.option("--listen", default="127.0.0.1:50051", show_default=True)
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=EXAMPLES,
    show_default=True,
    help="Folder holding centralized_credentials.csv.",
)
@friendly_errors
def demo(state_dir: Path, listen: str, data: Path) -> None:
    """Provision the Son La demo deployment (first start only) and serve it."""
    from rsign.api.server import serve_forever
    from rsign.dev.demo import provision

    settings = load_settings(state_dir)
    app = build_app(settings, pool=True)
    try:
        with context.request(client="cli", actor="demo-provisioning"):
            prog, update = _progress_bar("provisioning Son La credentials")
            with prog:
                created = provision(app, data, update)
        with app.store.read() as t:
            total = t.count_credentials()
        console.print(f"{created} credentials created, {total} in the HSM")
        sample = "SL-CTS-0001"
        msg = (
            f"rsign serving the Son La demo on {listen} (state: {settings.state_dir})\n"
            f"Sign a file's digest as a demo holder, from another terminal:\n"
            f"  .venv/bin/rsign client sign README.md --credential {sample} --state-dir {state_dir} --server {listen}"
        )
        serve_forever(app, listen, on_ready=msg)
    finally:
        app.close()


# -- provision ------------------------------------------------------------------------------------


@main.command()
@click.option(
    "--data",
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    default=EXAMPLES,
    show_default=True,
    help="Folder with the deployment's CSV files.",
)
@click.option(
    "--health-education",
    is_flag=True,
    help="Also enrol the 25,065 health and education officials with EC P-256 credentials.",
)
@state_dir_option
@friendly_errors
def provision(data: Path, health_education: bool, state_dir: Path) -> None:
    """Enrol users and generate credentials from the province's CSV files (idempotent).

    Validates every file first: a malformed row is reported with its line number and nothing is
    imported. New users' initial PINs and authenticator URIs go to an enrolment-letters file (0600).
    """
    from rsign.runtime import provision as prov

    plan = prov.load(data, health_education=health_education)
    click.echo(f"{len(plan.users)} users and {len(plan.credentials)} credentials in {data}")
    with local_app(state_dir, pool=True) as app:
        prog = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        )
        tasks: dict[str, Any] = {}
        with prog:

            def update(stage: str, done: int, total: int) -> None:
                if stage not in tasks:
                    tasks[stage] = prog.add_task(f"{stage:12}", total=total)
                prog.update(tasks[stage], completed=done)

            summary = prov.apply(app, plan, update)
    click.echo(
        f"created {summary.users_created} users and {summary.credentials_created} credentials"
        f" ({summary.users_total} and {summary.credentials_total} in the plan)"
    )
    if summary.letters:
        click.echo(f"enrolment letters (initial PINs, authenticator URIs; mode 0600): {summary.letters}")


# -- bench ----------------------------------------------------------------------------------------


@main.command()
@click.option("--quick", is_flag=True, help="Smaller runs (under a minute).")
@click.option("--workers", type=int, default=None, help="HSM worker processes [default: one per CPU].")
@click.option(
    "--algorithm",
    "algorithms",
    multiple=True,
    type=click.Choice(["rsa-2048", "ec-p256"]),
    help="Repeatable [default: both].",
)
@click.option(
    "--memory/--no-memory",
    default=None,
    help="Also stream 100,000 hashes and report RSS growth [default: on unless --quick].",
)
@click.option("--scale", is_flag=True, help="Instead: 176 credentials, then 25,065 more; latency and start-up.")
def bench(quick: bool, workers: int | None, algorithms: tuple[str, ...], memory: bool | None, scale: bool) -> None:
    """Measure the batch path against a direct python-pkcs11 loop; prints one JSON object per line."""
    from rsign.dev import bench as b
    from rsign.domain.algorithms import KeyAlgorithm

    if scale:
        prog = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(), console=console
        )
        tasks: dict[str, Any] = {}

        def update(stage: str, done: int, total: int) -> None:
            key = f"{stage}:{total}"
            if key not in tasks:
                tasks[key] = prog.add_task(f"provisioning {stage}", total=total)
            prog.update(tasks[key], completed=done)

        with prog:
            b.scale(EXAMPLES, 100, lambda msg: prog.console.log(msg), update)
        return

    algs = [KeyAlgorithm.parse(a) for a in (algorithms or ("rsa-2048", "ec-p256"))]
    with console.status("benchmark") as status:
        b.run(
            workers or b.default_workers(),
            quick,
            algs,
            (not quick) if memory is None else memory,
            lambda msg: status.update(msg),
        )


# -- client -------------------------------------------------------------------------------------


@main.group()
def client() -> None:
    """Call a running rsign server (demo helper)."""


@client.command("sign")
@click.argument("file", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option("--credential", required=True, help="Demo credential id, e.g. SL-CTS-0001.")
@click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path(".rsign-demo"),
    show_default=True,
    help="Demo state directory holding the demo holders' PINs and TOTP seeds.",
)
@click.option("--server", default="127.0.0.1:50051", show_default=True)
def client_sign(file: Path, credential: str, state_dir: Path, server: str) -> None:
    """Log in as the credential's demo holder, authorize with a fresh TOTP, sign FILE's SHA-256."""
    from rsign.dev.democlient import sign_file

    try:
        result = sign_file(server, state_dir, credential, file)
    except Exception as exc:  # a person is reading: one line, not a traceback
        details = getattr(exc, "details", None)
        msg = details() if callable(details) else str(exc)
        console.print(f"[red]error:[/red] {msg}")
        sys.exit(2)
    click.echo(json.dumps(asdict(result), indent=2))


if __name__ == "__main__":
    main()
