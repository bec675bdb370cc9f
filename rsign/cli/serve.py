"""``rsign serve``: run the gRPC service on a state directory.

Listener options (address, and later TLS) belong to this command's option list.
"""

from __future__ import annotations

from pathlib import Path

import click

from rsign.cli._common import friendly_errors, state_dir_option
from rsign.dev.embedded import EMBEDDED
from rsign.runtime.app import build_app
from rsign.runtime.config import load_settings


@click.command()
@state_dir_option
@click.option("--listen", default=None, help="HOST:PORT to listen on [default: 127.0.0.1:50051].")
@friendly_errors
def serve(state_dir: Path, listen: str | None) -> None:
    """Run the gRPC service (also serves grpc.health.v1.Health)."""
    from rsign.api.server import serve_forever

    settings = load_settings(state_dir, embedded=EMBEDDED)
    app = build_app(settings, pool=True)
    addr = listen or settings.listen
    try:
        serve_forever(app, addr, on_ready=f"rsign serving on {addr} (state: {settings.state_dir})")
    finally:
        app.close()
