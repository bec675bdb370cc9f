"""A pool of HSM worker processes, safe to call from any number of threads.

Why processes: python-pkcs11 initialises the PKCS#11 library with ``C_Initialize(NULL)``; SoftHSMv2
then runs without mutexes, and two threads signing in one process fail within ~1,500 operations.
Each worker process has its own library initialisation, one logged-in session and its own cache of
key handles.

Each worker is driven by one dispatcher thread in the parent, which takes jobs from a bounded queue
(back-pressure: callers block when every worker is busy and the queue is full), sends one job at a
time over a pipe and waits for the answer. If the worker dies or stops answering, the job it held
fails with ``HsmUnavailable`` and a fresh worker replaces it; no caller ever waits forever.
"""

from __future__ import annotations

import logging
import math
import multiprocessing
import multiprocessing.connection
import os
import queue
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

from rsign.errors import HsmUnavailable, RsignError
from rsign.hsm.ports import HsmConfig, SignResult
from rsign.signing.algorithms import KeyAlgorithm, SignSpec

log = logging.getLogger(__name__)

# Digests per job: large enough to amortise the pipe round trip (~50 us), small enough that a
# killed worker takes little work with it and that several workers share one request.
MAX_CHUNK = 256


@dataclass
class _Job:
    op: str
    args: tuple[Any, ...]
    future: Future[Any] = field(default_factory=Future)


def _worker_main(conn: multiprocessing.connection.Connection, config: HsmConfig) -> None:
    """Entry point of a worker process (started with ``spawn``: no inherited gRPC state)."""
    from rsign.hsm.pkcs11_adapter import Pkcs11Token

    try:
        token = Pkcs11Token(config)
        token.ensure_seal_key()  # workers start one after another, so only the first creates it
    except RsignError as exc:
        conn.send(("fatal", type(exc).__name__, exc.message))
        return
    conn.send(("ready", os.getpid()))
    ops: dict[str, Callable[..., Any]] = {
        "sign": token.sign,
        "generate_keypair": token.generate_keypair,
        "public_key": token.public_key,
        "seal": token.seal,
        "unseal": token.unseal,
        "ping": lambda: os.getpid(),
    }
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            break
        try:
            conn.send(("ok", ops[op](*args)))
        except RsignError as exc:
            conn.send(("err", type(exc).__name__, exc.message))
        except Exception as exc:  # report, never die silently with the job
            conn.send(("err", "HsmUnavailable", f"HSM worker error ({type(exc).__name__})"))
    token.close()


class _Worker:
    def __init__(self, ctx: Any, config: HsmConfig, start_timeout: float) -> None:
        parent, child = ctx.Pipe()
        self.conn: multiprocessing.connection.Connection = parent
        self.proc = ctx.Process(target=_worker_main, args=(child, config), daemon=True, name="rsign-hsm-worker")
        self.proc.start()
        child.close()
        if not parent.poll(start_timeout):
            self.kill()
            raise HsmUnavailable("HSM worker did not start in time")
        msg = parent.recv()
        if msg[0] != "ready":
            self.kill()
            raise HsmUnavailable(f"HSM worker could not start: {msg[2]}")
        self.pid: int = msg[1]

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


class HsmPool:
    """Implements the ``Hsm`` port over worker processes."""

    def __init__(
        self,
        config: HsmConfig,
        workers: int | None = None,
        job_timeout: float = 60.0,
        start_timeout: float = 30.0,
    ) -> None:
        self._config = config
        self._size = workers or os.cpu_count() or 1
        self._job_timeout = job_timeout
        self._start_timeout = start_timeout
        # spawn, not fork: forking a process that runs gRPC threads can deadlock (grpc#17093).
        self._ctx = multiprocessing.get_context("spawn")
        self._queue: queue.Queue[_Job | None] = queue.Queue(maxsize=self._size * 4)
        self._workers: list[_Worker | None] = [None] * self._size
        self._closed = False
        self._lock = threading.Lock()
        # Start every worker before any dispatcher thread, so a bad PIN fails fast and loudly.
        for i in range(self._size):
            self._workers[i] = _Worker(self._ctx, config, start_timeout)
        self._threads = [
            threading.Thread(target=self._dispatch, args=(i,), daemon=True, name=f"rsign-hsm-{i}")
            for i in range(self._size)
        ]
        for t in self._threads:
            t.start()

    @property
    def size(self) -> int:
        return self._size

    def worker_pids(self) -> list[int]:
        with self._lock:
            return [w.pid for w in self._workers if w is not None]

    def healthy(self) -> bool:
        with self._lock:
            return all(w is not None and w.proc.is_alive() for w in self._workers)

    # -- dispatch ----------------------------------------------------------------------------

    def _dispatch(self, slot: int) -> None:
        while True:
            job = self._queue.get()
            if job is None:
                return
            if not job.future.set_running_or_notify_cancel():
                continue
            worker = self._ensure_worker(slot)
            if worker is None:
                job.future.set_exception(HsmUnavailable("the HSM is unavailable"))
                continue
            try:
                worker.conn.send((job.op, job.args))
                reply = self._await(worker)
            except (EOFError, OSError, BrokenPipeError, TimeoutError) as exc:
                log.error("HSM worker %d failed during %s (%s); replacing it", worker.pid, job.op, type(exc).__name__)
                self._replace(slot)
                job.future.set_exception(
                    HsmUnavailable("the HSM worker handling this request failed; retry the request")
                )
                continue
            if reply[0] == "ok":
                job.future.set_result(reply[1])
            else:
                job.future.set_exception(_rebuild_error(reply[1], reply[2]))

    def _await(self, worker: _Worker) -> Any:
        deadline = time.monotonic() + self._job_timeout
        while not worker.conn.poll(0.2):
            if not worker.proc.is_alive():
                raise EOFError("worker exited")
            if time.monotonic() > deadline:
                raise TimeoutError("worker did not answer")
        return worker.conn.recv()

    def _ensure_worker(self, slot: int) -> _Worker | None:
        with self._lock:
            w = self._workers[slot]
        if w is not None and w.proc.is_alive():
            return w
        return self._replace(slot)

    def _replace(self, slot: int) -> _Worker | None:
        with self._lock:
            old = self._workers[slot]
            self._workers[slot] = None
        if old is not None:
            old.kill()
        if self._closed:
            return None
        try:
            new = _Worker(self._ctx, self._config, self._start_timeout)
        except HsmUnavailable:
            log.error("could not restart HSM worker %d", slot)
            return None
        with self._lock:
            self._workers[slot] = new
        return new

    def _submit(self, op: str, *args: Any) -> Future[Any]:
        if self._closed:
            raise HsmUnavailable("the HSM pool is shut down")
        job = _Job(op, args)
        self._queue.put(job)  # blocks when full: back-pressure
        return job.future

    def _call(self, op: str, *args: Any) -> Any:
        return self._submit(op, *args).result()

    # -- Hsm port ----------------------------------------------------------------------------

    def sign(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> list[SignResult]:
        return self.sign_async(cka_id, spec, digests).result()

    def sign_async(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> Future[list[SignResult]]:
        """Spread the digests over the workers; the returned future holds the results in order."""
        n = len(digests)
        chunk = max(1, min(MAX_CHUNK, math.ceil(n / self._size)))
        parts = [self._submit("sign", cka_id, spec, list(digests[i : i + chunk])) for i in range(0, n, chunk)]
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

    def public_key(self, cka_id: bytes) -> bytes:
        result: bytes = self._call("public_key", cka_id)
        return result

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        result: bytes = self._call("seal", plaintext, aad)
        return result

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        result: bytes = self._call("unseal", blob, aad)
        return result

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        for _ in self._threads:
            self._queue.put(None)
        for t in self._threads:
            t.join(timeout=10)
        with self._lock:
            workers, self._workers = self._workers, [None] * self._size
        for w in workers:
            if w is not None:
                w.conn.close()  # the worker sees EOF and closes its session
                w.proc.join(timeout=5)
                if w.proc.is_alive():
                    w.proc.kill()


def _rebuild_error(kind: str, message: str) -> RsignError:
    import rsign.errors as errors

    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, RsignError):
        return cls(message)
    return HsmUnavailable(message)
