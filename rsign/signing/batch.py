"""One SignHashStream run: pipelined consumption, HSM signing and audit, in request order.

Per chunk of hashes received:
  1. check it against the SAD's ordered list (a mismatch aborts: nothing from that chunk on is
     signed);
  2. consume its hash occurrences in a transaction that also commits the audit records of the
     chunks that came back from the HSM since the last transaction (one commit per step, not two);
  3. hand it to the HSM pool (bounded: at most ``limit`` chunks in flight);
  4. yield chunks that came back, in order, once their audit records are committed.

A reader thread moves request messages into a small bounded queue, so that a client that waits
for each chunk's answer before sending the next (lock-step) is served as well as one that streams
ahead, and back-pressure reaches gRPC flow control when the queue is full.
"""

from __future__ import annotations

import hmac
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from itertools import repeat
from typing import Any, cast

from rsign.audit.journal import AuditedStore
from rsign.domain import context
from rsign.domain.algorithms import HashAlg, Scheme, SignSpec, check_digests
from rsign.domain.errors import (
    AlreadyExists,
    AuditUnavailable,
    DeadlineExceeded,
    HsmUnavailable,
    InvalidRequest,
    PermissionDenied,
    RsignError,
    StreamIdle,
    Unavailable,
)
from rsign.domain.events import Action, AuditEvent, ItemEvents, Result
from rsign.domain.records import CredentialView, SadView
from rsign.hsm.ports import Hsm, ItemFailure, SignResult
from rsign.signing.recovery import Recovery, StreamEnd, Superseded, batch_end, caller

log = logging.getLogger(__name__)

_WAKE = 0.5  # safety net: the loop re-checks at least this often
_DISCARDED = "signature discarded: the stream ended before it was delivered (released: authorize it again)"
_UNANSWERED = "discarded: the stream ended before the HSM answered (released: authorize it again)"
# How long a closing stream waits for its chunks still at the HSM. Bounded: at shutdown every
# stream closes at once and the HSM queue can hold seconds of work; what has not come back by then
# is audited as discarded and released (no signature of it ever leaves the service).
_CLOSE_WAIT = 1.5
_DEADLINE_SLACK = 1.0  # seconds: see BatchRun._call_gone
_CALL_STATE_WAIT = 0.25  # seconds: see the end of BatchRun.run


@dataclass(frozen=True)
class StreamChunk:
    offset: int
    signatures: list[bytes]  # b"" where the item failed
    errors: list[tuple[int, str]]  # (position in the SAD's list, reason)
    key_version: int


@dataclass
class _Pending:
    start: int
    hashes: Sequence[bytes]
    future: Future[list[SignResult]]
    ledger: int  # its in-flight row (rsign.signing.recovery)


@dataclass
class _Outcome:
    pending: _Pending
    chunk: StreamChunk
    events: list[AuditEvent | ItemEvents]
    released: list[int]  # positions given back: no signature of them leaves the service
    signed: int
    failed: int
    discarded: int


_END = object()


class _Inbox:
    """Reads an iterator on a thread into a bounded deque guarded by the run's condition, which is
    also notified when a chunk comes back from the HSM: the run loop sleeps until one of the two
    happens, never polls."""

    def __init__(self, source: Iterable[Sequence[bytes]], maxsize: int, cv: threading.Condition) -> None:
        self.items: deque[Any] = deque()
        self._max = maxsize
        self._cv = cv
        self._stop = False
        self._thread = threading.Thread(target=self._read, args=(iter(source),), daemon=True, name="rsign-stream-in")
        self._thread.start()

    def _put(self, item: Any, force: bool = False) -> bool:
        with self._cv:
            while not force and len(self.items) >= self._max and not self._stop:
                self._cv.wait(0.5)
            if self._stop:
                return False
            self.items.append(item)
            self._cv.notify_all()
            return True

    def _read(self, it: Iterator[Sequence[bytes]]) -> None:
        try:
            for chunk in it:
                if not self._put(chunk):
                    return
        except BaseException as exc:  # handed to the consumer, which decides
            self._put(exc, force=True)
            return
        self._put(_END, force=True)

    def pop(self) -> Any:
        """Caller holds the condition."""
        item = self.items.popleft()
        self._cv.notify_all()  # room for the reader
        return item

    def close(self) -> None:
        with self._cv:
            self._stop = True
            self._cv.notify_all()


@dataclass
class BatchRun:
    store: AuditedStore
    hsm: Hsm
    recovery: Recovery
    stream_id: int  # its open-stream row, inserted with batch.start
    cred: CredentialView
    spec: SignSpec
    sad: SadView
    keys: Sequence[tuple[bytes, int]]  # (digest, occurrence) of every item of the SAD's list
    hash_alg: HashAlg
    scheme: Scheme
    fingerprint: str
    limit: int
    # deadline_passed(slack): less than ``slack`` seconds are left before the client's deadline.
    deadline_passed: Callable[[float], bool]
    # The server is stopping (its calls are cancelled after the grace period): batch.end says so.
    shutting_down: Callable[[], bool] = lambda: False
    # > 0: end the stream (StreamIdle) when the client has sent nothing for this long while the
    # service waits on it (nothing queued, nothing at the HSM): an idle stream holds a server thread.
    idle_seconds: float = 0.0
    inflight: deque[_Pending] = field(default_factory=deque)
    # Back from the HSM but not committed: their transaction failed, so they were not delivered.
    uncommitted: list[_Pending] = field(default_factory=list)
    discarded: int = 0
    received: int = 0
    _cv: threading.Condition = field(default_factory=threading.Condition)
    _template: AuditEvent | None = None

    def run(self, chunks: Iterable[Sequence[bytes]]) -> Iterator[StreamChunk]:
        cv = self._cv
        inbox = _Inbox(chunks, maxsize=self.limit, cv=cv)
        end, message = StreamEnd.COMPLETED, ""
        ended = False
        # When the client was last heard from, or last given something it may wait for before
        # sending on (a lock-step client): the idle clock runs from the later of the two.
        heard = time.monotonic()

        def can_progress() -> bool:
            head_done = bool(self.inflight) and self.inflight[0].future.done()
            return head_done or (not ended and len(self.inflight) < self.limit and bool(inbox.items))

        try:
            while not (ended and not self.inflight):
                msg: Any = None
                with cv:
                    cv.wait_for(can_progress, timeout=_WAKE)
                    if not ended and len(self.inflight) < self.limit and inbox.items:
                        msg = inbox.pop()
                    waiting_on_client = not ended and not self.inflight and not inbox.items and msg is None
                if msg is not None:
                    heard = time.monotonic()
                ready = self._collect_ready()
                new: Sequence[bytes] | None = None
                if msg is _END:
                    ended = True
                elif isinstance(msg, BaseException):
                    raise msg
                elif msg:
                    new = msg
                error: RsignError | None = None
                if new is not None:
                    try:
                        self._check(new)
                    except RsignError as exc:
                        error, new = exc, None
                if ready or new is not None:
                    self._commit(ready, new)
                    for out in ready:
                        yield out.chunk
                    if ready:
                        heard = time.monotonic()
                if error is not None:
                    raise error
                if waiting_on_client and 0 < self.idle_seconds <= time.monotonic() - heard:
                    raise StreamIdle(self.idle_seconds)
            # The request side ended. gRPC ends it the same way when the call dies (deadline,
            # cancel, shutdown) as when the client closes it, and marks the call dead a moment
            # later: tell them apart, waiting that moment when the list is not complete.
            gone = self._call_gone()
            settle = time.monotonic() + _CALL_STATE_WAIT
            while gone is None and self.received < len(self.sad.hashes) and time.monotonic() < settle:
                time.sleep(0.01)
                gone = self._call_gone()
            if gone is not None:
                end, message = gone
            elif self.received < len(self.sad.hashes):
                end = StreamEnd.ENDED_EARLY
                message = f"the client closed the stream after {self.received} of {len(self.sad.hashes)} hashes"
        except StreamIdle as exc:
            end, message = StreamEnd.IDLE, exc.message
            raise
        except DeadlineExceeded as exc:
            end, message = StreamEnd.DEADLINE, exc.message
            raise
        except AuditUnavailable as exc:
            end, message = StreamEnd.AUDIT, exc.message
            raise
        except HsmUnavailable as exc:
            end, message = StreamEnd.HSM, exc.message
            raise
        except (PermissionDenied, InvalidRequest) as exc:
            end, message = StreamEnd.ABORTED, exc.message
            raise
        except RsignError as exc:
            end, message = self._call_gone() or (StreamEnd.ERROR, exc.message)
            raise
        except GeneratorExit:
            end, message = self._call_gone() or (StreamEnd.CANCELLED, "the call ended before the stream did")
            raise
        except BaseException as exc:
            end, message = self._call_gone() or (StreamEnd.ERROR, f"stream broken ({type(exc).__name__})")
            raise
        finally:
            inbox.close()
            self._close(end, message)

    def _call_gone(self) -> tuple[StreamEnd, str] | None:
        """Why the call is over, if it is: the server stopping, the client's deadline, its cancel."""
        cancelled = context.current().cancelled()
        if not (cancelled or self.deadline_passed(0.0)):
            return None
        left = f"{self.received} of {len(self.sad.hashes)} hashes were received"
        if self.shutting_down():
            return StreamEnd.SHUTDOWN, f"the server is shutting down; {left}"
        # The client's own deadline ends its call a little before the server's copy of it (set
        # when the request arrived) runs out, and gRPC shows that end as a cancel: a cancel this
        # close to the deadline is taken for it.
        if self.deadline_passed(_DEADLINE_SLACK if cancelled else 0.0):
            return StreamEnd.DEADLINE, f"the client's deadline passed; {left}"
        return StreamEnd.CANCELLED, f"the client cancelled the call; {left}"

    # -- steps -------------------------------------------------------------------------------

    def _check(self, chunk: Sequence[bytes]) -> None:
        if self.deadline_passed(0.0):
            raise DeadlineExceeded("the deadline passed; the rest of the batch was not signed")
        if context.current().cancelled():
            # Nobody would receive these signatures: the client cancelled, or the server is shutting down.
            raise Unavailable("the call ended (cancelled, or the server is shutting down); the rest was not signed")
        check_digests(self.hash_alg, list(chunk))
        pos, end = self.received, self.received + len(chunk)
        authorized = self.sad.hashes
        if end > len(authorized):
            raise PermissionDenied(
                f"the stream sent more than the {len(authorized)} hashes the SAD authorizes; stream aborted"
            )
        for i, (a, b) in enumerate(zip(chunk, authorized[pos:end], strict=True)):
            if not hmac.compare_digest(a, b):
                raise PermissionDenied(
                    f"hash #{pos + i + 1} differs from the SAD's list; stream aborted, nothing more signed"
                )

    def _collect_ready(self) -> list[_Outcome]:
        ready = []
        while self.inflight and self.inflight[0].future.done():
            ready.append(self._outcome(self.inflight.popleft(), delivered=True))
        return ready

    def _commit(self, ready: list[_Outcome], new: Sequence[bytes] | None) -> None:
        """One transaction: audit what came back (before it is sent), release items the HSM
        failed on (no signature exists), settle their in-flight rows, consume the new chunk
        (before the HSM sees it) with its in-flight row, and move the stream's counts."""
        pos = self.received
        ledger = 0
        try:
            with self.recovery.tx() as t:
                events = [ev for out in ready for ev in out.events]
                if events:
                    t.append(*events)
                for out in ready:
                    if out.released:
                        t.release_hashes(self.cred.credential_id, self.sad.id, out.released)
                if ready and t.end_inflight([out.pending.ledger for out in ready]) != len(ready):
                    raise Superseded()
                if new is not None:
                    t.consume_hashes(self.cred.credential_id, self.sad.id, pos, self.keys[pos : pos + len(new)])
                    ledger = t.add_inflight(
                        self.recovery.replica_id,
                        self.stream_id,
                        self.sad.id,
                        self.cred.credential_id,
                        self.cred.key_version,
                        self.hash_alg.value,
                        pos,
                        len(new),
                        caller(),
                        self.recovery.now(),
                    )
                counted = t.count_stream(
                    self.stream_id,
                    received=len(new) if new is not None else 0,
                    signed=sum(out.signed for out in ready),
                    failed=sum(out.failed for out in ready),
                )
                if not counted:
                    raise Superseded()
        except AlreadyExists:
            self.uncommitted.extend(out.pending for out in ready)
            raise PermissionDenied(
                "a hash of this chunk was already signed with this credential; stream aborted"
            ) from None
        except BaseException:
            self.uncommitted.extend(out.pending for out in ready)  # not delivered: _close settles them
            raise
        if new is not None:
            self.received += len(new)
            try:
                fut = self.hsm.sign_async(self.cred.cka_id, self.spec, new)
            except RsignError as exc:
                # Consumed, never signed: _close records and releases the chunk.
                failed: Future[list[SignResult]] = Future()
                failed.set_exception(exc)
                self.inflight.append(_Pending(pos, new, failed, ledger))
                raise HsmUnavailable(f"the HSM is unavailable ({exc.message}); the rest was not signed") from exc
            fut.add_done_callback(self._wake)
            self.inflight.append(_Pending(pos, new, fut, ledger))

    def _wake(self, _: Future[list[SignResult]]) -> None:
        with self._cv:
            self._cv.notify_all()

    def _item_template(self) -> AuditEvent:
        """What every sign.hash record of this stream shares (``ItemEvents``)."""
        if self._template is None:
            cred, ctx = self.cred, context.current()
            self._template = AuditEvent(
                Action.SIGN,
                credential_id=cred.credential_id,
                agency=cred.agency,
                key_version=cred.key_version,
                details={"sad_id": self.sad.id, "scheme": self.scheme.value, "hash_algorithm": self.hash_alg.value},
                actor=ctx.actor,
                request_id=ctx.request_id,
                client=ctx.client,
            )
        return self._template

    def _outcome(self, p: _Pending, delivered: bool) -> _Outcome:
        unanswered = not p.future.done()  # only when closing (delivered=False): see _CLOSE_WAIT
        discarded_reason = _UNANSWERED if unanswered else _DISCARDED
        try:
            results: list[SignResult] = [b""] * len(p.hashes) if unanswered else p.future.result()
        except RsignError as exc:
            results = [ItemFailure(exc.message)] * len(p.hashes)
        sigs: list[bytes] = []
        errs: list[tuple[int, str]] = []
        items: list[tuple[str, int, Result, str]] = []  # one sign.hash record each (ItemEvents)
        released: list[int] = []
        signed = discarded = 0
        n = len(p.hashes)
        if delivered and len(results) == n and not any(isinstance(r, ItemFailure) for r in results):
            # Every item signed (the common case), at C speed: one record per signature. (A
            # count that differs goes the loop's way below, whose strict zip refuses it.)
            items = list(zip(map(bytes.hex, p.hashes), range(p.start, p.start + n), repeat(Result.SUCCESS), repeat("")))
            evs: list[AuditEvent | ItemEvents] = [ItemEvents(self._item_template(), items)] if items else []
            signatures = cast(list[bytes], list(results))  # no ItemFailure among them: checked above
            return _Outcome(p, StreamChunk(p.start, signatures, [], self.cred.key_version), evs, [], n, 0, 0)
        for i, (d, r) in enumerate(zip(p.hashes, results, strict=True)):
            at = p.start + i
            if isinstance(r, ItemFailure):
                released.append(at)
                items.append((d.hex(), at, Result.FAILURE, r.reason))
                errs.append((at, r.reason))
                sigs.append(b"")
            elif not delivered:
                # Signed by the HSM (or not yet) but never sent: released, so that the document
                # can be signed again; this signature never leaves the service.
                discarded += 1
                released.append(at)
                items.append((d.hex(), at, Result.FAILURE, discarded_reason))
                errs.append((at, discarded_reason))
                sigs.append(b"")
            else:
                signed += 1
                items.append((d.hex(), at, Result.SUCCESS, ""))
                sigs.append(r)
        evs = [ItemEvents(self._item_template(), items)] if items else []
        chunk = StreamChunk(p.start, sigs, errs, self.cred.key_version)
        return _Outcome(p, chunk, evs, released, signed, len(released), discarded)

    def _close(self, end: StreamEnd, message: str) -> None:
        """Whatever ended the stream: await chunks still at the HSM (at most ``_CLOSE_WAIT``),
        audit them and everything not delivered, release them, and write batch.end, in one
        transaction. If that fails, the reconciler settles it all once the store answers."""
        wait_futures([p.future for p in self.inflight], timeout=_CLOSE_WAIT)
        pending = [*self.uncommitted, *self.inflight]
        self.uncommitted, self.inflight = [], deque()
        leftovers = [self._outcome(p, delivered=False) for p in pending]
        try:
            with self.recovery.tx() as t:
                for out in leftovers:
                    t.release_hashes(self.cred.credential_id, self.sad.id, out.released)
                if t.end_inflight([out.pending.ledger for out in leftovers]) != len(leftovers):
                    raise Superseded()
                stream = t.end_stream(self.stream_id)
                if stream is None:
                    raise Superseded()
                failed = sum(out.failed for out in leftovers)
                discarded = sum(out.discarded for out in leftovers)
                t.append(
                    *[ev for out in leftovers for ev in out.events],
                    batch_end(stream, end, message, failed_more=failed, discarded=discarded),
                )
        except Superseded:
            log.warning("stream %d was settled by another replica (this one was presumed stopped)", self.stream_id)
            self.recovery.orphaned([out.pending.ledger for out in leftovers], self.stream_id, end, message)
            raise
        except BaseException:
            self.recovery.orphaned([out.pending.ledger for out in leftovers], self.stream_id, end, message)
            raise
