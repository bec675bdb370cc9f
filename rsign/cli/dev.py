"""Development commands: ``rsign demo``, ``rsign bench`` and the demo client ``rsign client sign``."""

from __future__ import annotations

import json
import sys
from dataclasses import asdict
from pathlib import Path

import click

from rsign.cli._common import EXAMPLES, console, friendly_errors
from rsign.cli._output import progress_bar, stage_bars
from rsign.cli._remote import tls_options, with_tls_client_options
from rsign.dev.embedded import EMBEDDED
from rsign.domain import context
from rsign.runtime.app import build_app
from rsign.runtime.config import load_settings
from rsign.runtime.state import undo_on_failure


@click.command()
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
    from rsign.api.listener import check_plaintext, check_port_free
    from rsign.api.server import serve_forever
    from rsign.dev.demo import provision

    with undo_on_failure(state_dir):
        check_plaintext(listen, behind_tls_proxy=False)
        check_port_free(listen)
        settings = load_settings(state_dir, embedded=EMBEDDED)
        app = build_app(settings, pool=True)
    try:
        with context.request(client="cli", actor="demo-provisioning"):
            prog, update = progress_bar("provisioning Son La credentials")
            with prog:
                created = provision(app, data, update)
        with app.store.read() as t:
            total = t.count_credentials()
        console.print(f"{created} credentials created, {total} in the HSM")
        sample = "SL-CTS-0001"
        def msg(bound: str) -> str:
            return (
                f"rsign serving the Son La demo on {bound} (state: {settings.state_dir})\n"
                "Sign a file as a demo holder (a PDF as PAdES, anything else as detached CMS), from another"
                f" terminal:\n  .venv/bin/rsign client sign README.md --credential {sample} --state-dir {state_dir}"
                f" --server {bound}"
            )

        serve_forever(app, listen, on_ready=msg)
    finally:
        app.close()


@click.command()
@click.option("--quick", is_flag=True, help="Smaller runs (under a minute).")
@click.option(
    "--workers", type=click.IntRange(min=1), default=None, help="HSM worker processes [default: one per CPU]."
)
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
@click.option(
    "--unary",
    is_flag=True,
    help="Instead: Authorize+SignHash flows (one per signer, concurrent clients) against a naive signing server.",
)
@click.option(
    "--signers", type=click.IntRange(min=1), default=None, help="--unary: signers [default: 1,000; --quick 100]."
)
@click.option(
    "--clients", type=click.IntRange(1, 1000), default=None, help="--unary: concurrent clients [default: 32]."
)
@click.option(
    "--rounds", type=click.IntRange(1, 20), default=None, help="--unary: alternating rounds [default: 3; --quick 2]."
)
@click.option(
    "--concurrent-signers",
    type=click.IntRange(1, 1000),
    default=None,
    help="--unary mode: this many signers at once, each doing --flows-per-signer flows paced by TOTP steps, "
    "first in bursts (all as a step begins), then spread over each step.",
)
@click.option(
    "--flows-per-signer",
    type=click.IntRange(1, 30),
    default=None,
    help="With --concurrent-signers [default: 10; --quick 3]. Each flow needs a new 30 s TOTP step.",
)
@click.option(
    "--postgres",
    is_flag=True,
    help="--unary mode: two rsign serve replicas on one PostgreSQL database against one replica.",
)
@click.option(
    "--postgres-dsn",
    default="host=127.0.0.1 port=5432 user=postgres dbname=postgres",
    show_default=True,
    help="With --postgres: where to create (and afterwards drop) the run's database.",
)
@click.option(
    "--serve-processes",
    type=click.IntRange(1, 16),
    default=None,
    help="--unary mode: run rsign serve --processes N (each signer then has a connection of its own, to "
    "both servers) [default: 1].",
)
def bench(
    quick: bool,
    workers: int | None,
    algorithms: tuple[str, ...],
    memory: bool | None,
    scale: bool,
    unary: bool,
    signers: int | None,
    clients: int | None,
    rounds: int | None,
    concurrent_signers: int | None,
    flows_per_signer: int | None,
    postgres: bool,
    postgres_dsn: str,
    serve_processes: int | None,
) -> None:
    """Measure the batch path against a direct python-pkcs11 loop (or, with --unary, the one-document
    flow against a naive signing server); prints one JSON object per line."""
    from rsign.dev import bench as b
    from rsign.domain.algorithms import KeyAlgorithm

    unary = unary or postgres or concurrent_signers is not None
    unary_only = {
        "--signers": signers,
        "--clients": clients,
        "--rounds": rounds,
        "--flows-per-signer": flows_per_signer,
        "--serve-processes": serve_processes,
    }
    if not unary:
        given = [name for name, value in unary_only.items() if value is not None]
        if given:
            raise click.UsageError(f"{', '.join(given)} only apply to --unary")
    else:
        if scale or algorithms or memory is not None:
            raise click.UsageError("--unary runs EC P-256 flows: --scale, --algorithm and --memory do not apply")
        if postgres and concurrent_signers is not None:
            raise click.UsageError("choose one of --postgres and --concurrent-signers")
        if flows_per_signer is not None and concurrent_signers is None:
            raise click.UsageError("--flows-per-signer applies with --concurrent-signers")
        if serve_processes is not None and (postgres or concurrent_signers is not None):
            raise click.UsageError("--serve-processes applies to the plain --unary run")
        dsn = postgres_dsn if postgres else None
        _unary(
            quick,
            workers or b.default_workers(),
            signers,
            clients,
            rounds,
            concurrent_signers,
            flows_per_signer,
            dsn,
            serve_processes or 1,
        )
        return

    if scale:
        from rsign.dev.bench_scale import scale as run_scale

        # The scale run provisions twice (176, then 25,065 more): a new bar for each run's stage.
        prog, update = stage_bars(lambda stage: f"provisioning {stage}", key=lambda stage, total: f"{stage}:{total}")
        with prog:
            run_scale(EXAMPLES, 100, lambda msg: prog.console.log(msg), update)
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


def _unary(
    quick: bool,
    workers: int,
    signers: int | None,
    clients: int | None,
    rounds: int | None,
    concurrent_signers: int | None,
    flows_per_signer: int | None,
    postgres_dsn: str | None,
    processes: int,
) -> None:
    from rsign.dev import bench_unary as u

    prog, update = stage_bars(lambda stage: stage)
    say = prog.console.log
    n = signers or (100 if quick else 1000)
    with prog:
        if concurrent_signers is not None:
            u.paced(concurrent_signers, flows_per_signer or (3 if quick else 10), workers, say, update)
        elif postgres_dsn is not None:
            u.postgres(n, clients or 32, rounds or (1 if quick else 3), workers, say, update, admin_dsn=postgres_dsn)
        else:
            u.unary(n, clients or 32, rounds or (2 if quick else 3), workers, say, update, processes)


@click.command("sign")
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
@click.option(
    "--out",
    "out_dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Where the signed file goes [default: STATE_DIR/signed].",
)
@with_tls_client_options
@friendly_errors
def client_sign(file: Path, credential: str, state_dir: Path, server: str, out_dir: Path | None) -> None:
    """Log in as the credential's demo holder and sign FILE with a fresh TOTP: a PDF as a PDF
    (PAdES), any other file as a detached CMS signature (FILE.p7s)."""
    from rsign.dev.democlient import sign_file

    tls = tls_options()
    with console.status("") as status:

        def wait(seconds: int) -> None:  # the demo's codes are used up: show the wait, do not hide it
            status.update(f"waiting for the next one-time code: {seconds} s")

        try:
            result = sign_file(server, state_dir, credential, file, **tls, out_dir=out_dir, wait=wait)
        except Exception as exc:  # a person is reading: one line, not a traceback
            message = getattr(exc, "message", None)
            details = getattr(exc, "details", None)
            msg = message if isinstance(message, str) else details() if callable(details) else str(exc)
            console.print(f"[red]error:[/red] {msg}")
            sys.exit(2)
    click.echo(json.dumps(asdict(result), indent=2, ensure_ascii=False))
