"""Prometheus metrics for ``rsign serve --metrics-listen``.

The domain knows nothing of Prometheus. What happens is counted where it is already seen:

* RPCs (method, status, latency): the interceptor reports every call it ends (``observe_call``);
* signatures (algorithm, result), audit append latency and group size: the audit journal reports
  every committed group (``AuditedStore.on_commit``), so a signature counted is a signature on
  record, refusals and failures included;
* everything else is read when scraped, through existing getters: the HSM pools' ``stats()``, the
  store's error count, the last signed checkpoint, the TLS certificate in use.

Each server has its own registry (tests run several servers in one process); the endpoint is
prometheus-client's own WSGI server, on a loopback address unless the operator allows otherwise
(``rsign.api.listener.check_metrics_listen``).
"""

from __future__ import annotations

import logging
import threading
from collections import Counter as Tally
from collections.abc import Callable, Iterator, Sequence
from datetime import datetime
from typing import Any
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from rsign.api.listener import ReloadableTls, split_listen
from rsign.domain.errors import ConfigurationError, RsignError
from rsign.domain.events import Action, AuditEvent, ItemEvents, records
from rsign.runtime.app import App

log = logging.getLogger(__name__)

_LATENCY = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 120.0)
_APPEND = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0)
_GROUP = (1, 2, 4, 8, 16, 32, 64, 128)


class Metrics:
    def __init__(self, app: App, tls: ReloadableTls | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.rpcs = Counter("rsign_rpcs", "RPCs ended, by method and gRPC status.", ["method", "code"], registry=r)
        self.rpc_seconds = Histogram(
            "rsign_rpc_duration_seconds",
            "RPC duration (a stream: its whole life), by method.",
            ["method"],
            buckets=_LATENCY,
            registry=r,
        )
        self.signatures = Counter(
            "rsign_signatures",
            "Signature records committed to the audit log, by scheme-hash algorithm and result.",
            ["algorithm", "result"],
            registry=r,
        )
        self.audit_records = Counter("rsign_audit_records", "Audit records committed.", registry=r)
        self.audit_append = Histogram(
            "rsign_audit_append_seconds",
            "Audit group commit: chaining, the HSM MAC and the database commit.",
            buckets=_APPEND,
            registry=r,
        )
        self.audit_group = Histogram(
            "rsign_audit_group_callers", "Callers sharing one audit group commit.", buckets=_GROUP, registry=r
        )
        r.register(_StateCollector(app, tls))
        self._unsubscribe = app.journal.on_commit(self.committed)
        self._http: WSGIServer | None = None

    def observe_call(self, method: str, code: str, seconds: float) -> None:
        self.rpcs.labels(method, code).inc()
        self.rpc_seconds.labels(method).observe(seconds)

    def committed(self, events: Sequence[AuditEvent | ItemEvents], callers: int, seconds: float) -> None:
        self.audit_records.inc(records(events))
        self.audit_append.observe(seconds)
        self.audit_group.observe(callers)
        # Tallied first: a batch chunk commits hundreds of signature records at once.
        tally: Tally[tuple[str, str]] = Tally()
        for ev in events:
            one = ev.template if isinstance(ev, ItemEvents) else ev
            if one.action is Action.SIGN:
                d = one.details
                alg = f"{d['scheme']}-{d['hash_algorithm']}" if "scheme" in d and "hash_algorithm" in d else "unknown"
                if isinstance(ev, ItemEvents):
                    for item in ev.items:
                        tally[(alg, str(item[2]))] += 1
                else:
                    tally[(alg, str(ev.result))] += 1
        for (alg, result), n in tally.items():
            self.signatures.labels(alg, result).inc(n)

    def serve(self, listen: str) -> None:
        """Start the HTTP endpoint (``/metrics``) on ``listen``, checked by ``check_metrics_listen``."""
        host, port = split_listen(listen)
        try:
            self._http, _thread = start_http_server(port, host, registry=self.registry)
        except OSError as exc:
            raise ConfigurationError(f"cannot serve metrics on {listen}: {exc.strerror or exc}") from None
        log.info("metrics on http://%s/metrics", listen)

    @property
    def port(self) -> int:
        return int(self._http.server_address[1]) if self._http is not None else 0

    def close(self) -> None:
        self._unsubscribe()
        if self._http is not None:
            http, self._http = self._http, None
            # shutdown() waits for serve_forever to return: off the caller's thread, bounded.
            t = threading.Thread(target=http.shutdown, daemon=True)
            t.start()
            t.join(2.0)
            http.server_close()


class _StateCollector(Collector):
    """Gauges read at scrape time from the running service."""

    def __init__(self, app: App, tls: ReloadableTls | None) -> None:
        self._app = app
        self._tls = tls

    def describe(self) -> list[Metric]:
        return []  # values depend on what is configured; nothing to check at registration

    def collect(self) -> Iterator[Metric]:
        yield from self._pools()
        errors = CounterMetricFamily("rsign_database_errors", "Failed database operations since start.")
        errors.add_metric([], self._app.store.errors)
        yield errors
        yield from self._checkpoint()
        if self._tls is not None and self._tls.not_after:
            expiry = GaugeMetricFamily(
                "rsign_tls_certificate_expiry_timestamp_seconds", "When the served TLS certificate expires."
            )
            expiry.add_metric([], self._tls.not_after)
            yield expiry

    def _pools(self) -> Iterator[Metric]:
        pools: list[tuple[str, Any]] = [("signing", self._app.hsm), ("audit", self._app.audit_hsm)]
        families: dict[str, GaugeMetricFamily | CounterMetricFamily] = {
            "workers": GaugeMetricFamily("rsign_hsm_workers", "HSM worker processes configured.", labels=["pool"]),
            "alive": GaugeMetricFamily("rsign_hsm_workers_alive", "HSM worker processes running.", labels=["pool"]),
            "busy": GaugeMetricFamily("rsign_hsm_workers_busy", "HSM workers holding a job.", labels=["pool"]),
            "in_flight": GaugeMetricFamily("rsign_hsm_jobs_in_flight", "HSM jobs at a worker.", labels=["pool"]),
            "queued": GaugeMetricFamily("rsign_hsm_queue_depth", "HSM jobs waiting for a worker.", labels=["pool"]),
            "restarts": CounterMetricFamily("rsign_hsm_worker_restarts", "HSM workers replaced.", labels=["pool"]),
            "direct": CounterMetricFamily(
                "rsign_hsm_direct_jobs", "HSM jobs a calling thread ran on an idle worker.", labels=["pool"]
            ),
        }
        seen = False
        for name, hsm in pools:
            # Tests wrap the pool in a call counter (``inner``); a pool-less App has no stats.
            stats: Callable[[], Any] | None = getattr(hsm, "stats", None) or getattr(
                getattr(hsm, "inner", None), "stats", None
            )
            if stats is None or (name == "audit" and self._app.audit_hsm is self._app.hsm):
                continue
            s = stats()
            seen = True
            for field, family in families.items():
                family.add_metric([name], getattr(s, field))
        if seen:
            yield from families.values()

    def _checkpoint(self) -> Iterator[Metric]:
        try:
            with self._app.journal.read() as t:
                last = t.last_checkpoint()
        except RsignError:
            return  # the database error is counted; the gauge is absent rather than wrong
        if last is None:
            return
        at = datetime.fromisoformat(last.ts.replace("Z", "+00:00")).timestamp()
        ts = GaugeMetricFamily("rsign_audit_last_checkpoint_timestamp_seconds", "When the last checkpoint was signed.")
        ts.add_metric([], at)
        age = GaugeMetricFamily("rsign_audit_seconds_since_checkpoint", "Seconds since the last signed checkpoint.")
        age.add_metric([], max(0.0, self._app.clock.now() - at))
        seq = GaugeMetricFamily("rsign_audit_last_checkpoint_seq", "Records covered by the last checkpoint.")
        seq.add_metric([], last.seq)
        yield from (ts, age, seq)
