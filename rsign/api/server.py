"""Builds and runs the gRPC server around an ``App``."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection as grpc_reflection

from rsign.api.capacity import Admission, Capacity, server_options
from rsign.api.interceptors import CallObserver, ServiceInterceptor
from rsign.api.listener import ReloadableTls, TlsFiles, check_plaintext, check_port_free, is_loopback
from rsign.api.logs import access_log
from rsign.api.metrics import Metrics
from rsign.api.servicers import AdminServicer, AuditServicer, AuthServicer, SigningServicer
from rsign.api.streams import OpenStreams
from rsign.audit.checkpoints import Checkpointer
from rsign.domain.errors import ConfigurationError, Unavailable
from rsign.runtime.app import App
from rsign.signing.recovery import Recovery
from rsign.v1 import rsign_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICES = ("rsign.v1.AuthService", "rsign.v1.SigningService", "rsign.v1.AuditService", "rsign.v1.AdminService")
# After the grace period, what is still running is cancelled; closing those streams (their
# chunks at the HSM awaited and audited) gets at most this long before the final checkpoint.
SHUTDOWN_MARGIN = 3.0


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    checkpointer: Checkpointer
    monitor: StoreMonitor
    admission: Admission  # calls in progress per budget (rsign.api.capacity)

    streams: OpenStreams = field(default_factory=OpenStreams)  # the interceptor's: closed at shutdown
    tls: ReloadableTls | None = None  # None: plaintext listener
    # Set when stop() begins: streams cut by the shutdown say so in their batch.end.
    stopping: threading.Event = field(default_factory=threading.Event)
    recovery: Recovery | None = None  # the app's reconciler, started with this server
    metrics: Metrics | None = None  # the Prometheus endpoint, when asked for

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 5.0) -> None:
        """Refuse new calls, give those in progress ``grace`` seconds, cancel the rest, wait until
        every stream is closed (what was at the HSM audited, batch.end written), then sign a last
        checkpoint. Bounded: whatever the calls do, the checkpoint starts within
        ``grace + SHUTDOWN_MARGIN`` seconds."""
        deadline = time.monotonic() + grace + SHUTDOWN_MARGIN
        self.stopping.set()
        self.monitor.stop()
        set_health(self.health, False)
        if not self.server.stop(grace).wait(max(0.0, deadline - time.monotonic())):
            log.error("the gRPC server did not stop in time; going on with the shutdown")
        if not self.streams.wait_closed(max(0.0, deadline - time.monotonic())):
            log.error("%d stream(s) still closing at shutdown: their audit may be incomplete", self.streams.open)
        if self.recovery is not None:
            self.recovery.stop()  # settles what a failed audit commit left, if the store answers now
        log.info("calls ended; signing the final checkpoint")
        self.checkpointer.stop()  # signs a last checkpoint over everything written
        if self.metrics is not None:
            self.metrics.close()
        log.info("stopped")


def set_health(hs: health.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICES):
        hs.set(name, status)


class StoreMonitor:
    """Health follows the audit store: NOT_SERVING from the first failed write until a probe
    (an audit insert, rolled back) succeeds again. Signing fails closed meanwhile. Likewise while
    the audit journal is halted: the log was found behind its HSM anchor (``AuditService.watch``),
    and while the service clock and the database server's clock differ by more than
    ``max_clock_drift_seconds`` (time sync: TOTP windows, SAD and session expiry and the audit
    times all read the service clock)."""

    def __init__(self, app: App, hs: health.HealthServicer) -> None:
        self._app = app
        self._hs = hs
        self._stop = threading.Event()
        self.clock_ok = True
        self.check_clock()
        app.store.on_health_change(lambda _ok: self.update())
        app.journal.on_halt_change(lambda _serving: self.update())
        self._thread = threading.Thread(target=self._run, daemon=True, name="rsign-store-monitor")
        self._thread.start()

    def update(self) -> None:
        app = self._app
        set_health(self._hs, app.store.healthy and app.hsm_healthy() and not app.journal.halted and self.clock_ok)

    def check_clock(self) -> None:
        limit = self._app.settings.max_clock_drift_seconds
        if limit <= 0:
            return
        try:
            drift = self._app.clock.now() - self._app.store.database_time()
        except Unavailable:
            return  # the store's own health says so
        ok = abs(drift) <= limit
        if ok != self.clock_ok:
            self.clock_ok = ok
            if ok:
                log.warning("service clock back in sync with the database server's (%+.1f s)", drift)
            else:
                log.error(
                    "service clock is %+.1f s off the database server's (more than %g s): NOT_SERVING until"
                    " the clocks agree (check NTP)",
                    drift,
                    limit,
                )
            self.update()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            if not self._app.store.healthy:
                self._app.store.probe()
            self.check_clock()

    def stop(self) -> None:
        self._stop.set()


def start_server(
    app: App,
    listen: str,
    tls: TlsFiles | None = None,
    *,
    behind_tls_proxy: bool = False,
    metrics_listen: str | None = None,
    reflection: bool | None = None,
    shared_port: bool = False,
) -> RunningServer:
    """Start serving on ``listen`` ("HOST:PORT"; port 0 picks a free one). Non-blocking.

    With ``tls`` the listener speaks TLS (mutual TLS when it names a client CA). Without it only a
    loopback address is served, unless ``behind_tls_proxy`` (logged loudly). A port in use, a
    plaintext listener refused or a bad certificate file is a ``ConfigurationError``.

    ``metrics_listen``: serve Prometheus metrics there (checked by the caller:
    ``check_metrics_listen``). ``reflection``: gRPC server reflection; None: on when ``listen`` is a
    loopback address (developers' tools: grpcurl, Postman), off elsewhere unless asked for."""
    reloadable = ReloadableTls(tls) if tls is not None else None
    if reloadable is None:
        check_plaintext(listen, behind_tls_proxy)
    if not shared_port:
        check_port_free(listen)
    # A log behind its HSM anchor (rolled back in the database) is not served: one line, before
    # anything listens (AuditRollback; recovery: `rsign audit accept-rollback`).
    app.audit.check_before_serving()
    capacity = Capacity.from_settings(app.settings)  # thread budgets and limits: see rsign.api.capacity
    admission = Admission(capacity)
    metrics = Metrics(app, reloadable) if metrics_listen is not None else None
    observers: list[CallObserver] = [access_log]
    if metrics is not None:
        observers.append(lambda call: metrics.observe_call(call.method, call.code, call.seconds))
    interceptor = ServiceInterceptor(app.auth, admission, observers)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=capacity.threads, thread_name_prefix="rsign-rpc"),
        interceptors=[interceptor],
        # One server per port: with gRPC's default SO_REUSEPORT a second server on the same port
        # would start silently and take part of the connections. ``shared_port``: the processes
        # of one `rsign serve --processes N` share it on purpose (the kernel spreads connections
        # over them; only processes of the same user can join, Linux's rule for SO_REUSEPORT).
        options=[*server_options(), ("grpc.so_reuseport", 1 if shared_port else 0)],
        maximum_concurrent_rpcs=capacity.max_concurrent_rpcs,
    )
    pb_grpc.add_AuthServiceServicer_to_server(AuthServicer(app), server)
    stopping = threading.Event()
    pb_grpc.add_SigningServiceServicer_to_server(SigningServicer(app, stopping), server)
    pb_grpc.add_AuditServiceServicer_to_server(AuditServicer(app), server)
    pb_grpc.add_AdminServiceServicer_to_server(AdminServicer(app), server)
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    if reflection if reflection is not None else is_loopback(listen):
        # Reflection tells a caller the services and message types: what the .proto files in the
        # repository say anyway. Off by default off loopback all the same: less to probe.
        grpc_reflection.enable_server_reflection(
            (*SERVICES, health.SERVICE_NAME, grpc_reflection.SERVICE_NAME), server
        )
    try:
        if reloadable is None:
            port = server.add_insecure_port(listen)
        else:
            port = server.add_secure_port(listen, reloadable.credentials())
    except RuntimeError:  # grpc: "Failed to bind to address ..."
        port = 0
    if port == 0:
        server.stop(None)
        raise ConfigurationError(f"cannot listen on {listen}: the port is in use or the address is not available")
    try:
        if metrics is not None and metrics_listen is not None:
            metrics.serve(metrics_listen)
        # Before listening: what stopped processes left in flight is recorded and released first.
        app.signing.recovery.start()
    except BaseException:
        server.stop(None)
        if metrics is not None:
            metrics.close()
        raise
    server.start()
    monitor = StoreMonitor(app, hs)
    monitor.update()
    cp = Checkpointer(
        app.audit, app.journal, app.settings.checkpoint_every_records, app.settings.checkpoint_interval_seconds
    )
    cp.start()
    return RunningServer(
        server,
        port,
        hs,
        cp,
        monitor,
        streams=interceptor.streams,
        tls=reloadable,
        admission=admission,
        stopping=stopping,
        recovery=app.signing.recovery,
        metrics=metrics,
    )


def bound_address(listen: str, port: int) -> str:
    """``listen`` with the port the server was given (``HOST:0`` becomes ``HOST:PORT``)."""
    host, _, _ = listen.rpartition(":")
    return f"{host}:{port}"


@contextlib.contextmanager
def running(app: App, listen: str = "127.0.0.1:0") -> Iterator[RunningServer]:
    srv = start_server(app, listen)
    try:
        yield srv
    finally:
        srv.stop(grace=1.0)


def serve_forever(
    app: App,
    listen: str,
    on_ready: Callable[[str], str] | None = None,
    tls: TlsFiles | None = None,
    *,
    behind_tls_proxy: bool = False,
    on_reload: Callable[[], object] | None = None,
    before_stop: Callable[[float], object] | None = None,
    metrics_listen: str | None = None,
    reflection: bool | None = None,
    shared_port: bool = False,
) -> None:
    """Serve until SIGINT or SIGTERM, then drain in-flight RPCs (``shutdown_grace_seconds``) and
    stop; SIGHUP re-reads the TLS certificate files without dropping the service. ``on_reload``
    and ``before_stop`` (given the grace) let a companion listener (the HTTP face) follow: it
    stops before the final checkpoint so that its last records are under it. ``on_ready(address)``
    is printed once serving: ``address`` is the one bound (port 0 asks the system for a free one)."""
    srv = start_server(
        app,
        listen,
        tls,
        behind_tls_proxy=behind_tls_proxy,
        metrics_listen=metrics_listen,
        reflection=reflection,
        shared_port=shared_port,
    )
    received: deque[int] = deque()

    def on_signal(signum: int, _frame: object) -> None:
        # Only an append (atomic): a handler runs in the main thread between any two bytecodes,
        # even inside a lock's critical section, and a second signal arriving while a first
        # handler held an Event's lock (Event.set) deadlocked the process: SIGTERM twice in quick
        # succession left it serving forever.
        received.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    mode = "plaintext" if tls is None else "mutual TLS" if tls.mutual else "TLS"
    bound = bound_address(listen, srv.port)
    log.info("rsign listening on %s (%s)", bound, mode)
    if on_ready is not None:
        print(on_ready(bound), flush=True)
    stopping = False
    while not stopping:
        # Never an untimed wait: Python runs signal handlers in the main thread only, and the
        # kernel may deliver SIGTERM to any thread (there are dozens: gRPC, streams, HSM pool).
        # A main thread parked in an untimed wait would then never see it: SIGTERM ignored.
        if not received:
            time.sleep(0.1)
            continue
        while received:
            if received.popleft() != signal.SIGHUP:
                stopping = True
            elif srv.tls is not None:
                srv.tls.reload()
                if on_reload is not None:
                    on_reload()
            else:
                log.warning("SIGHUP: no TLS certificate configured, nothing to reload")
    grace = app.settings.shutdown_grace_seconds
    log.info("shutting down (grace %.1f s)", grace)
    _exit_after(grace + SHUTDOWN_MARGIN + 1.5)  # covers the final checkpoint and closing the HSM workers
    if before_stop is not None:
        before_stop(grace)
    srv.stop(grace)


def _exit_after(seconds: float) -> None:
    """Last resort: the process ends after ``seconds`` whatever is stuck (a worker thread that
    ignores cancellation, an HSM that stops answering): an operator's SIGTERM is never ignored."""

    def give_up() -> None:
        log.critical("shutdown did not complete within %.1f s; exiting now (no final checkpoint?)", seconds)
        os._exit(1)

    timer = threading.Timer(seconds, give_up)
    timer.daemon = True
    timer.start()
