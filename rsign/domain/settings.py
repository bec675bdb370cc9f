"""Settings as the services see them (loaded by ``rsign.runtime.config``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from rsign.domain.certificates import CertificateIssuer

DEFAULT_LISTEN = "127.0.0.1:50051"


@dataclass(frozen=True)
class HsmConfig:
    """Where the keys live. The PIN is never printed (``repr=False``) and never logged."""

    module: str
    token_label: str
    pin: str = field(repr=False)
    # SoftHSMv2 reads its configuration from this environment variable; None for a real HSM.
    softhsm_conf: str | None = None


@dataclass(frozen=True)
class EmbeddedDefault:
    """What runs when no PKCS#11 module is configured: a development token and a development CA
    inside the state directory. The top of the program (CLI, tests, development tools) supplies
    it from ``rsign.dev``; the runtime only calls it, so no production path imports rsign.dev."""

    # Creates the token on first use and returns its configuration; the caller holds the state
    # directory's initialisation lock.
    token: Callable[[Path], HsmConfig]
    # The certificate issuer for that token (same lock).
    issuer: Callable[[Path], CertificateIssuer]


@dataclass(frozen=True)
class Settings:
    state_dir: Path
    database_url: str
    hsm: HsmConfig = field(repr=False)
    # Set when the embedded development token is in use (no PKCS#11 module configured); None
    # with a real HSM, which gets no development CA.
    embedded: EmbeddedDefault | None = field(default=None, repr=False)
    listen: str = DEFAULT_LISTEN
    hsm_workers: int = 0  # 0: one per CPU
    lockout_threshold: int = 5
    otp_window: int = 1  # steps either side; RFC 6238 recommends at most one
    session_idle_seconds: float = 15 * 60
    session_max_seconds: float = 8 * 3600
    sad_ttl_seconds: float = 300
    multisign_default: int = 10_000
    multisign_max: int = 10_000
    stream_inflight_chunks: int = 4  # per stream: bounds memory and HSM queue share
    # How long a replica is presumed alive after its last lease renewal (database time), when
    # nothing better tells (PostgreSQL; on SQLite a process's liveness lock tells at once). Its
    # in-flight signing work is reconciled by another replica after that (rsign.signing.recovery).
    replica_lease_seconds: float = 30.0
    # Time-sync health: NOT_SERVING while the service clock and the database server's clock differ
    # by more than this (TOTP windows, SAD and session expiry and audit times all read the service
    # clock). 0 disables the check.
    max_clock_drift_seconds: float = 30.0
    checkpoint_every_records: int = 10_000
    # Also the window in which records after the last anchored checkpoint could be cut without an
    # offline check noticing (README, Audit); each checkpoint costs one HSM anchor write.
    checkpoint_interval_seconds: float = 10.0
    database_busy_timeout_seconds: float = 5.0
    pin_min_length: int = 6
    # Transport security (rsign.api.tls): the listener's certificate chain and key (PEM files);
    # with a client CA, clients must present a certificate it issued (mutual TLS). Without a
    # certificate the service listens in plaintext, which it allows on a loopback address only.
    tls_cert: str = ""
    tls_key: str = ""
    tls_client_ca: str = ""
    # On SIGTERM/SIGINT: calls in progress get this long to finish, then are cancelled; the
    # process exits within a few seconds more, whatever is stuck (rsign.api.server).
    shutdown_grace_seconds: float = 10.0
    # Capacity (rsign.api.capacity): no caller can starve the others. A stream the client sends
    # nothing on (its first message included) for this long is closed (DEADLINE_EXCEEDED, audited).
    stream_idle_seconds: float = 10.0
    rpc_threads: int = 64  # the gRPC server's worker threads: one per call in progress
    rpc_stream_threads: int = 32  # most of them streaming calls may hold at once
    rpc_reserved_threads: int = 8  # never given to authenticated calls: Health.Check and Login
    streams_per_session: int = 4
    streams_per_user: int = 8  # a user with two sessions (two desks) gets a full share on each
    unary_per_session: int = 16
    unary_per_user: int = 32
    # The HTTP face (rsign.http): requests in progress (connections included) beyond which it
    # answers 503 at once, and the worker threads its requests' database and HSM work runs on, so
    # that HTTP traffic can never hold more than a few of the database connections and HSM workers
    # the gRPC face needs.
    http_requests: int = 64
    http_threads: int = 8

    def with_overrides(self, **kw: Any) -> Settings:
        return replace(self, **kw)
