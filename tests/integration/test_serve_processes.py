"""``rsign serve --processes N`` (rsign/cli/serve_processes.py): several serving processes on one
port and one SQLite state directory. What must hold: they all serve (the kernel spreads
connections), each SAD and OTP step is still used once whichever process a call reaches, the
audit chain stays whole, writers of different processes queue on the writer lock, and SIGTERM
stops them all (no process left behind)."""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc
import pytest

from rsign.client.raw import RsignClient
from rsign.domain.errors import AuditUnavailable
from rsign.store import Store
from tests.integration.serving import User, prepare_state, rsign_cmd, serve
from tests.integration.test_serve import session_processes


def _client(address: str) -> RsignClient:
    # A connection of its own (gRPC shares one between channels to the same target by default):
    # as separate client applications would, so that connections reach different processes.
    return RsignClient(grpc.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1)]))


def _flow(address: str, user: User) -> tuple[RsignClient, str, bytes]:
    c = _client(address)
    c.login(user.user_id, user.pin, user.code())
    digest = hashlib.sha256(secrets.token_bytes(16)).digest()
    sad = c.authorize(user.credential_id, [digest], user.code()).sad
    assert len(c.sign_hash(user.credential_id, sad, [digest], "ECDSA").signatures) == 1
    return c, sad, digest


def test_processes_share_the_port_and_the_guarantees(tmp_path: Path) -> None:
    state = tmp_path / "state"
    users = prepare_state(state, 12)
    srv = serve(state, 0, "--processes", "2", new_session=True)
    try:
        assert srv.proc.poll() is None
        with ThreadPoolExecutor(12) as ex:
            done = list(ex.map(lambda u: _flow(srv.address, u), users))
        # A SAD is single use whichever process the second attempt reaches.
        for _ in range(4):  # new connections: some reach the other process
            c, sad, digest = done[0]
            again = _client(srv.address)
            again.token = c.token
            with pytest.raises(grpc.RpcError) as e:
                again.sign_hash(users[0].credential_id, sad, [digest], "ECDSA")
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED and "used" in (e.value.details() or "")
        # Both processes served calls: each is a replica with its own liveness lock.
        replicas = list((state / "rsign.db.replicas").glob("*.lock"))
        assert len(replicas) == 2
        pids = {p for p in session_processes(srv.proc.pid) if p != srv.proc.pid}
        assert len(pids) >= 2  # two serving processes (and their HSM workers)
    finally:
        srv.stop()
    # SIGTERM to the supervisor stopped every process it started, HSM workers included.
    deadline = time.monotonic() + 30
    while session_processes(srv.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(srv.proc.pid) == []
    assert srv.proc.returncode == 0, srv.stderr()
    verify = subprocess.run(rsign_cmd("audit", "verify", "--state-dir", str(state)), capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr


def test_one_process_exiting_stops_the_rest_and_fails(tmp_path: Path) -> None:
    state = tmp_path / "state"
    prepare_state(state, 1)
    srv = serve(state, 0, "--processes", "2", new_session=True)
    try:
        children = [p for p in session_processes(srv.proc.pid) if p != srv.proc.pid]
        serving = [p for p in children if b"rsign.cli" in Path(f"/proc/{p}/cmdline").read_bytes()]
        assert len(serving) == 2
        os.kill(serving[1], signal.SIGKILL)
        assert srv.proc.wait(60) != 0  # a smaller service never runs on unnoticed
    finally:
        srv.stop()
    assert "exited" in srv.stderr()


def test_metrics_need_a_single_process(tmp_path: Path) -> None:
    state = tmp_path / "state"
    prepare_state(state, 1)
    res = subprocess.run(
        rsign_cmd("serve", "--state-dir", str(state), "--processes", "2", "--metrics-listen", "0"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert res.returncode == 2 and "--metrics-listen with --processes" in res.stderr


def test_writers_of_two_stores_queue_on_the_writer_lock(tmp_path: Path) -> None:
    """Two stores on one file stand for two processes (an flock is per open file): the second
    writer waits for the first, and one that waits past the busy timeout fails closed."""
    url = f"sqlite:///{tmp_path / 'rsign.db'}"
    a, b = Store(url), Store(url, busy_timeout=0.3)
    try:
        w = a.begin_write()
        t0 = time.monotonic()
        with pytest.raises(AuditUnavailable):
            b.begin_write()
        assert time.monotonic() - t0 >= 0.25
        w.commit()
        b.begin_write().commit()  # free again
    finally:
        a.close()
        b.close()


def test_a_reload_during_start_up_does_not_kill_a_starting_process(tmp_path: Path) -> None:
    """SIGHUP (a certificate rotation hook, `systemctl reload`) while the processes start: a
    process before its handler is installed would die of it, so the supervisor holds it back and
    sends it once the process serves."""
    state = tmp_path / "state"
    prepare_state(state, 1)
    proc = subprocess.Popen(
        rsign_cmd("serve", "--state-dir", str(state), "--listen", "127.0.0.1:0", "--processes", "2"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        # Once the supervisor has started its first process (its handlers are in place then), and
        # long before that process serves (its HSM workers take seconds to start).
        deadline = time.monotonic() + 60
        while len(session_processes(proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGHUP)
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert "rsign serving on" in line and "2 processes" in line, proc.stderr.read() if proc.stderr else ""
        assert proc.poll() is None
    finally:
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(60) == 0


def test_processes_stop_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    """SIGKILL to the supervisor (no chance to stop anything): its processes get SIGTERM from the
    kernel (parent-death signal) and stop, instead of serving on unsupervised on the port."""
    state = tmp_path / "state"
    prepare_state(state, 1)
    srv = serve(state, 0, "--processes", "2", new_session=True)
    sid = srv.proc.pid
    srv.proc.kill()
    srv.proc.wait(10)
    deadline = time.monotonic() + 60
    while session_processes(sid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(sid) == []


@pytest.mark.parametrize("processes", [1, 2])
def test_signals_in_quick_succession_still_stop_it(tmp_path: Path, processes: int) -> None:
    """Many SIGTERMs and SIGHUPs at once (an impatient operator, systemd and a reload hook): the
    handler used to set an Event, and a second signal arriving inside the first handler's lock
    deadlocked the process, which then served on forever."""
    state = tmp_path / "state"
    prepare_state(state, 1)
    srv = serve(state, 0, "--processes", str(processes), new_session=True)
    for _ in range(50):
        srv.proc.send_signal(signal.SIGHUP)
        srv.proc.send_signal(signal.SIGTERM)
    assert srv.proc.wait(60) == 0, srv.stderr()
    deadline = time.monotonic() + 30
    while session_processes(srv.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert session_processes(srv.proc.pid) == []
