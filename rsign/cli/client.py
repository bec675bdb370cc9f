"""``rsign client``: sign and verify PDF files through a running server, as an official would.

Imports only the client SDK, click and rich, so that it works in a client-only install (no server
extra). The demo helper ``rsign client sign`` is imported only when it runs (``_lazy``).
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from rsign.cli._lazy import LazyGroup
from rsign.client import Client, CodeAlreadyUsed, RsignError, count_down

err = Console(stderr=True)
_file = click.Path(exists=True, dir_okay=False, path_type=Path)

STAGE_LABEL = {
    "prepare": "computing digests",
    "authorize": "authorizing (one code)",
    "sign": "signing in the HSM",
    "finish": "writing signed files",
}


# The demo helper needs the server's modules (the demo's secrets, TOTP): loaded on use.
@click.group(cls=LazyGroup, lazy={"sign": "rsign.cli.dev:client_sign"})
def client() -> None:
    """Sign and verify PDF files through a running rsign server."""


def show_countdown(e: CodeAlreadyUsed, sleep: Callable[[float], None] | None = None) -> None:
    """Instead of waiting in silence: the server's reason, then the seconds to the next code."""
    err.print(f"[yellow]{e.message}[/yellow]", soft_wrap=True)
    with err.status("") as status:

        def tick(remaining: int) -> None:
            status.update(f"next one-time code in {remaining} s")

        if sleep is None:
            count_down(e.retry_after, tick)
        else:
            count_down(e.retry_after, tick, sleep)


def _codes(first: str | None, prompt: str) -> Callable[[], str]:
    """The one-time codes for Authorize: ``--otp`` first, then asked on the terminal."""
    given = [first] if first else []

    def next_code() -> str:
        if given:
            return given.pop()
        return str(click.prompt(prompt, err=True)).strip()

    return next_code


@contextmanager
def _session(
    server: str, user: str, pin_stdin: bool, login_otp: str | None, tls: dict[str, Path | None]
) -> Iterator[Client]:
    if pin_stdin:
        pin = sys.stdin.readline().rstrip("\r\n")
        if not pin:
            raise click.UsageError("--pin-stdin: no PIN on standard input")
    else:
        pin = click.prompt("PIN", hide_input=True, err=True)
    code = login_otp or click.prompt("one-time code (to log in)", err=True)
    c = Client(server, tls["ca"], tls["cert"], tls["key"])
    try:
        c.login(user, pin, code.strip())
        yield c
        c.logout()
    finally:
        c.close()


def _fail(e: RsignError) -> None:
    err.print(f"[red]error ({e.code.name}):[/red] {e.message}", soft_wrap=True)
    sys.exit(2)


@client.command("sign-pdf")
@click.argument("files", nargs=-1, required=True, type=_file)
@click.option("--credential", required=True, metavar="ID", help="Your credential id, e.g. SL-CTS-0001.")
@click.option(
    "--out",
    "out_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Where the signed files go.",
)
@click.option(
    "--user",
    envvar="RSIGN_USER",
    metavar="USER_ID",
    help="Your user id [default: $RSIGN_USER, or asked for on the terminal, like the PIN and codes].",
)
@click.option("--server", default="127.0.0.1:50051", show_default=True, metavar="HOST:PORT")
@click.option("--ca", type=_file, help="The CA certificate (PEM) of the server's TLS certificate: connect over TLS.")
@click.option("--cert", type=_file, help="With --ca: your TLS client certificate (PEM), for mutual TLS.")
@click.option("--key", type=_file, help="With --cert: its private key (PEM).")
@click.option("--pin-stdin", is_flag=True, help="Read the PIN from the first line of standard input.")
@click.option("--login-otp", metavar="CODE", help="The one-time code to log in with (asked for otherwise).")
@click.option("--otp", metavar="CODE", help="The one-time code that authorizes the signatures (asked for otherwise).")
@click.option("--tsa", metavar="URL", help="A timestamp authority (RFC 3161): PAdES B-T instead of B-B.")
@click.option("--stamp", is_flag=True, help="A visible stamp (signer, agency, time) on the first page.")
@click.option("--scheme", type=click.Choice(["RSA_PKCS1_V15", "RSA_PSS", "ECDSA"]), help="Default: from the key.")
@click.option("--reason", help="The signature's reason, e.g. 'Phê duyệt'.")
@click.option("--location", help="Where it was signed, e.g. 'Sơn La'.")
def sign_pdf(
    files: tuple[Path, ...],
    credential: str,
    out_dir: Path,
    user: str | None,
    server: str,
    ca: Path | None,
    cert: Path | None,
    key: Path | None,
    pin_stdin: bool,
    login_otp: str | None,
    otp: str | None,
    tsa: str | None,
    stamp: bool,
    scheme: str | None,
    reason: str | None,
    location: str | None,
) -> None:
    """Sign FILES (PDF) with one one-time code for all of them (up to the credential's limit per
    code; more files ask for one code per group). Prints where each signed file went."""
    if (cert is None) != (key is None) or (cert is not None and ca is None):
        raise click.UsageError("--cert and --key go together, and need --ca")
    if not user:
        if pin_stdin:  # standard input carries the PIN: it cannot also answer a prompt
            raise click.UsageError("with --pin-stdin, give --user (or RSIGN_USER)")
        user = str(click.prompt("user id", err=True)).strip()
    from rsign.client.pdf import Stamp, signer_name

    logging.getLogger("fontTools").setLevel(logging.ERROR)  # font subsetting chatter
    try:
        with _session(server, user, pin_stdin, login_otp, {"ca": ca, "cert": cert, "key": key}) as c:
            cred = c.credential(credential)
            seal = Stamp(signer_name(cred), cred.agency) if stamp else None
            with Progress(TextColumn("{task.description:<24}"), BarColumn(), MofNCompleteColumn(), console=err) as bar:
                task = bar.add_task("starting", total=len(files))

                def progress(stage: str, done: int, total: int) -> None:
                    bar.update(task, description=STAGE_LABEL.get(stage, stage), completed=done, total=total)

                def used(e: CodeAlreadyUsed) -> None:
                    bar.stop()
                    show_countdown(e)
                    bar.start()

                signed = c.sign_pdfs(
                    credential,
                    list(files),
                    otp=_codes(otp, "one-time code (a new one, to sign)"),
                    out_dir=out_dir,
                    tsa_url=tsa,
                    stamp=seal,
                    scheme=scheme,
                    reason=reason,
                    location=location,
                    progress=progress,
                    on_used_code=used,
                )
    except RsignError as e:
        _fail(e)
    except (ValueError, OSError) as e:
        err.print(f"[red]error:[/red] {e}", soft_wrap=True)
        sys.exit(2)
    for source, target in zip(files, signed, strict=True):
        click.echo(f"{source} -> {target}")


@client.command("verify-pdf")
@click.argument("files", nargs=-1, required=True, type=_file)
@click.option(
    "--trust",
    "trust",
    multiple=True,
    type=_file,
    help="A root certificate (PEM or DER) to chain to; repeat for several (e.g. the CA and the TSA).",
)
def verify_pdf_cmd(files: tuple[Path, ...], trust: tuple[Path, ...]) -> None:
    """Report each signature in FILES: signer, time, intact, chain. Exit status 1 when any is not
    intact or not trusted (without --trust nothing is trusted)."""
    from rsign.client.verify import load_roots, verify_pdf

    logging.getLogger("pyhanko").setLevel(logging.CRITICAL)  # the report says it; no tracebacks
    logging.getLogger("pyhanko_certvalidator").setLevel(logging.CRITICAL)
    roots = load_roots(trust)
    all_ok = True
    for f in files:
        reports = verify_pdf(f, roots)
        click.echo(f"{f}: {len(reports)} signature(s)")
        if not reports:
            all_ok = False
        for r in reports:
            all_ok &= r.ok
            when = r.signing_time.isoformat() if r.signing_time else "-"
            click.echo(f"  {r.field}: {'OK' if r.ok else 'NOT OK'}")
            click.echo(f"    signer:    {r.signer}")
            click.echo(f"    time:      {when} (signer's claim)")
            if r.timestamp is not None:
                ts_state = "trusted" if r.timestamp_trusted else "NOT trusted"
                click.echo(f"    timestamp: {r.timestamp.isoformat()} ({ts_state})")
            click.echo(f"    intact:    {'yes' if r.intact else 'NO'}  ({r.algorithm}, {r.coverage.lower()})")
            chain = " <- ".join(r.chain) if r.trusted else "NOT trusted (no path to a --trust root)"
            click.echo(f"    chain:     {chain}")
    sys.exit(0 if all_ok else 1)
