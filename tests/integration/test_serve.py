"""``rsign serve`` as an operator runs it: SIGTERM always stops it in bounded time with the final
checkpoint signed, and one port serves one server."""

from __future__ import annotations

import hashlib
import queue
import secrets
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rsign.client.raw import RsignClient
from rsign.dev import EMBEDDED
from rsign.domain.events import EventFilter
from rsign.runtime.config import load_settings
from rsign.store import Store
from rsign.v1 import rsign_pb2 as pb
from tests.integration.serving import Served, User, free_port, prepare_state, rsign_cmd, serve

GRACE = 2.0


class OpenStream:
    """A SignHashStream whose request side stays open until ``close`` (a client that went quiet)."""

    def __init__(self, client: RsignClient, first: pb.SignHashStreamRequest | None) -> None:
        self._q: queue.Queue[pb.SignHashStreamRequest | None] = queue.Queue()
        if first is not None:
            self._q.put(first)
        self.call = client.signing.SignHashStream(self._requests(), metadata=client.md())

    def _requests(self) -> Iterator[pb.SignHashStreamRequest]:
        while (msg := self._q.get()) is not None:
            yield msg

    def send(self, msg: pb.SignHashStreamRequest) -> None:
        self._q.put(msg)

    def close(self) -> None:
        self._q.put(None)


def hashes(n: int) -> list[bytes]:
    return [hashlib.sha256(secrets.token_bytes(16)).digest() for _ in range(n)]


def authorized(srv_address: str, user: User, n: int) -> tuple[RsignClient, str, list[bytes]]:
    c = RsignClient(srv_address)
    c.login(user.user_id, user.pin, user.code())
    ds = hashes(n)
    return c, c.authorize(user.credential_id, ds, user.code()).sad, ds


def first_message(user: User, sad: str, ds: list[bytes]) -> pb.SignHashStreamRequest:
    return pb.SignHashStreamRequest(
        credential_id=user.credential_id, sad=sad, hash_algorithm=pb.SHA256, signature_scheme=pb.ECDSA, hashes=ds
    )


@dataclass
class Running:
    srv: Served
    state: Path
    users: list[User]


@pytest.fixture(scope="module")
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """One server for this module (starting one costs seconds): the port test uses it as it is,
    the SIGTERM test (the last) stops it."""
    state = tmp_path_factory.mktemp("serve") / "state"
    users = prepare_state(state, 14, config=f"[service]\nshutdown_grace_seconds = {GRACE}\n")
    srv = serve(state, free_port())
    yield Running(srv, state, users)
    srv.stop()


def session_processes(sid: int) -> list[int]:
    """Processes still alive in session ``sid`` (a process and everything it started)."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid:  # fields after the name: state, ppid, pgrp, session
            found.append(int(stat.parent.name))
    return found


def test_one_server_per_port(running: Running, tmp_path: Path) -> None:
    first = running.srv
    port = int(first.address.rsplit(":", 1)[1])
    second = subprocess.Popen(
        rsign_cmd("serve", "--state-dir", str(tmp_path / "b"), "--listen", first.address),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    out, err = second.communicate(timeout=60)
    assert second.returncode == 2
    assert err.strip().splitlines() == [
        f"error: port {port} is already in use on 127.0.0.1 (another rsign serve?); not starting"
    ]
    assert "rsign serving" not in out
    assert session_processes(second.pid) == []  # nothing left behind (no HSM worker, no listener)
    # Every new connection reaches the first server.
    for _ in range(10):
        with grpc.insecure_channel(first.address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
    assert first.proc.poll() is None


def test_port_zero_names_the_port_it_got(tmp_path: Path) -> None:
    """--listen HOST:0 takes a free port, and the ready line names that port, not 0."""
    state = tmp_path / "state"
    prepare_state(state, 1)
    srv = serve(state, 0)
    try:
        host, port = srv.address.rsplit(":", 1)
        assert host == "127.0.0.1" and int(port) > 0
        with grpc.insecure_channel(srv.address) as ch:
            resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING
    finally:
        srv.stop()


def test_sigterm_stops_within_the_grace_period_and_signs_the_checkpoint(running: Running) -> None:
    """A dozen streams that sent malformed hashes and stay open, a few that never sent anything,
    and two busy ones (the client sends on and never reads) when SIGTERM comes."""
    srv, state, users = running.srv, running.state, running.users
    streams: list[OpenStream] = []
    clients: list[RsignClient] = []
    try:
        for u in users[:12]:
            c, sad, _ = authorized(srv.address, u, 3)
            clients.append(c)
            s = OpenStream(c, first_message(u, sad, [b"short", b"x" * 31, b""]))
            streams.append(s)
            with pytest.raises(grpc.RpcError) as e:
                list(s.call)
            assert e.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        for c in clients[:3]:
            streams.append(OpenStream(c, None))  # idle: not even a first message
        for u in users[12:]:
            c, sad, ds = authorized(srv.address, u, 6000)
            clients.append(c)
            s = OpenStream(c, first_message(u, sad, ds[:1000]))
            for i in range(1000, 6000, 1000):
                s.send(pb.SignHashStreamRequest(hashes=ds[i : i + 1000]))
            streams.append(s)
        time.sleep(0.5)  # the busy streams are at the HSM

        srv.proc.send_signal(signal.SIGTERM)
        t0 = time.monotonic()
        try:
            srv.proc.wait(GRACE + 5)
        except subprocess.TimeoutExpired:
            pytest.fail(f"still running {GRACE + 5} s after SIGTERM: {srv.stderr()}")
        took = time.monotonic() - t0
    finally:
        for s in streams:
            s.close()
        for c in clients:
            c.close()
        srv.stop()
    assert srv.proc.returncode == 0, srv.stderr()
    assert took <= GRACE + 5

    store = Store(load_settings(state, embedded=EMBEDDED).database_url)
    try:
        with store.read() as t:
            head = t.audit_head()
            last = t.last_checkpoint()
            starts = t.find_events(EventFilter(action="batch.start"), 0, 100)
            ends = t.find_events(EventFilter(action="batch.end"), 0, 100)
    finally:
        store.close()
    assert head is not None and last is not None
    assert last.seq == head[0], "the final checkpoint covers every record"
    # Every stream that started was closed and audited, the busy ones included.
    assert len(starts) == 14 and len(ends) == 14
    reasons = sorted(str(r["reason"]) for r in ends)
    assert sum("bytes long" in r for r in reasons) == 12, reasons
    # Closed in the call's own context: each record names the caller, not the process.
    assert {r["actor"] for r in ends} == {u.user_id for u in users}
    assert all(str(r["client"]).startswith("ipv4:127.0.0.1:") for r in ends)
