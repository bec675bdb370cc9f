"""Builds the Starlette application and runs it on uvicorn in a thread beside the gRPC server.

The listener follows the gRPC listener's rules (``rsign.api.listener``'s certificate files and
checks): TLS from the same PEM files, mutual TLS with the same client CA, plaintext only on a
loopback address (or, explicitly, behind a TLS-terminating proxy), certificates re-read on SIGHUP.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import threading
from dataclasses import dataclass
from urllib.parse import urlsplit

import anyio.to_thread
import uvicorn
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import BaseRoute

from rsign.api.listener import TlsFiles, check_plaintext, check_port_free, check_tls, is_loopback, split_listen
from rsign.domain.errors import ConfigurationError
from rsign.http import csc, pages
from rsign.http.ceremony import RelyingParty
from rsign.http.plumbing import SecurityHeaders
from rsign.runtime.app import App

log = logging.getLogger(__name__)


def build_http_app(app: App, rp: RelyingParty) -> Starlette:
    """The ASGI application: the CSC API and the passkey pages."""
    routes: list[BaseRoute] = []
    routes += csc.routes(app, rp.origin)
    routes += pages.routes(app, rp)
    return Starlette(routes=routes, middleware=[Middleware(SecurityHeaders)])


def relying_party(public_url: str | None, host: str, port: int, tls: bool) -> RelyingParty:
    """The origin the pages are served from, as browsers will see it, and its RP id. Default:
    this listener; a loopback address is named ``localhost`` (WebAuthn needs a domain for its RP
    id, and http://localhost is a secure context)."""
    if not public_url:
        name = "localhost" if is_loopback(f"{host}:{port}") else host
        public_url = f"{'https' if tls else 'http'}://{name}:{port}"
    parts = urlsplit(public_url.rstrip("/"))
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
        raise ConfigurationError(f"the public URL must be scheme://host[:port], got {public_url!r}")
    return RelyingParty(rp_id=parts.hostname, origin=f"{parts.scheme}://{parts.netloc}")


def _tls_context(files: TlsFiles) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(files.cert, files.key)
    if files.client_ca is not None:
        ctx.load_verify_locations(files.client_ca)
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


@dataclass
class HttpServer:
    server: uvicorn.Server
    thread: threading.Thread
    port: int
    host: str
    tls: TlsFiles | None
    context: ssl.SSLContext | None
    rp: RelyingParty

    @property
    def base_url(self) -> str:
        scheme = "https" if self.tls else "http"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{scheme}://{host}:{self.port}"

    def reload(self) -> bool:
        """Re-read the certificate files (SIGHUP): new handshakes use them; a bad file keeps the old."""
        if self.tls is None or self.context is None:
            return False
        try:
            check_tls(self.tls)
            self.context.load_cert_chain(self.tls.cert, self.tls.key)
        except (ConfigurationError, OSError, ssl.SSLError) as exc:
            log.error("HTTP TLS reload refused, still serving the previous certificate: %s", exc)
            return False
        log.warning("HTTP TLS certificate files reloaded; new connections use them")
        return True

    def stop(self, grace: float = 5.0) -> None:
        """Stop taking connections and let requests in progress finish (at most ``grace`` s)."""
        self.server.should_exit = True
        self.thread.join(grace + 0.5)
        if self.thread.is_alive():
            # Bounded: the gRPC shutdown after this one has its own grace and a hard exit timer.
            self.server.force_exit = True
            self.thread.join(1.0)


def start_http(
    app: App,
    listen: str,
    tls: TlsFiles | None = None,
    *,
    behind_tls_proxy: bool = False,
    grace: float = 5.0,
    public_url: str | None = None,
) -> HttpServer:
    """Serve the HTTP face on ``listen`` ("HOST:PORT"; port 0 picks a free one). Non-blocking.
    ``public_url``: the origin browsers reach the pages at (behind a proxy); default: ``listen``."""
    if tls is None:
        check_plaintext(listen, behind_tls_proxy)
    else:
        check_tls(tls)
    requests, threads = app.settings.http_requests, app.settings.http_threads
    if requests < 2 or threads < 1:
        raise ConfigurationError(
            f"http_requests must be at least 2 and http_threads at least 1, got {requests} and {threads}"
        )
    check_port_free(listen)
    host, port = split_listen(listen)
    bind_host = "127.0.0.1" if host == "localhost" else host
    sock = socket.socket(socket.AF_INET6 if ":" in bind_host else socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bind_host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(f"cannot listen on {listen}: {exc.strerror or exc}") from None
    bound = sock.getsockname()[1]
    try:
        rp = relying_party(public_url, host, bound, tls is not None or behind_tls_proxy)
    except ConfigurationError:
        sock.close()
        raise
    config = uvicorn.Config(
        build_http_app(app, rp),
        log_level="warning",
        lifespan="off",
        timeout_graceful_shutdown=int(max(1, grace)),
        server_header=False,
        # Behind a TLS proxy the client address in the audit is the proxy's unless it is trusted;
        # rsign trusts no forwarded header (an audit record names the peer it saw).
        proxy_headers=False,
        # Admission: past this many connections or requests in progress (this one counted), a
        # request is answered 503 at once instead of queueing; a flood of slow or endless bodies
        # holds at most this many bodies (each at most plumbing.MAX_BODY) in memory.
        limit_concurrency=requests,
    )
    config.load()
    context = _tls_context(tls) if tls is not None else None
    # Our own context (uvicorn builds one per Config from file names): SIGHUP reloads it in place.
    config.ssl = context
    server = uvicorn.Server(config)

    async def main() -> None:
        # The requests' blocking work (database, HSM) runs on this loop's default thread pool:
        # at most ``threads`` at once, so the HTTP face holds at most that many database
        # connections and HSM workers, whatever its load; gRPC keeps the rest.
        anyio.to_thread.current_default_thread_limiter().total_tokens = threads
        await server.serve(sockets=[sock])

    def run() -> None:
        asyncio.run(main())

    thread = threading.Thread(target=run, name="rsign-http", daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        thread.join(0.02)
    if not server.started:
        raise ConfigurationError(f"the HTTP listener on {listen} did not start (see the log)")
    mode = "plaintext" if tls is None else "mutual TLS" if tls.mutual else "TLS"
    log.info("rsign HTTP (CSC API) listening on %s:%d (%s)", host, bound, mode)
    return HttpServer(server, thread, bound, host, tls, context, rp)
