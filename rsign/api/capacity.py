"""Server capacity: who gets one of the server's threads, for how long, and the transport policy.

grpc's synchronous server runs every call in progress on one thread of a fixed pool
(``rpc_threads``). A stream holds its thread for as long as its client keeps it open, so a few
dozen streams that never sent a message used to take every thread, and Health.Check and every
other user's Login queued behind them. Now:

* a stream on which the client sends nothing for ``stream_idle_seconds`` is closed with
  DEADLINE_EXCEEDED "no message for N s: stream closed" and audited (``first_message`` below for
  the first message, ``rsign.signing.batch`` for the rest);
* ``Admission`` decides on the call's own thread, first thing, never waiting: a refused call
  (RESOURCE_EXHAUSTED) gives its thread back at once. Streaming calls hold at most
  ``rpc_stream_threads`` threads; authenticated calls at most ``rpc_threads -
  rpc_reserved_threads``, so the reserved threads always remain for the public calls
  (Health.Check, Login), which are never refused here; and each session and user has caps on
  streams and unary calls in progress;
* ``server_options``: keepalive, connection age and message size, each value explained.

Health.Watch is not counted: grpcio-health serves it without holding a thread (its handler
returns at once and updates are sent from the thread that changes the status).
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable, Hashable, Iterator
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass
from typing import TypeVar

from rsign.domain.errors import ConfigurationError, ResourceExhausted, StreamIdle
from rsign.domain.principal import Principal
from rsign.domain.settings import Settings

T = TypeVar("T")

MiB = 1024 * 1024


@dataclass(frozen=True)
class Capacity:
    threads: int
    stream_threads: int
    reserved_threads: int
    streams_per_session: int
    streams_per_user: int
    unary_per_session: int
    unary_per_user: int
    idle_seconds: float

    @classmethod
    def from_settings(cls, s: Settings) -> Capacity:
        cap = cls(
            threads=s.rpc_threads,
            stream_threads=s.rpc_stream_threads,
            reserved_threads=s.rpc_reserved_threads,
            streams_per_session=s.streams_per_session,
            streams_per_user=s.streams_per_user,
            unary_per_session=s.unary_per_session,
            unary_per_user=s.unary_per_user,
            idle_seconds=s.stream_idle_seconds,
        )
        cap.check()
        return cap

    def check(self) -> None:
        """Refuse a configuration that would bring the starvation back (at server start)."""
        if self.reserved_threads < 1 or self.reserved_threads >= self.threads:
            raise ConfigurationError(
                f"rpc_reserved_threads must be at least 1 and less than rpc_threads ({self.threads}): "
                "Health.Check and Login need threads no other call can take"
            )
        if not 1 <= self.stream_threads <= self.authenticated_threads:
            raise ConfigurationError(
                f"rpc_stream_threads must be between 1 and rpc_threads - rpc_reserved_threads "
                f"({self.authenticated_threads})"
            )
        for name in ("streams_per_session", "streams_per_user", "unary_per_session", "unary_per_user"):
            if getattr(self, name) < 1:
                raise ConfigurationError(f"{name} must be at least 1")
        if self.idle_seconds <= 0:
            raise ConfigurationError("stream_idle_seconds must be positive: an idle stream holds a server thread")

    @property
    def authenticated_threads(self) -> int:
        return self.threads - self.reserved_threads

    @property
    def max_concurrent_rpcs(self) -> int:
        # grpc refuses calls beyond this many in progress or queued (RESOURCE_EXHAUSTED, no thread
        # taken). Twice the threads: a burst up to one pool's worth waits in the queue (each
        # queued call is short: admission refuses the excess in microseconds), and the queue
        # never grows so deep that a Health.Check behind it waits seconds.
        return 2 * self.threads


_Budget = tuple[Hashable, int, str]  # (counter key, limit, message when it is reached)


class Admission:
    """Counts calls in progress; each ``admit_*`` takes a slot in every budget the call falls
    under, or none (RESOURCE_EXHAUSTED naming the limit), and returns the release."""

    def __init__(self, capacity: Capacity) -> None:
        self.capacity = capacity
        self._lock = threading.Lock()
        self._held: Counter[Hashable] = Counter()

    def admit_server(self, streaming: bool) -> Callable[[], None]:
        """Server-wide budgets of an authenticated call: checked before authentication, which
        reads the database, so that a flood is refused at the cost of a counter."""
        cap = self.capacity
        budgets: list[_Budget] = [
            (
                "authenticated",
                cap.authenticated_threads,
                f"the server is busy ({cap.authenticated_threads} calls in progress, its limit); retry shortly",
            )
        ]
        if streaming:
            budgets.append(
                (
                    "streams",
                    cap.stream_threads,
                    f"the server is busy ({cap.stream_threads} streams in progress, its limit); retry shortly",
                )
            )
        return self._take(budgets)

    def admit_caller(self, who: Principal, streaming: bool) -> Callable[[], None]:
        cap = self.capacity
        if streaming:
            kind, per_session, per_user = "streams", cap.streams_per_session, cap.streams_per_user
        else:
            kind, per_session, per_user = "calls", cap.unary_per_session, cap.unary_per_user
        return self._take(
            [
                (
                    ("session", kind, who.session_id),
                    per_session,
                    f"too many {kind} in progress in this session (at most {per_session}); wait for one to finish",
                ),
                (
                    ("user", kind, who.user_id),
                    per_user,
                    f"too many {kind} in progress for {who.user_id} (at most {per_user} across all "
                    "sessions); wait for one to finish",
                ),
            ]
        )

    def in_progress(self, key: Hashable) -> int:
        """Calls holding a slot under ``key`` ("authenticated", "streams", ...): for monitoring."""
        with self._lock:
            return self._held[key]

    def _take(self, budgets: list[_Budget]) -> Callable[[], None]:
        with self._lock:
            for key, limit, message in budgets:
                if self._held[key] >= limit:
                    raise ResourceExhausted(message)
            for key, _, _ in budgets:
                self._held[key] += 1
        keys = [key for key, _, _ in budgets]
        released = threading.Event()

        def release() -> None:
            with self._lock:
                if released.is_set():
                    return
                released.set()
                for key in keys:
                    self._held[key] -= 1
                    if self._held[key] <= 0:
                        del self._held[key]  # per-session keys must not accumulate

        return release


def first_message(requests: Iterator[T], idle_seconds: float) -> T | None:
    """A stream's first message, or None if the client closed the stream without sending one;
    ``StreamIdle`` if none arrives within ``idle_seconds``.

    grpc's request iterator has no timeout, so the read runs on a thread of its own (not one of
    the server's). When the call then ends with the idle status, grpc ends that read too.
    """
    result: Future[T | None] = Future()

    def read() -> None:
        try:
            result.set_result(next(requests, None))
        except BaseException as exc:  # handed to the caller, which decides
            result.set_exception(exc)

    threading.Thread(target=read, daemon=True, name="rsign-stream-first").start()
    try:
        return result.result(timeout=idle_seconds)
    except FutureTimeout:
        raise StreamIdle(idle_seconds) from None


def server_options() -> list[tuple[str, int]]:
    """The gRPC server's transport policy. Every value is deliberate; grpc's defaults were not
    (a client pinging every second got GOAWAY after ~30 s by accident of them)."""
    return [
        # 4 MiB (grpc's default, set on purpose): the largest legitimate message is an Authorize or
        # SignHash of multisign_max (10,000) SHA-512 digests, 10,000 x 66 B (64 B + field tag and
        # length) = 660 KB. A bigger one is refused by grpc before it is parsed (RESOURCE_EXHAUSTED),
        # so a caller cannot make the server buffer and decode megabytes per call.
        ("grpc.max_receive_message_length", 4 * MiB),
        # Server keepalive: ping a connection after 60 s without activity, and close it when the
        # ping is not answered within 20 s. A client that vanished (power cut, a NAT that dropped
        # the flow) frees its calls' threads within ~80 s instead of the kernel's hours of TCP
        # retries; one ping a minute per connection costs nothing.
        ("grpc.keepalive_time_ms", 60_000),
        ("grpc.keepalive_timeout_ms", 20_000),
        # Client keepalive: clients may ping as often as every 10 s (what grpc clients are
        # usually configured with, and enough for any NAT or load balancer timeout) ...
        ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
        # ... and a client pinging faster gets two strikes, then GOAWAY (ENHANCE_YOUR_CALM): a
        # ping flood costs the server a counter, not a thread.
        ("grpc.http2.max_ping_strikes", 2),
        # ... also between calls: service software keeps its channel open across batches, and a
        # connection dropped by a NAT between two batches would fail the next call.
        ("grpc.keepalive_permit_without_calls", 1),
        # Every connection is recycled after 30 min (grpc adds +-10 % jitter, so clients do not
        # reconnect in step): clients spread again over replicas added meanwhile, and a session
        # does not pin one connection for its whole 8 h. Calls in progress then get 2 min to end
        # (a 10,000-hash batch takes seconds) before the connection is closed under them.
        ("grpc.max_connection_age_ms", 30 * 60_000),
        ("grpc.max_connection_age_grace_ms", 2 * 60_000),
        # A connection with no call for 10 min is closed (GOAWAY; a grpc client reconnects on its
        # next call): an abandoned client holds no server memory beyond that.
        ("grpc.max_connection_idle_ms", 10 * 60_000),
    ]
