"""Nothing consumed is stranded: the in-flight ledger and its reconciliation.

Why: hash occurrences are consumed (committed) before the HSM sees them, so that no item is ever
signed twice, and a signature leaves only after its success record is committed. If the process
dies, or the audit store stops answering, between those two commits, the occurrences stay consumed
with no record of what became of them, and the documents could never be signed again ("already
signed with this credential"), although no signature was ever delivered.

The ledger (store tables ``signing_inflight`` and ``signing_streams``):

- the transaction that consumes occurrences (a unary request; each stream chunk) inserts ONE
  in-flight row naming them (SAD, positions, who asked); the transaction that commits their
  outcome records deletes it, and must find it: if it is gone, another replica settled it (this
  one was presumed dead), so that transaction rolls back and nothing is delivered;
- a stream's row is inserted with batch.start, its counts move in each chunk's commit, and it is
  deleted with batch.end.

Reconciliation gives every stranded occurrence its outcome, a ``sign.hash`` failure "interrupted:
no signature delivered" naming the original caller, and releases it (a new Authorize can sign the
document); it closes every stranded stream with a ``batch.end`` failure and its counts. It runs

- at server start, before listening, for every replica known dead;
- periodically, on the thread that also renews this replica's lease, for replicas that died since;
- for this replica's own rows whose request ended without settling them (the audit store failed
  mid-request; in-memory list), retried every second until the store answers again.

When a replica is dead: on SQLite (one host), exactly and at once, by its liveness flock
(``Store.replica_alive``); on PostgreSQL, when its lease (database time, renewed every third of
``replica_lease_seconds``) has run out. A replica presumed dead while alive (its lease ran out while
it was cut off from the database) finds its rows gone at its next commit and delivers nothing: the
outcome the reconciler recorded is the only one.
"""

from __future__ import annotations

import contextlib
import enum
import logging
import os
import socket
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from rsign.audit.journal import AuditedStore, AuditedTx
from rsign.domain import context
from rsign.domain.clock import Clock
from rsign.domain.errors import Unavailable
from rsign.domain.events import Action, AuditEvent, Result
from rsign.domain.records import InflightView, StreamView

log = logging.getLogger(__name__)

INTERRUPTED = "interrupted: no signature delivered"
_RETRY = 1.0  # seconds between attempts to settle this replica's own orphans
# Settled per transaction: up to this many ledger rows, and no more items than _ITEMS_PER_TX (one row
# alone may be a 10,000-hash request): a backlog of many thousands (a replica killed mid-batch) goes
# in a few large commits, not one per chunk, and memory stays bounded.
_ROWS_PER_TX = 20
_ITEMS_PER_TX = 5000


class StreamEnd(enum.StrEnum):
    """How a SignHashStream ended: the first word of its batch.end reason and ``ended_by``."""

    COMPLETED = "completed"
    DEADLINE = "deadline"
    CANCELLED = "client cancel"
    SHUTDOWN = "server shutdown"
    AUDIT = "audit failure"
    HSM = "HSM failure"
    IDLE = "idle"
    ABORTED = "aborted"  # a hash differs from the SAD's list, or a malformed chunk
    ENDED_EARLY = "client ended early"  # the client closed its side before sending every hash
    INTERRUPTED = "interrupted"  # the process serving it died: closed by reconciliation
    ERROR = "error"


class Superseded(Unavailable):
    """This request's in-flight work was settled by another replica, which presumed this process
    dead: its outcome is already recorded ("interrupted") and nothing of it may be delivered."""

    def __init__(self) -> None:
        super().__init__(
            "the service lost track of this request (its work was closed as interrupted); nothing was"
            " delivered: authorize again"
        )


Caller = tuple[str, str, str, str]  # actor, agency, request id, client


def caller() -> Caller:
    ctx = context.current()
    return ctx.actor, ctx.agency, ctx.request_id, ctx.client


def batch_end(stream: StreamView, end: StreamEnd, message: str = "", failed_more: int = 0, **extra: Any) -> AuditEvent:
    """The batch.end record of ``stream`` (its committed counts, plus ``failed_more`` items failed in
    the closing transaction): success only when it completed."""
    failed = stream.failed + failed_more
    return AuditEvent(
        Action.BATCH_END,
        Result.SUCCESS if end is StreamEnd.COMPLETED else Result.FAILURE,
        actor=stream.actor,
        agency=stream.agency,
        credential_id=stream.credential_id,
        key_version=stream.key_version,
        digest=stream.fingerprint,
        reason=f"{end}: {message}" if message else str(end),
        details={
            "sad_id": stream.sad_id,
            "ended_by": str(end),
            "authorized": stream.authorized,
            "received": stream.received,
            "signed": stream.signed,
            "failed": failed,
            "not_reached": max(0, stream.authorized - stream.received),
            **extra,
        },
        request_id=stream.request_id,
        client=stream.client,
    )


@dataclass
class _Orphan:
    inflight: list[int]
    stream: int | None
    end: StreamEnd
    message: str


class Recovery:
    """This process as a signing replica: its id and lease, the ledger transactions, and the
    reconciler (see the module docstring)."""

    def __init__(self, store: AuditedStore, clock: Clock, lease_seconds: float = 30.0) -> None:
        self._store = store
        self._clock = clock
        self.replica_id = uuid.uuid4().hex
        self._lease = max(3.0, lease_seconds)
        self._renewed = float("-inf")  # monotonic time of the last committed lease renewal
        self._host = socket.gethostname()[:256]
        self._guard = threading.Lock()
        self._orphans: list[_Orphan] = []
        self._serving = 0  # servers started on this replica and not yet stopped
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()

    def now(self) -> float:
        return self._clock.now()

    # -- the ledger's transactions -------------------------------------------------------------

    @contextlib.contextmanager
    def tx(self) -> Iterator[AuditedTx]:
        """A write transaction that may insert ledger rows: it carries this replica's lease
        renewal when one is due, so that a replica's rows never exist without its lease."""
        started = time.monotonic()
        due = started - self._renewed >= self._lease / 3
        if due:
            self._store.store.hold_replica_lock(self.replica_id)  # before any row of ours exists
        try:
            with self._store.tx() as t:
                if due:
                    t.renew_lease(self.replica_id, self._host, os.getpid(), self._lease)
                yield t
        except BaseException:
            if due:
                self._renewed = float("-inf")
            raise
        if due:
            self._renewed = started

    def orphaned(
        self, inflight: Sequence[int], stream: int | None, end: StreamEnd = StreamEnd.ERROR, message: str = ""
    ) -> None:
        """A request or stream of this replica ended without settling its ledger rows (its last
        transaction failed): settle them as soon as the store answers. Rows already settled are
        skipped, so handing over too much is harmless."""
        if not inflight and stream is None:
            return
        with self._guard:
            self._orphans.append(_Orphan(list(inflight), stream, end, message))
        self._wake.set()
        self._ensure_thread()

    @property
    def orphans(self) -> int:
        with self._guard:
            return len(self._orphans)

    # -- the server's lifecycle ----------------------------------------------------------------

    def start(self) -> int:
        """A server starts on this replica: settle what dead replicas left (before listening), then
        keep the lease and reconcile periodically. Returns how many occurrences were settled."""
        with self._guard:
            self._serving += 1
        self._store.store.hold_replica_lock(self.replica_id)
        self.renew()
        settled = self.reconcile()
        if settled:
            log.warning("reconciled %d hash occurrence(s) left in flight by stopped processes", settled)
        self._ensure_thread()
        return settled

    def stop(self) -> None:
        """A server stops: one last attempt at this replica's orphans; the last server to stop
        ends the thread and, if this replica holds nothing, gives up its lease."""
        with self._guard:
            self._serving = max(0, self._serving - 1)
            last = self._serving == 0
        try:
            self._settle_orphans()
        except Exception:
            log.exception("could not settle in-flight work at shutdown; the next start will")
        if not last:
            return
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(2.0)  # within the shutdown's margin
        if not self.orphans:
            with contextlib.suppress(Exception), self._store.tx() as t:
                dropped = t.drop_replica(self.replica_id)
            if dropped:
                self._store.store.release_replica_lock(remove=True)
                self._renewed = float("-inf")  # signing in-process after this registers again first

    def renew(self) -> None:
        started = time.monotonic()
        with self._store.tx() as t:
            t.renew_lease(self.replica_id, self._host, os.getpid(), self._lease)
        self._renewed = started

    def _ensure_thread(self) -> None:
        with self._guard:
            if self._thread is not None and self._thread.is_alive():
                return
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, daemon=True, name="rsign-recovery")
            self._thread.start()

    def _run(self) -> None:
        next_scan = time.monotonic() + self._lease / 3
        while not self._stop.is_set():
            with self._guard:
                serving, orphans = self._serving > 0, bool(self._orphans)
            if not serving and not orphans:
                return  # an in-process signer's thread lives only while it has orphans
            try:
                if orphans:
                    self._settle_orphans()
                if serving and time.monotonic() >= next_scan:
                    next_scan = time.monotonic() + self._lease / 3
                    self.renew()
                    self.reconcile()
            except Exception as exc:  # the store is down: try again later
                log.warning("reconciliation postponed: %s", getattr(exc, "message", type(exc).__name__))
            self._wake.wait(_RETRY if orphans else self._lease / 3)
            self._wake.clear()

    # -- reconciliation ------------------------------------------------------------------------

    def reconcile(self) -> int:
        """Settle this replica's orphans and everything dead replicas hold; forget dead replicas.
        Returns how many occurrences were settled."""
        settled = self._settle_orphans()
        with self._store.read() as t:
            holders = t.replicas_holding(self.replica_id)
            idle = t.idle_replicas(self.replica_id)
        for rid, expired in holders.items():
            if self._dead(rid, expired):
                settled += self._settle_replica(rid)
        for rid, expired in idle.items():
            if self._dead(rid, expired):
                self._forget(rid)
        return settled

    def _dead(self, replica_id: str, lease_expired: bool) -> bool:
        alive = self._store.store.replica_alive(replica_id)
        return lease_expired if alive is None else not alive

    def _forget(self, replica_id: str) -> None:
        with self._store.tx() as t:
            dropped = t.drop_replica(replica_id)
        if dropped:
            self._store.store.forget_replica(replica_id)

    def _settle_replica(self, replica_id: str) -> int:
        settled = 0
        while rows := self._rows(replica_id=replica_id):
            settled += self._settle_all(rows)
        with self._store.read() as t:
            streams = t.stream_rows(replica_id=replica_id)
        for s in streams:
            settled += self._close_stream(
                s.id, StreamEnd.INTERRUPTED, "the process serving the stream stopped; the rest was not signed"
            )
        self._forget(replica_id)
        log.warning("replica %s was not running any more: %d occurrence(s) settled", replica_id, settled)
        return settled

    def _rows(self, **where: Any) -> list[InflightView]:
        with self._store.read() as t:
            return t.inflight_rows(limit=_ROWS_PER_TX, **where)

    def _settle_orphans(self) -> int:
        with self._guard:
            todo, self._orphans = self._orphans, []
        settled = 0
        try:
            while todo:
                o = todo[0]
                if o.inflight:
                    with self._store.read() as t:
                        rows = t.inflight_rows(ids=o.inflight, limit=len(o.inflight))
                    settled += self._settle_all(rows)
                    o.inflight = []
                if o.stream is not None:
                    settled += self._close_stream(o.stream, o.end, o.message)
                todo.pop(0)
        finally:
            if todo:
                with self._guard:
                    self._orphans[:0] = todo
        return settled

    def _settle_all(self, rows: Sequence[InflightView]) -> int:
        """``rows`` in transactions of at most _ROWS_PER_TX rows and _ITEMS_PER_TX items (at least
        one row each)."""
        group: list[InflightView] = []
        settled = items = 0
        for row in rows:
            if group and (len(group) >= _ROWS_PER_TX or items + row.count > _ITEMS_PER_TX):
                settled += self._settle(group)
                group, items = [], 0
            group.append(row)
            items += row.count
        if group:
            settled += self._settle(group)
        return settled

    def _settle(self, rows: Sequence[InflightView]) -> int:
        """Stranded requests or chunks: their records and their occurrences released, in one
        transaction. Rows settled meanwhile (by their owner, or another reconciler) are skipped."""
        settled = 0
        with self._store.tx() as t:
            events: list[AuditEvent] = []
            for row in rows:
                if t.end_inflight([row.id]) == 0:
                    continue
                positions = list(range(row.start, row.start + row.count))
                hashes = t.sad_hashes(row.sad_id)
                t.release_hashes(row.credential_id, row.sad_id, positions)
                if row.stream_id is not None:
                    t.count_stream(row.stream_id, failed=row.count)
                events.extend(
                    AuditEvent(
                        Action.SIGN,
                        Result.FAILURE,
                        actor=row.actor,
                        agency=row.agency,
                        credential_id=row.credential_id,
                        key_version=row.key_version,
                        digest=hashes[p].hex() if p < len(hashes) else "",
                        reason=INTERRUPTED,
                        details={
                            "sad_id": row.sad_id,
                            "position": p,
                            "hash_algorithm": row.hash_alg,
                            "replica": row.replica_id,
                        },
                        request_id=row.request_id,
                        client=row.client,
                    )
                    for p in positions
                )
                settled += row.count
            if events:
                t.append(*events)
        return settled

    def _close_stream(self, stream_id: int, end: StreamEnd, message: str) -> int:
        """A stranded stream: its chunks' rows first, then its batch.end."""
        settled = 0
        while rows := self._rows(stream_id=stream_id):
            settled += self._settle_all(rows)
        with self._store.tx() as t:
            stream = t.end_stream(stream_id)
            if stream is not None:
                t.append(batch_end(stream, end, message))
        return settled
