"""``rsign serve``: run the gRPC service on a state directory.

Listener options (address, TLS) belong to this command's option list.
"""

from __future__ import annotations

from pathlib import Path

import click

from rsign.cli._common import friendly_errors, state_dir_option
from rsign.dev.embedded import EMBEDDED
from rsign.runtime.app import build_app
from rsign.runtime.config import load_settings
from rsign.runtime.state import undo_on_failure

_PEM = click.Path(exists=True, dir_okay=False, path_type=Path)


@click.command()
@state_dir_option
@click.option("--listen", default=None, help="HOST:PORT to listen on [default: 127.0.0.1:50051].")
@click.option(
    "--tls-cert",
    type=_PEM,
    default=None,
    help="The server's TLS certificate chain (PEM, leaf first) [default: service.tls_cert].",
)
@click.option(
    "--tls-key",
    type=_PEM,
    default=None,
    help="Its private key (PEM, unencrypted: keep the file 0600) [default: service.tls_key].",
)
@click.option(
    "--tls-client-ca",
    type=_PEM,
    default=None,
    help="Require client certificates issued by this CA (PEM): mutual TLS; each audit record names the "
    "client certificate's subject [default: service.tls_client_ca].",
)
@click.option(
    "--insecure-behind-tls-proxy",
    is_flag=True,
    help="Allow plaintext on a non-loopback address because a TLS-terminating proxy fronts rsign (logged "
    "as a warning at every start).",
)
@friendly_errors
def serve(
    state_dir: Path,
    listen: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    insecure_behind_tls_proxy: bool,
) -> None:
    """Run the gRPC service (also serves grpc.health.v1.Health).

    Without a TLS certificate it listens in plaintext, on a loopback address only. SIGHUP re-reads
    the certificate files; SIGTERM stops within service.shutdown_grace_seconds plus a few seconds.
    """
    from rsign.api.listener import check_plaintext, check_port_free, check_tls, tls_files
    from rsign.api.server import serve_forever

    # A first start that fails leaves no half-made state directory behind.
    with undo_on_failure(state_dir):
        settings = load_settings(state_dir, embedded=EMBEDDED)
        addr = listen if listen is not None else settings.listen
        tls = tls_files(
            tls_cert or settings.tls_cert, tls_key or settings.tls_key, tls_client_ca or settings.tls_client_ca
        )
        # A listener that cannot work is refused now, in one line, before the HSM workers start.
        if tls is not None:
            check_tls(tls)
        elif not insecure_behind_tls_proxy:
            check_plaintext(addr, behind_tls_proxy=False)
        check_port_free(addr)
        mode = "plaintext" if tls is None else "mutual TLS" if tls.mutual else "TLS"
        app = build_app(settings, pool=True)
    try:
        serve_forever(
            app,
            addr,
            on_ready=f"rsign serving on {addr} ({mode}; state: {settings.state_dir})",
            tls=tls,
            behind_tls_proxy=insecure_behind_tls_proxy,
        )
    finally:
        app.close()
