"""Builds and runs the gRPC server around an ``App``."""

from __future__ import annotations

import contextlib
import logging
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from rsign.api.capacity import Admission, Capacity, server_options
from rsign.api.interceptors import ServiceInterceptor
from rsign.api.servicers import AdminServicer, AuditServicer, AuthServicer, SigningServicer
from rsign.audit.service import Checkpointer
from rsign.runtime.app import App
from rsign.v1 import rsign_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

SERVICES = ("rsign.v1.AuthService", "rsign.v1.SigningService", "rsign.v1.AuditService", "rsign.v1.AdminService")


@dataclass
class RunningServer:
    server: grpc.Server
    port: int
    health: health.HealthServicer
    checkpointer: Checkpointer
    monitor: StoreMonitor
    admission: Admission  # calls in progress per budget (rsign.api.capacity)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def stop(self, grace: float = 5.0) -> None:
        self.monitor.stop()
        set_health(self.health, False)
        self.server.stop(grace).wait()
        self.checkpointer.stop()  # signs a last checkpoint over everything written


def set_health(hs: health.HealthServicer, serving: bool) -> None:
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in ("", *SERVICES):
        hs.set(name, status)


class StoreMonitor:
    """Health follows the audit store: NOT_SERVING from the first failed write until a probe
    (an audit insert, rolled back) succeeds again. Signing fails closed meanwhile."""

    def __init__(self, app: App, hs: health.HealthServicer) -> None:
        self._app = app
        self._stop = threading.Event()
        app.store.on_health_change(lambda ok: set_health(hs, ok and app.hsm_healthy()))
        self._thread = threading.Thread(target=self._run, daemon=True, name="rsign-store-monitor")
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(1.0):
            if not self._app.store.healthy:
                self._app.store.probe()

    def stop(self) -> None:
        self._stop.set()


def start_server(app: App, listen: str) -> RunningServer:
    """Start serving on ``listen`` ("HOST:PORT"; port 0 picks a free one). Non-blocking."""
    capacity = Capacity.from_settings(app.settings)  # thread budgets and limits: see rsign.api.capacity
    admission = Admission(capacity)
    server = grpc.server(
        ThreadPoolExecutor(max_workers=capacity.threads, thread_name_prefix="rsign-rpc"),
        interceptors=[ServiceInterceptor(app.auth, admission)],
        options=server_options(),
        maximum_concurrent_rpcs=capacity.max_concurrent_rpcs,
    )
    pb_grpc.add_AuthServiceServicer_to_server(AuthServicer(app), server)
    pb_grpc.add_SigningServiceServicer_to_server(SigningServicer(app), server)
    pb_grpc.add_AuditServiceServicer_to_server(AuditServicer(app), server)
    pb_grpc.add_AdminServiceServicer_to_server(AdminServicer(app), server)
    hs = health.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(hs, server)
    port = server.add_insecure_port(listen)
    if port == 0:
        raise OSError(f"cannot listen on {listen}")
    server.start()
    set_health(hs, app.store.healthy)
    monitor = StoreMonitor(app, hs)
    cp = Checkpointer(
        app.audit, app.journal, app.settings.checkpoint_every_records, app.settings.checkpoint_interval_seconds
    )
    cp.start()
    return RunningServer(server, port, hs, cp, monitor, admission=admission)


@contextlib.contextmanager
def running(app: App, listen: str = "127.0.0.1:0") -> Iterator[RunningServer]:
    srv = start_server(app, listen)
    try:
        yield srv
    finally:
        srv.stop(grace=1.0)


def serve_forever(app: App, listen: str, on_ready: str | None = None) -> None:
    """Serve until SIGINT or SIGTERM, then drain in-flight RPCs and shut the HSM workers down."""
    srv = start_server(app, listen)
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    log.info("rsign listening on %s", listen)
    if on_ready:
        print(on_ready, flush=True)
    stop.wait()
    log.info("shutting down")
    srv.stop(grace=10.0)
