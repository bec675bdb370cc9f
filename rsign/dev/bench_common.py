"""What the benchmarks share: bench signers and their TOTP codes, digests, servers run in processes
of their own (ready when they answer, measured by their peak RSS), percentiles, and a PostgreSQL
database made for one run."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsign.audit.append_stats import APPEND_STATS_PREFIX
from rsign.auth import totp

Progress = Callable[[str], None]
StageProgress = Callable[[str, int, int], None]  # stage, done, total


class TotpStepsUsedUp(RuntimeError):
    """A bench signer has no fresh TOTP step until the next 30 s step begins."""


@dataclass
class BenchUser:
    user_id: str
    pin: str
    seed: bytes
    credential_id: str
    last_step: int = -1

    def code(self, margin: float = 5.0, wait: bool = True) -> str:
        """The code of the oldest step the server still accepts (its window is +-1 step) and this
        signer has not used; waits for the clock when none is left (``wait``), or raises
        ``TotpStepsUsedUp``. Oldest first: a signer gets three codes at once, then one per step.

        The previous step's code is accepted only until the current step ends: it is skipped when
        fewer than ``margin`` seconds remain, or a slow round trip lands outside the window."""
        while True:
            t = time.time()
            now = totp.step_of(t)
            oldest = now - 1 if totp.STEP_SECONDS - t % totp.STEP_SECONDS > margin else now
            step = max(self.last_step + 1, oldest)
            if step <= now + 1:
                self.last_step = step
                return totp.code_for_step(self.seed, step)
            if not wait:
                raise TotpStepsUsedUp(f"{self.user_id} has used every step up to {self.last_step}")
            time.sleep(seconds_to_next_step())

    def wait_for_step(self) -> None:
        """Sleep until this signer has a fresh step the server accepts (at most two steps)."""
        for _ in range(3):
            if self.last_step + 1 <= totp.step_of(time.time()) + 1:
                return
            time.sleep(seconds_to_next_step())


def seconds_to_next_step() -> float:
    return totp.STEP_SECONDS - time.time() % totp.STEP_SECONDS + 0.05


def wait_for_fresh_steps(users: Sequence[BenchUser], deadline_s: float = 3 * totp.STEP_SECONDS) -> float:
    """Sleep until every signer can take a code without waiting (bounded); returns the seconds
    slept. Called between rounds, so that no flow waits for the clock while it is being timed."""
    need = max((u.last_step for u in users), default=-1)  # each needs need+1 <= now+1
    slept = 0.0
    while totp.step_of(time.time()) < need and slept < deadline_s:
        pause = seconds_to_next_step()
        time.sleep(pause)
        slept += pause
    return slept


def digests(n: int) -> list[bytes]:
    salt = secrets.token_bytes(8)
    return [hashlib.sha256(salt + i.to_bytes(8, "big")).digest() for i in range(n)]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def rss_mb(pid: int, field: str) -> float:
    """``VmRSS`` (now) or ``VmHWM`` (peak) of a process, in MB; 0 when it is gone."""
    try:
        lines = Path(f"/proc/{pid}/status").read_text().splitlines()
    except OSError:
        return 0.0
    for line in lines:
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process has used so far (all its threads), in seconds; 0 when it
    is gone. Less noisy than a rate on a shared machine: other tenants slow a round down, they do
    not add to this process's CPU time."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return 0.0
    # utime and stime: fields 14 and 15 of /proc/PID/stat, 12 and 13 after the command name.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """Direct child processes of ``pid`` (its HSM workers), from each process's parent id."""
    out: list[int] = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            # Field 4 of /proc/PID/stat, after the parenthesised command name (which may hold spaces).
            ppid = int((proc / "stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        if ppid == pid:
            out.append(int(proc.name))
    return out


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100) of ``values``; 0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * q // 100))  # ceil(n q / 100)
    return ordered[int(rank) - 1]


def default_workers() -> int:
    return os.cpu_count() or 1


class ServerProcess:
    """A server in a process of its own (a separate interpreter, like production), started by
    ``argv`` and ready once ``probe(address)`` returns True. With ``log``, its stderr goes to that
    file and ``logged_errors`` reads the errors it logged (a benchmark reports them)."""

    def __init__(
        self,
        argv: list[str],
        address: str,
        probe: Callable[[str], bool],
        name: str = "rsign serve",
        log: Path | None = None,
        processes: int = 1,
    ) -> None:
        self.name = name
        self.argv = argv
        self.address = address
        self.probe = probe
        self.log = log
        self.processes = processes  # `rsign serve --processes`: this process supervises them
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self, timeout: float = 90.0) -> ServerProcess:
        if self.log is None:
            self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL)
        else:
            with open(self.log, "ab") as err:  # the child keeps its own copy of the descriptor
                self.proc = subprocess.Popen(self.argv, stdout=subprocess.DEVNULL, stderr=err)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                tail = "\n".join(self._log_lines()[-15:])
                raise RuntimeError(f"{self.name} (benchmark) exited with status {self.proc.returncode}:\n{tail}")
            # With several processes the first answers before the others serve: wait for them all
            # (each serving process with its HSM workers started).
            if self.probe(self.address) and (
                self.processes == 1 or (len(self.serving()) == self.processes and all(map(children, self.serving())))
            ):
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"{self.name} (benchmark) on {self.address} did not start within {timeout:.0f} s")

    def _log_lines(self) -> list[str]:
        if self.log is None or not self.log.exists():
            return []
        return self.log.read_text(encoding="utf-8", errors="replace").splitlines()

    def logged_errors(self) -> list[str]:
        """Lines it logged at level ERROR or above, and the exception line of each traceback."""
        out: list[str] = []
        in_traceback = False
        for line in self._log_lines():
            if line.startswith("Traceback (most recent call last)"):
                in_traceback = True
            elif in_traceback and line and not line[0].isspace():
                out.append(line)
                in_traceback = False
            elif " ERROR " in line or " CRITICAL " in line:
                out.append(line)
        return out

    def append_stats(self) -> dict[str, Any]:
        """What it said at shutdown about its audit head (``AppendStats``); {} before it stopped."""
        found: dict[str, Any] = {}
        for line in self._log_lines():
            if line.startswith(APPEND_STATS_PREFIX):
                found = json.loads(line[len(APPEND_STATS_PREFIX) :])
        return found

    def append_stats_each(self) -> list[dict[str, Any]]:
        """Each serving process's ``append_stats`` (``--processes``: one line each)."""
        prefix = APPEND_STATS_PREFIX
        return [json.loads(x[len(prefix) :]) for x in self._log_lines() if x.startswith(prefix)]

    def serving(self) -> list[int]:
        """The serving processes: this one, or those it supervises (``--processes``)."""
        return [self.pid] if self.processes == 1 else children(self.pid)

    def peak_rss_mb(self) -> float:
        """Peak RSS of the serving process(es) (their HSM worker processes: ``workers_peak_rss_mb``)."""
        return sum(rss_mb(p, "VmHWM") for p in self.serving())

    def workers_peak_rss_mb(self) -> float:
        return sum(rss_mb(c, "VmHWM") for p in self.serving() for c in children(p))

    def cpu_seconds(self) -> tuple[float, float]:
        """CPU time used so far by the serving process(es) and by their HSM worker processes."""
        serving = self.serving()
        return sum(cpu_seconds(p) for p in serving), sum(cpu_seconds(c) for p in serving for c in children(p))

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
        self.proc = None


def health_serving(address: str) -> bool:
    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    try:
        with grpc.insecure_channel(address) as ch:
            r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
        return bool(r.status == health_pb2.HealthCheckResponse.SERVING)
    except grpc.RpcError:
        return False


def rsign_server(state_dir: Path, log: Path | None = None, processes: int = 1) -> ServerProcess:
    """``rsign serve`` on ``state_dir`` (plaintext on loopback), not yet started."""
    address = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "rsign.cli", "serve", "--state-dir", str(state_dir), "--listen", address]
    if processes > 1:
        argv += ["--processes", str(processes)]
    return ServerProcess(argv, address, health_serving, log=log, processes=processes)


PG_ADMIN = "host=127.0.0.1 port=5432 user=postgres dbname=postgres"


@contextmanager
def fresh_database(admin_dsn: str) -> Iterator[str]:
    """A new PostgreSQL database for one run (dropped after); yields its SQLAlchemy URL."""
    try:
        import psycopg
    except ImportError as exc:
        raise RuntimeError("the PostgreSQL benchmark needs psycopg 3: pip install 'rsign[postgres]'") from exc
    name = f"rsign_bench_{secrets.token_hex(4)}"
    admin = psycopg.connect(admin_dsn, autocommit=True)
    try:
        admin.execute(f"CREATE DATABASE {name}")
        params = dict(p.split("=", 1) for p in admin_dsn.split())
        yield f"postgresql+psycopg://{params['user']}@{params['host']}:{params['port']}/{name}"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()
