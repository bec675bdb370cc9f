"""``rsign serve --processes N``: N serving processes on one port, on one state directory.

Why: a process serves its calls on one Python interpreter lock, whatever the cores. Each process
here is a full ``rsign serve`` (its own HSM workers, in-flight ledger and liveness lock, as a
replica on PostgreSQL is); they share the listening port (SO_REUSEPORT: the kernel spreads
connections over them) and the database. On SQLite their writers queue on the database file's
writer lock (``rsign.store.engine``), so they do not meet SQLite's sleeping busy handler.

This process only supervises: it starts the first process alone (it creates a missing state
directory and, with port 0, learns the port), then the others on that port, and prints one ready
line once all serve. SIGTERM and SIGINT stop them all (each drains its calls as a single process
does); SIGHUP reaches each (TLS files re-read). If one exits on its own, the others are stopped
and this exits non-zero: a supervisor (systemd) restarts the whole, rather than a smaller service
running on unnoticed.
"""

from __future__ import annotations

import logging
import queue
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import IO

log = logging.getLogger(__name__)

READY_PREFIX = "rsign serving on "
_START_TIMEOUT = 300.0  # seconds for one process to be ready (a token of 25,000 keys loads slowly)
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def die_with_parent() -> None:
    """In a serving process: SIGTERM when the supervisor dies, however it dies (SIGKILL included),
    so that no process serves on unsupervised, holding the port a restart needs. Linux only."""
    import ctypes
    import os

    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    except (OSError, AttributeError):
        return
    if os.getppid() == 1:  # the supervisor died before the call above took effect
        os.kill(os.getpid(), signal.SIGTERM)


@dataclass(frozen=True)
class Child:
    common: list[str]  # every process's `rsign serve` options
    first: list[str]  # the first process's alone (the HTTP face)


class _Proc:
    def __init__(self, args: list[str]) -> None:
        # stderr (logs) is this process's; stdout is read for the ready line, then drained.
        self.p = subprocess.Popen(
            [sys.executable, "-m", "rsign.cli", "serve", *args], stdout=subprocess.PIPE, text=True, bufsize=1
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.serving = False  # its ready line came: its SIGHUP handler is installed
        self.terminated = False
        threading.Thread(target=self._read, args=(self.p.stdout,), daemon=True).start()

    def terminate(self) -> None:
        """SIGTERM, once: the process drains and stops on the first (a second only restarts
        nothing, and the fewer signals a shutdown takes, the fewer races it has)."""
        if not self.terminated and self.p.poll() is None:
            self.terminated = True
            self.p.send_signal(signal.SIGTERM)

    def _read(self, out: IO[str] | None) -> None:
        if out is None:
            return
        for line in out:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def ready(self, stopping: Callable[[], bool]) -> str | None:
        """Its ready line; None if it exited first or ``stopping()`` (called twice a second: it
        also acts on the signals received meanwhile)."""
        deadline = time.monotonic() + _START_TIMEOUT
        while not stopping() and time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                return None
            if line.startswith(READY_PREFIX):
                self.serving = True
                return line
            print(line, flush=True)
        return None


def serve_processes(child: Child, n: int, listen: str, stop_timeout: float = 120.0) -> int:
    """Run ``n`` serving processes; returns the exit status (0: stopped as asked)."""
    procs: list[_Proc] = []
    received: deque[int] = deque()
    state = {"stop": False, "reload": False}  # reload: a SIGHUP for processes not serving yet

    def on_signal(signum: int, _frame: object) -> None:
        received.append(signum)  # only this: no lock may be taken in a handler (rsign.api.server)

    def stopping() -> bool:
        """Act on the signals received (in the main thread, outside any handler)."""
        while received:
            if received.popleft() == signal.SIGHUP:
                # Only to a process that serves: before its handler is installed SIGHUP kills it;
                # one still starting gets it once it serves (it may have read its files before).
                state["reload"] = True
                for pr in procs:
                    if pr.serving and pr.p.poll() is None:
                        pr.p.send_signal(signal.SIGHUP)
            else:
                state["stop"] = True
                for pr in procs:
                    pr.terminate()
        return state["stop"]

    def started(pr: _Proc) -> str | None:
        line = pr.ready(stopping)
        if line is not None and state["reload"]:
            pr.p.send_signal(signal.SIGHUP)  # a reload asked for while it started
        return line

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        procs.append(_Proc([*child.common, *child.first, f"--listen={listen}"]))
        first = started(procs[0])
        if first is None:
            return _stop_all(procs, not stopping(), stop_timeout)
        bound = first[len(READY_PREFIX) :].split(" ", 1)[0]
        for _ in range(1, n):
            procs.append(_Proc([*child.common, f"--listen={bound}"]))
            if started(procs[-1]) is None:
                return _stop_all(procs, not stopping(), stop_timeout)
        print(f"{first}; {n} processes (pids {', '.join(str(pr.p.pid) for pr in procs)})", flush=True)
        while not stopping():
            time.sleep(0.2)
            gone = [pr for pr in procs if pr.p.poll() is not None]
            if gone and not stopping():
                log.error(
                    "serving process %d exited (status %s): stopping the others", gone[0].p.pid, gone[0].p.returncode
                )
                return _stop_all(procs, True, stop_timeout)
            for pr in procs:  # drain what they print after ready (the audit head line is on stderr)
                while True:
                    try:
                        line = pr.lines.get_nowait()
                    except queue.Empty:
                        break
                    if line is not None:
                        print(line, flush=True)
        return _stop_all(procs, False, stop_timeout)
    finally:
        for pr in procs:
            if pr.p.poll() is None:
                pr.p.kill()


def _stop_all(procs: list[_Proc], failed: bool, timeout: float) -> int:
    """SIGTERM to every process still running, killed past ``timeout`` (their grace, the final
    checkpoint and some); 0 only when nothing failed and each exited 0."""
    for pr in procs:
        pr.terminate()
    deadline = time.monotonic() + timeout
    codes = []
    for pr in procs:
        try:
            codes.append(pr.p.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            log.error("serving process %d did not stop in %.0f s: killed", pr.p.pid, timeout)
            pr.p.kill()
            codes.append(pr.p.wait())
    bad = [c for c in codes if c != 0]  # negative: killed by a signal
    if failed or bad:
        return max([1, *[c for c in bad if c > 0]])
    return 0
