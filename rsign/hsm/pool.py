"""A pool of HSM worker processes, safe to call from any number of threads.

Why processes: python-pkcs11 initialises the PKCS#11 library with ``C_Initialize(NULL)``; SoftHSMv2
then runs without mutexes, and two threads signing in one process fail within ~1,500 operations.
Each worker process has its own library initialisation, one logged-in session and its own cache of
key handles.

Callers put jobs on one shared bounded queue (back-pressure: they block while it is full);
``sign_async`` first splits its digests into jobs of at most ``MAX_CHUNK``, spread over the workers.
A synchronous one-job call (an audit MAC, a TOTP seed unsealed, a unary signature) that finds the
queue empty and a worker idle skips the queue: the calling thread writes to that worker's pipe and
reads the answer itself (``_direct``). Through the queue a job wakes the sender thread, the receiver
thread and then the caller, three thread handoffs and about 200 us of this process's CPU per job;
the one-document flows make five such calls each.
Each worker is driven by two threads in the parent, over its pipe: a sender takes jobs from the
queue and keeps up to ``PIPELINE_DEPTH`` of them in the pipe (so the next job is already there when
one ends), and a receiver reads the answers in order and completes each job's future (an error
rebuilt as the same domain exception). If the worker dies or does not answer within the job
timeout, every job it held fails with ``HsmUnavailable`` and a fresh worker replaces it; at close,
jobs still queued fail the same way. No caller ever waits forever.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import pickle
import queue
import threading
import time
from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

from rsign.domain.algorithms import KeyAlgorithm, SignSpec
from rsign.domain.errors import HsmUnavailable
from rsign.domain.settings import HsmConfig
from rsign.hsm.pool_slots import Job, PoolStats, Slot
from rsign.hsm.pool_worker import Worker, rebuild_error
from rsign.hsm.ports import SignResult

log = logging.getLogger(__name__)

# The one-job calls a caller may run on an idle worker itself (``_direct``): the hot ones of the
# unary flow (``sign`` of one digest goes there too). Not the audit anchor's: SoftHSMv2 refreshes a
# process's index of objects other processes created lazily, and one worker answered an older
# anchor for 5 s of back-to-back reads while the other had the newest; through the queue, reads
# land on every worker in turn, and callers keep the highest anchor any of them returned. Not
# key generation and the like either: rare, and long enough that the queue's cost is nothing.
_DIRECT_OPS = frozenset({"mac", "seal", "unseal"})

# Digests per job: large enough to amortise the pipe round trip (~50 us), small enough that a
# killed worker takes little work with it and that several workers share one request.
MAX_CHUNK = 256
class HsmPool:
    """Implements the ``Hsm`` port over worker processes."""

    def __init__(
        self,
        config: HsmConfig,
        workers: int | None = None,
        job_timeout: float = 60.0,
        start_timeout: float = 60.0,
        warm: bool = True,
    ) -> None:
        """``warm``: cache every private key's handle at start (signing pools; not the audit pool)."""
        self._config = config
        self._warm = warm
        self._size = workers or os.cpu_count() or 1
        self._job_timeout = job_timeout
        self._start_timeout = start_timeout
        # spawn, not fork: forking a process that runs gRPC threads can deadlock (grpc#17093).
        self._ctx = multiprocessing.get_context("spawn")
        self._queue: queue.Queue[Job | None] = queue.Queue(maxsize=self._size * 4)
        self._closed = False
        self._restarts = 0
        self._drained = False  # closed and its sender and receiver threads gone: nothing will run a queued job
        # Start every worker (in parallel) before any thread, so a bad PIN fails fast and loudly.
        starting = [Worker(self._ctx, config, start_timeout, warm) for _ in range(self._size)]
        try:
            self._slots = [Slot(w.wait_ready()) for w in starting]
        except HsmUnavailable:
            for w in starting:
                w.kill()
            raise
        self._threads = []
        for i in range(self._size):
            for fn, role in ((self._send_loop, "send"), (self._receive_loop, "recv")):
                t = threading.Thread(target=fn, args=(self._slots[i],), daemon=True, name=f"rsign-hsm-{i}-{role}")
                t.start()
                self._threads.append(t)

    @property
    def size(self) -> int:
        return self._size

    def worker_pids(self) -> list[int]:
        pids = []
        for slot in self._slots:
            with slot.lock:
                if slot.worker is not None:
                    pids.append(slot.worker.pid)
        return pids

    def healthy(self) -> bool:
        return all(slot.worker is not None and slot.worker.proc.is_alive() for slot in self._slots)

    def stats(self) -> PoolStats:
        alive = busy = in_flight = direct = 0
        for slot in self._slots:
            with slot.lock:
                alive += slot.worker is not None and slot.worker.proc.is_alive()
                busy += bool(slot.pending) or slot.direct or slot.claimed
                in_flight += len(slot.pending) + slot.direct + slot.claimed
                direct += slot.direct_jobs
        return PoolStats(self._size, alive, busy, in_flight, self._queue.qsize(), self._restarts, direct)

    # -- dispatch ----------------------------------------------------------------------------

    def _send_loop(self, slot: Slot) -> None:
        """Take jobs from the shared queue and write them to this slot's worker, keeping up to
        ``PIPELINE_DEPTH`` in its pipe: the next job is already there when the current one ends,
        so the worker never waits for this process to hand over results and send more work."""
        while True:
            slot.room.acquire()
            job = self._queue.get()
            if job is None:
                with slot.lock:
                    slot.stopping = True
                    slot.cv.notify_all()
                return
            if not job.future.set_running_or_notify_cancel():
                slot.room.release()
                continue
            with slot.lock:
                slot.claimed = True
                try:
                    slot.cv.wait_for(slot.free)
                    worker = slot.worker
                    if worker is None or not worker.proc.is_alive():
                        worker = self._restart(slot)
                    if worker is None:
                        slot.room.release()
                        job.future.set_exception(HsmUnavailable("the HSM is unavailable"))
                        continue
                    slot.pending.append(job)
                finally:
                    slot.claimed = False
                slot.cv.notify_all()
                try:
                    # Plain pickle, not the Connection's ForkingPickler (a pickler object and a
                    # buffer per message, and no job carries a handle it would be needed for);
                    # the worker's recv() reads it as it reads any message.
                    worker.conn.send_bytes(pickle.dumps((job.op, job.args), pickle.HIGHEST_PROTOCOL))
                except (OSError, ValueError):
                    pass  # the receiver notices the dead worker and fails what it held

    def _receive_loop(self, slot: Slot) -> None:
        while True:
            with slot.lock:
                slot.cv.wait_for(lambda: bool(slot.pending) or slot.stopping)
                if not slot.pending:
                    return
                worker = slot.worker
            assert worker is not None
            try:
                reply = self._await(worker)
            except (EOFError, OSError, TimeoutError) as exc:
                with slot.lock:
                    failed = list(slot.pending)
                    slot.pending.clear()
                    log.error(
                        "HSM worker %d failed holding %d job(s) (%s); replacing it",
                        worker.pid,
                        len(failed),
                        type(exc).__name__,
                    )
                    if slot.worker is worker:
                        self._restart(slot)
                for job in failed:
                    slot.room.release()
                    job.future.set_exception(
                        HsmUnavailable("the HSM worker handling this request failed; retry the request")
                    )
                continue
            with slot.lock:
                job = slot.pending.popleft()
            slot.room.release()
            if reply[0] == "ok":
                job.future.set_result(reply[1])
            else:
                job.future.set_exception(rebuild_error(reply[1], reply[2]))

    def _await(self, worker: Worker) -> Any:
        deadline = time.monotonic() + self._job_timeout
        # One poll object per worker: Connection.poll() builds and tears down a selector on every
        # call, which cost more than reading the answer.
        while not worker.readable.poll(200):
            if not worker.proc.is_alive():
                raise EOFError("worker exited")
            if time.monotonic() > deadline:
                raise TimeoutError("worker did not answer")
        return worker.conn.recv()

    def _restart(self, slot: Slot) -> Worker | None:
        """Replace the slot's worker (caller holds ``slot.lock``)."""
        old, slot.worker = slot.worker, None
        if old is not None:
            old.kill()
        if self._closed:
            return None
        # Under this slot's lock only: two slots restarting at once could lose a count (a metric).
        self._restarts += 1
        try:
            slot.worker = Worker(self._ctx, self._config, self._start_timeout, self._warm).wait_ready()
        except HsmUnavailable:
            log.error("could not restart an HSM worker")
        return slot.worker

    def _submit(self, op: str, *args: Any) -> Future[Any]:
        if self._closed:
            raise HsmUnavailable("the HSM pool is shut down")
        job = Job(op, args)
        self._queue.put(job)  # blocks when full: back-pressure
        if self._drained:  # the pool closed while this job was being queued
            self._fail_queued()
        return job.future

    def _call(self, op: str, *args: Any) -> Any:
        if op in _DIRECT_OPS:
            done, result = self._direct(op, args)
            if done:
                return result
        return self._submit(op, *args).result()

    def _direct(self, op: str, args: tuple[Any, ...]) -> tuple[bool, Any]:
        """Run one job on an idle worker from the calling thread; ``(False, None)`` when no worker
        is idle or jobs are queued (the caller then queues: a direct call never overtakes them).
        A worker that dies, stops answering or is interrupted meanwhile is replaced, as the
        receiver would."""
        if self._closed:
            raise HsmUnavailable("the HSM pool is shut down")
        if not self._queue.empty():
            return False, None
        # Before a worker is taken: a job that cannot be pickled touches none.
        message = pickle.dumps((op, args), pickle.HIGHEST_PROTOCOL)
        slot, worker = self._take_idle()
        if slot is None or worker is None:
            return False, None
        answered = interrupted = False
        try:
            worker.conn.send_bytes(message)
            reply = self._await(worker)
            answered = True
        except (EOFError, OSError, TimeoutError, ValueError) as exc:
            log.error("HSM worker %d failed in a direct job (%s); replacing it", worker.pid, type(exc).__name__)
            raise HsmUnavailable("the HSM worker handling this request failed; retry the request") from None
        except BaseException:
            interrupted = True
            raise
        finally:
            self._give_back(slot, worker, answered, interrupted)
        if reply[0] == "ok":
            return True, reply[1]
        raise rebuild_error(reply[1], reply[2])

    def _take_idle(self) -> tuple[Slot | None, Worker | None]:
        """Mark an idle slot as used by the calling thread. A slot whose lock is held (a worker
        being restarted, seconds on a large token) is passed over, not waited for."""
        for slot in self._slots:
            if not slot.lock.acquire(blocking=False):
                continue
            try:
                worker = slot.worker
                if slot.direct or slot.claimed or slot.pending or slot.stopping or worker is None:
                    continue
                if not worker.proc.is_alive():  # died while idle: the sender restarts it for a queued job
                    continue
                slot.direct = True
                slot.direct_jobs += 1
                return slot, worker
            finally:
                slot.lock.release()
        return None, None

    def _give_back(self, slot: Slot, worker: Worker, answered: bool, interrupted: bool) -> None:
        """Free the slot. Unanswered, the worker may still answer later, and that answer would be
        read as the next job's: it is killed, and replaced at once unless the caller was
        interrupted (Ctrl-C: the sender restarts it when a job comes)."""
        with slot.lock:
            slot.direct = False
            slot.cv.notify_all()
            if answered or slot.worker is not worker:
                return
            if interrupted:
                slot.worker = None
                worker.kill()
                return
            try:
                self._restart(slot)
            except Exception:  # e.g. no file descriptors left: the sender retries for the next job
                log.exception("could not restart an HSM worker")

    # -- Hsm port ----------------------------------------------------------------------------

    def sign(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> list[SignResult]:
        if len(digests) == 1:  # one job either way (several are spread over the workers)
            done, result = self._direct("sign", (cka_id, spec, list(digests)))
            if done:
                return list(result)
        return self.sign_async(cka_id, spec, digests).result()

    def sign_async(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> Future[list[SignResult]]:
        """Spread the digests over the workers; the returned future holds the results in order."""
        n = len(digests)
        chunk = max(1, min(MAX_CHUNK, math.ceil(n / self._size)))
        parts = [self._submit("sign", cka_id, spec, list(digests[i : i + chunk])) for i in range(0, n, chunk)]
        if len(parts) == 1:  # a unary SignHash: its one job's future is the answer
            return parts[0]
        combined: Future[list[SignResult]] = Future()
        if not parts:
            combined.set_result([])
            return combined
        remaining = [len(parts)]
        lock = threading.Lock()

        def done(_: Future[Any]) -> None:
            with lock:
                remaining[0] -= 1
                if remaining[0]:
                    return
            out: list[SignResult] = []
            for p in parts:
                exc = p.exception()
                if exc is not None:
                    combined.set_exception(exc)
                    return
                out.extend(p.result())
            combined.set_result(out)

        for p in parts:
            p.add_done_callback(done)
        return combined

    def generate_keypair(self, alg: KeyAlgorithm, cka_id: bytes, label: str) -> bytes:
        result: bytes = self._call("generate_keypair", alg, cka_id, label)
        return result

    def generate_keypairs(self, items: Sequence[tuple[KeyAlgorithm, bytes, str]]) -> list[bytes]:
        result: list[bytes] = self._call("generate_keypairs", list(items))
        return result

    def public_key(self, cka_id: bytes) -> bytes:
        result: bytes = self._call("public_key", cka_id)
        return result

    def generate_mac_key(self, cka_id: bytes, label: str) -> None:
        self._call("generate_mac_key", cka_id, label)

    def destroy_keypair(self, cka_id: bytes) -> int:
        result: int = self._call("destroy_keypair", cka_id)
        return result

    def mac(self, cka_id: bytes, messages: Sequence[bytes]) -> list[bytes]:
        result: list[bytes] = self._call("mac", cka_id, list(messages))
        return result

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        result: bytes = self._call("seal", plaintext, aad)
        return result

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        result: bytes = self._call("unseal", blob, aad)
        return result

    # The audit anchor: a worker process is one writer (it destroys only its own previous anchor
    # object, see Pkcs11Token.write_anchor), so any worker may take these jobs.

    def seal_key_id(self) -> bytes:
        return bytes(self._call("seal_key_id"))

    def rotate_seal_key(self) -> tuple[bytes, list[bytes]]:
        new, old = self._call("rotate_seal_key")
        return bytes(new), [bytes(k) for k in old]

    def reseal(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes | None]:
        return list(self._call("reseal", list(items)))

    def read_anchor(self) -> bytes | None:
        result: bytes | None = self._call("read_anchor")
        return result

    def write_anchor(self, data: bytes) -> bool:
        result: bool = self._call("write_anchor", data)
        return result

    def reset_anchor(self, data: bytes) -> bytes:
        result: bytes = self._call("reset_anchor", data)
        return result

    def _fail_queued(self) -> None:
        """Jobs still queued once the sender threads are gone would never run: fail them, so that no
        caller waits forever (a stream closing at shutdown awaits its chunks at the HSM)."""
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None and job.future.set_running_or_notify_cancel():
                job.future.set_exception(HsmUnavailable("the HSM pool is shut down"))

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for _ in self._slots:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=10)
        self._drained = True
        self._fail_queued()
        for slot in self._slots:
            with slot.lock:
                if slot.direct and slot.worker is not None:
                    # A caller is reading this pipe: end the worker so that it reads EOF and
                    # lets go, before the pipe is closed under it.
                    slot.worker.proc.kill()
                    slot.cv.wait_for(slot.free, timeout=5)
                w, slot.worker = slot.worker, None
            if w is not None:
                w.conn.close()  # the worker sees EOF and closes its session
                w.proc.join(timeout=5)
                if w.proc.is_alive():
                    w.proc.kill()
