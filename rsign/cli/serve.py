"""``rsign serve``: run the gRPC service on a state directory.

Listener options (address, TLS) belong to this command's option list.
"""

from __future__ import annotations

import gc
import json
from pathlib import Path

import click

from rsign.audit.append_stats import APPEND_STATS_PREFIX
from rsign.cli._common import friendly_errors, state_dir_option
from rsign.dev.embedded import EMBEDDED
from rsign.domain.settings import DEFAULT_LISTEN, Settings
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
    "--http-listen",
    default=None,
    help="Also serve the HTTP face (CSC API, passkey pages) on HOST:PORT, with the same TLS files and "
    "rules as gRPC [default: off].",
)
@click.option(
    "--http-public-url",
    default=None,
    help="The origin browsers reach the HTTP face at, e.g. https://sign.example.vn (behind a proxy): the "
    "passkeys' origin and RP id [default: the --http-listen address; loopback is 'localhost'].",
)
@click.option(
    "--insecure-behind-tls-proxy",
    is_flag=True,
    help="Allow plaintext on a non-loopback address because a TLS-terminating proxy fronts rsign (logged "
    "as a warning at every start).",
)
@click.option(
    "--metrics-listen",
    default=None,
    metavar="HOST:PORT",
    help="Serve Prometheus metrics at http://HOST:PORT/metrics (PORT alone: 127.0.0.1) [default: off].",
)
@click.option(
    "--metrics-allow-remote",
    is_flag=True,
    help="Allow --metrics-listen on a non-loopback address (the endpoint has no authentication).",
)
@click.option(
    "--reflection/--no-reflection",
    default=None,
    help="gRPC server reflection (grpcurl, Postman) [default: on when listening on loopback].",
)
@click.option(
    "--log-format",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="Log lines on stderr, one access line per RPC; json: one JSON object per line.",
)
@click.option(
    "--processes",
    type=click.IntRange(1, 64),
    default=1,
    show_default=True,
    help="Serving processes sharing the port (each with its own HSM workers and Python interpreter, so "
    "more than one core serves calls); the HTTP face runs in the first. Not with --metrics-listen.",
)
@click.option("--shared-port", is_flag=True, hidden=True)  # set by --processes for its processes
@friendly_errors
def serve(
    state_dir: Path,
    listen: str | None,
    tls_cert: Path | None,
    tls_key: Path | None,
    tls_client_ca: Path | None,
    http_listen: str | None,
    http_public_url: str | None,
    insecure_behind_tls_proxy: bool,
    metrics_listen: str | None,
    metrics_allow_remote: bool,
    reflection: bool | None,
    log_format: str,
    processes: int,
    shared_port: bool,
) -> None:
    """Run the gRPC service (also serves grpc.health.v1.Health).

    Without a TLS certificate it listens in plaintext, on a loopback address only. SIGHUP re-reads
    the certificate files; SIGTERM stops within service.shutdown_grace_seconds plus a few seconds.
    """
    from rsign.api import logs
    from rsign.api.listener import check_metrics_listen, check_plaintext, check_port_free, check_tls, tls_files
    from rsign.api.server import serve_forever

    logs.configure(log_format)
    if shared_port:
        from rsign.cli.serve_processes import die_with_parent

        die_with_parent()
    if processes > 1:
        from rsign.cli.serve_processes import Child, serve_processes

        if metrics_listen is not None:
            raise click.UsageError(
                "--metrics-listen with --processes > 1: each process counts its own calls, and one "
                "endpoint would show one process's; run a single process to export metrics"
            )
        settings = load_settings(state_dir, embedded=EMBEDDED) if state_dir.exists() else None
        # Always a concrete address, checked free below: the processes share their port
        # (SO_REUSEPORT), so a group started on a port another group of this user holds would join
        # it silently instead of failing.
        addr = listen or (settings.listen if settings is not None else DEFAULT_LISTEN)
        # (A dataclass field's default is its class attribute.)
        grace = (settings or Settings).shutdown_grace_seconds
        common = ["--state-dir", str(state_dir), "--log-format", log_format, "--shared-port"]
        common += [f"--{k}={v}" for k, v in (("tls-cert", tls_cert), ("tls-key", tls_key)) if v is not None]
        if tls_client_ca is not None:
            common.append(f"--tls-client-ca={tls_client_ca}")
        if insecure_behind_tls_proxy:
            common.append("--insecure-behind-tls-proxy")
        if reflection is not None:
            common.append("--reflection" if reflection else "--no-reflection")
        first = [f"--http-listen={http_listen}"] if http_listen is not None else []
        if http_public_url is not None:
            first.append(f"--http-public-url={http_public_url}")
        check_port_free(addr)  # before any process starts: one clear line, as with one process
        raise SystemExit(serve_processes(Child(common, first), processes, addr, stop_timeout=grace + 60))
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
        if not shared_port:
            check_port_free(addr)
        if http_listen is not None:
            if tls is None and not insecure_behind_tls_proxy:
                check_plaintext(http_listen, behind_tls_proxy=False)
            check_port_free(http_listen)
        if metrics_listen is not None:
            metrics_listen = check_metrics_listen(metrics_listen, metrics_allow_remote)
            check_port_free(metrics_listen)
        mode = "plaintext" if tls is None else "mutual TLS" if tls.mutual else "TLS"
        app = build_app(settings, pool=True)
    # What start-up built (SQLAlchemy's metadata, gRPC, the app) lives as long as the process:
    # out of the cyclic collector's reach, whose full passes otherwise re-walk all of it while the
    # batch path allocates thousands of short-lived rows per chunk (GC was 4-5 % of its CPU).
    gc.freeze()
    http = None
    try:
        if http_listen is not None:
            from rsign.http.server import start_http

            http = start_http(
                app,
                http_listen,
                tls,
                behind_tls_proxy=insecure_behind_tls_proxy,
                grace=settings.shutdown_grace_seconds,
                public_url=http_public_url,
            )
        http_url = http.base_url if http is not None else ""

        def ready(bound: str) -> str:
            line = f"rsign serving on {bound} ({mode}; state: {settings.state_dir})"
            return line + (f"; HTTP (CSC API, passkeys) on {http_url}" if http_url else "")

        serve_forever(
            app,
            addr,
            on_ready=ready,
            tls=tls,
            behind_tls_proxy=insecure_behind_tls_proxy,
            on_reload=http.reload if http is not None else None,
            # HTTP calls are short (no streams): a small share of the grace, the rest is gRPC's.
            before_stop=(lambda g: http.stop(min(g, 2.0))) if http is not None else None,
            metrics_listen=metrics_listen,
            reflection=reflection,
            shared_port=shared_port,
        )
        # How busy the audit head was (the one point every replica's appends pass through): an
        # operator sizing a cluster, and the benchmark, read it here.
        click.echo(f"{APPEND_STATS_PREFIX}{json.dumps(app.journal.append_stats())}", err=True)
    finally:
        if http is not None:
            http.stop(0.0)
        app.close()
