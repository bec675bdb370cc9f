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
    from rsign.api.server import serve_forever
    from rsign.dev.demo import provision

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
        msg = (
            f"rsign serving the Son La demo on {listen} (state: {settings.state_dir})\n"
            f"Sign a file's digest as a demo holder, from another terminal:\n"
            f"  .venv/bin/rsign client sign README.md --credential {sample} --state-dir {state_dir} --server {listen}"
        )
        serve_forever(app, listen, on_ready=msg)
    finally:
        app.close()


@click.command()
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
        # The scale run provisions twice (176, then 25,065 more): a new bar for each run's stage.
        prog, update = stage_bars(lambda stage: f"provisioning {stage}", key=lambda stage, total: f"{stage}:{total}")
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


@click.group()
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
@with_tls_client_options
@friendly_errors
def client_sign(file: Path, credential: str, state_dir: Path, server: str) -> None:
    """Log in as the credential's demo holder, authorize with a fresh TOTP, sign FILE's SHA-256."""
    from rsign.dev.democlient import sign_file

    tls = tls_options()
    try:
        result = sign_file(server, state_dir, credential, file, **tls)
    except Exception as exc:  # a person is reading: one line, not a traceback
        details = getattr(exc, "details", None)
        msg = details() if callable(details) else str(exc)
        console.print(f"[red]error:[/red] {msg}")
        sys.exit(2)
    click.echo(json.dumps(asdict(result), indent=2))
