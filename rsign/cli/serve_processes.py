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
from dataclasses import dataclass
from typing import IO

log = logging.getLogger(__name__)

READY_PREFIX = "rsign serving on "
_START_TIMEOUT = 300.0  # seconds for one process to be ready (a token of 25,000 keys loads slowly)
_STOP_TIMEOUT = 120.0  # after SIGTERM: its grace, the final checkpoint, then it is killed


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
        threading.Thread(target=self._read, args=(self.p.stdout,), daemon=True).start()

    def _read(self, out: IO[str] | None) -> None:
        if out is None:
            return
        for line in out:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def ready(self, stop: threading.Event) -> str | None:
        """Its ready line; None if it exited first or ``stop`` was set."""
        deadline = time.monotonic() + _START_TIMEOUT
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                line = self.lines.get(timeout=0.5)
            except queue.Empty:
                continue
            if line is None:
                return None
            if line.startswith(READY_PREFIX):
                return line
            print(line, flush=True)
        return None


def serve_processes(child: Child, n: int, listen: str | None) -> int:
    procs: list[_Proc] = []
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        if signum != signal.SIGHUP:
            stop.set()
        for pr in procs:
            if pr.p.poll() is None:
                pr.p.send_signal(signal.SIGTERM if signum != signal.SIGHUP else signal.SIGHUP)

    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, on_signal)
    try:
        procs.append(_Proc(child.common + child.first + ([f"--listen={listen}"] if listen else [])))
        first = procs[0].ready(stop)
        if first is None:
            return _stop_all(procs, failed=True)
        bound = first[len(READY_PREFIX) :].split(" ", 1)[0]
        for _ in range(1, n):
            procs.append(_Proc([*child.common, f"--listen={bound}"]))
            if procs[-1].ready(stop) is None:
                return _stop_all(procs, failed=True)
        print(f"{first}; {n} processes (pids {', '.join(str(pr.p.pid) for pr in procs)})", flush=True)
        while not stop.wait(0.5):
            gone = [pr for pr in procs if pr.p.poll() is not None]
            if gone:
                log.error(
                    "serving process %d exited (status %s): stopping the others", gone[0].p.pid, gone[0].p.returncode
                )
                return _stop_all(procs, failed=True)
            for pr in procs:  # drain what they print after ready (the audit head line is on stderr)
                while True:
                    try:
                        line = pr.lines.get_nowait()
                    except queue.Empty:
                        break
                    if line is not None:
                        print(line, flush=True)
        return _stop_all(procs, failed=False)
    finally:
        for pr in procs:
            if pr.p.poll() is None:
                pr.p.kill()


def _stop_all(procs: list[_Proc], failed: bool) -> int:
    for pr in procs:
        if pr.p.poll() is None:
            pr.p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + _STOP_TIMEOUT
    codes = []
    for pr in procs:
        try:
            codes.append(pr.p.wait(timeout=max(0.1, deadline - time.monotonic())))
        except subprocess.TimeoutExpired:
            pr.p.kill()
            codes.append(pr.p.wait())
    if failed:
        return max([1, *[c for c in codes if c > 0]])
    return max([0, *codes])
