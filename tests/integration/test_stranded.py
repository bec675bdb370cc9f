"""Nothing consumed is stranded, and every stream's end is recorded as it happened.

A hash occurrence is consumed before the HSM sees it; if the outcome commit never happens (the
audit store fails, the process dies), reconciliation records "interrupted: no signature delivered"
for it, naming the original caller, and releases it, so a new Authorize can sign the document. And
batch.end says how a stream ended (completed, deadline, client cancel, server shutdown, audit
failure, ...), with counts signed / failed / not reached. The crash test (SIGKILL of ``rsign
serve``) is ``test_crash_recovery.py``.
"""

from __future__ import annotations

import json
import queue
import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import grpc
import pytest

from rsign.api.server import start_server
from rsign.client.raw import RsignClient
from rsign.domain.algorithms import SignSpec
from rsign.domain.events import EventFilter
from rsign.domain.principal import LOCAL_OPERATOR
from rsign.hsm.ports import SignResult
from rsign.signing.recovery import INTERRUPTED
from rsign.v1 import rsign_pb2 as pb
from tests.conftest import CountingHsm, Env, Signer, digests, make_signer, running_env


def code(e: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return e.value.code()  # type: ignore[no-any-return,attr-defined]


def wait_until(cond: Callable[[], bool], seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if cond():
            return True
        time.sleep(0.05)
    return cond()


def records(env: Env, action: str, credential_id: str) -> list[dict[str, Any]]:
    with env.app.store.read() as t:
        return t.find_events(EventFilter(action=action, credential_id=credential_id), 0, 1_000_000)


def batch_end(env: Env, credential_id: str, seconds: float = 10.0) -> Mapping[str, Any]:
    """The stream's batch.end once written (the server writes it when the call's cleanup ends)."""
    assert wait_until(lambda: bool(records(env, "batch.end", credential_id)), seconds), "no batch.end"
    (end,) = records(env, "batch.end", credential_id)
    return end


def details(rec: Mapping[str, Any]) -> dict[str, Any]:
    return dict(json.loads(str(rec["details"])))


def ledger_rows(env: Env) -> tuple[int, int]:
    """In-flight rows and open streams: both 0 when nothing is left to settle."""
    with sqlite3.connect(env.state_dir / "rsign.db") as c:
        inflight = c.execute("SELECT count(*) FROM signing_inflight").fetchone()[0]
        streams = c.execute("SELECT count(*) FROM signing_streams").fetchone()[0]
    return int(inflight), int(streams)


class Stream:
    """A SignHashStream the test drives message by message (lock-step when it waits for answers)."""

    def __init__(self, client: RsignClient, cid: str, sad: str, timeout: float | None = None) -> None:
        self._q: queue.Queue[list[bytes] | None] = queue.Queue()
        self._cid, self._sad, self._first = cid, sad, True
        self.call = client.signing.SignHashStream(self._requests(), metadata=client.md(), timeout=timeout)

    def _requests(self) -> Iterator[pb.SignHashStreamRequest]:
        while (hs := self._q.get()) is not None:
            if self._first:
                self._first = False
                yield pb.SignHashStreamRequest(
                    credential_id=self._cid,
                    sad=self._sad,
                    hash_algorithm=pb.SHA256,
                    signature_scheme=pb.ECDSA,
                    hashes=hs,
                )
            else:
                yield pb.SignHashStreamRequest(hashes=hs)

    def send(self, hashes: Sequence[bytes]) -> None:
        self._q.put(list(hashes))

    def close(self) -> None:
        self._q.put(None)

    def answer(self) -> pb.SignHashStreamResponse:
        return next(self.call)  # type: ignore[no-any-return,call-overload]


def sign_all(client: RsignClient, signer: Signer, cid: str, hs: Sequence[bytes]) -> int:
    """A new Authorize for ``hs`` and a stream signing them all: how many signatures came back."""
    sad = client.authorize(cid, list(hs), signer.code()).sad
    got = [s for r in client.sign_stream(cid, sad, hs, "ECDSA", chunk=200) for s in r.signatures if s]
    return len(got)


# -- honest outcomes (shared service) ----------------------------------------------------------


def test_completed(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(300)
    assert sign_all(c, signer, cid, hs) == 300
    end = batch_end(env, cid)
    d = details(end)
    assert (end["result"], end["reason"], d["ended_by"]) == ("success", "completed", "completed")
    assert (d["signed"], d["failed"], d["not_reached"], d["received"]) == (300, 0, 0, 300)
    assert ledger_rows(env) == (0, 0)


def test_client_deadline_mid_stream(env: Env, signer: Signer) -> None:
    """The call's deadline passes after the first chunk was delivered: batch.end says 'deadline'
    (it used to say success, 'completed', when gRPC ended the request side like a normal close)."""
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(500)
    sad = c.authorize(cid, hs, signer.code()).sad
    s = Stream(c, cid, sad, timeout=1.5)
    s.send(hs[:100])
    assert len(s.answer().signatures) == 100
    time.sleep(1.7)  # the client is slow: its own deadline passes
    s.send(hs[100:200])
    with pytest.raises(grpc.RpcError) as e:
        s.answer()
    s.close()
    assert code(e) == grpc.StatusCode.DEADLINE_EXCEEDED
    end = batch_end(env, cid)
    d = details(end)
    assert end["result"] == "failure" and d["ended_by"] == "deadline" and end["reason"].startswith("deadline: ")
    assert (d["signed"], d["failed"], d["not_reached"]) == (100, 0, 400)
    assert ledger_rows(env) == (0, 0)
    # What was not signed is not consumed: it signs after a new Authorize.
    assert sign_all(c, signer, cid, hs[100:]) == 400


def test_deadline_while_streaming_ahead(env: Env, signer: Signer) -> None:
    """A client that sends everything at once and whose deadline cuts the run: 'deadline', and the
    counts add up to what was authorized and to the sign.hash records."""
    cid = signer.add_key("rsa-2048")
    c = signer.client()
    # More than the HSM workers can sign within the deadline on any machine here (RSA-2048 at the
    # best 3,100 signatures/s measured: about 2 s), so that some are never reached. With 2,000 a
    # fast, idle machine reached them all.
    total = 6000
    hs = digests(total)
    sad = c.authorize(cid, hs, signer.code()).sad
    got = 0
    with pytest.raises(grpc.RpcError) as e:
        for r in c.sign_stream(cid, sad, hs, "RSA_PKCS1_V15", chunk=100, timeout=0.6):
            got += len(r.signatures)
    assert code(e) == grpc.StatusCode.DEADLINE_EXCEEDED
    end = batch_end(env, cid, 20)
    d = details(end)
    assert end["result"] == "failure" and d["ended_by"] == "deadline", end["reason"]
    assert 0 < d["not_reached"] and d["signed"] + d["failed"] + d["not_reached"] == total
    signs = records(env, "sign.hash", cid)
    assert sum(r["result"] == "success" for r in signs) == d["signed"] >= got
    assert sum(r["result"] == "failure" for r in signs) == d["failed"]
    assert ledger_rows(env) == (0, 0)
    # Everything not sent, including what the HSM signed after the deadline (discarded), was
    # released: it signs after a new Authorize.
    sent = {bytes.fromhex(str(r["digest"])) for r in signs if r["result"] == "success"}
    rest = [h for h in hs if h not in sent]
    sad2 = c.authorize(cid, rest, signer.code()).sad
    assert sum(1 for r in c.sign_stream(cid, sad2, rest, "RSA_PKCS1_V15", chunk=200) for s in r.signatures if s) == len(
        rest
    )


def test_client_cancel(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(400)
    sad = c.authorize(cid, hs, signer.code()).sad
    s = Stream(c, cid, sad, timeout=30)
    s.send(hs[:100])
    assert len(s.answer().signatures) == 100
    s.call.cancel()  # type: ignore[attr-defined]
    s.close()
    end = batch_end(env, cid)
    d = details(end)
    assert end["result"] == "failure" and d["ended_by"] == "client cancel", end["reason"]
    assert (d["signed"], d["failed"], d["not_reached"]) == (100, 0, 300)
    assert sign_all(c, signer, cid, hs[100:]) == 300


def test_client_ends_early(env: Env, signer: Signer) -> None:
    """The client closes its side after part of the SAD's list: not 'completed'."""
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(300)
    sad = c.authorize(cid, hs, signer.code()).sad
    got = [s for r in c.sign_stream(cid, sad, hs[:100], "ECDSA", chunk=50) for s in r.signatures]
    assert len(got) == 100
    end = batch_end(env, cid)
    d = details(end)
    assert end["result"] == "failure" and d["ended_by"] == "client ended early", end["reason"]
    assert (d["signed"], d["not_reached"]) == (100, 200)


def test_server_shutdown(env: Env, signer: Signer) -> None:
    """A server stopping with a stream open: 'server shutdown' once the grace period is over."""
    srv = start_server(env.app, "127.0.0.1:0")
    try:
        cid = signer.add_key("ec-p256")
        c = RsignClient(srv.address)
        c.login(signer.user_id, signer.pin, signer.code())
        hs = digests(300)
        sad = c.authorize(cid, hs, signer.code()).sad
        s = Stream(c, cid, sad, timeout=30)
        s.send(hs[:100])
        assert len(s.answer().signatures) == 100
    finally:
        srv.stop(grace=0.5)
    s.close()
    end = batch_end(env, cid)
    d = details(end)
    assert end["result"] == "failure" and d["ended_by"] == "server shutdown", end["reason"]
    assert (d["signed"], d["not_reached"]) == (100, 200)


# -- faults between the HSM and the audit commit (a service of its own) ------------------------


class LockingHsm(CountingHsm):
    """The real pool, with one fault a test can arm: once the pool has answered, and before the
    answer reaches the service, take SQLite's write lock from another connection (what a stuck
    administrator's session, a full disk or a backup does), so the audit commit that follows fails.
    The test releases the lock."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.db: Path | None = None
        self._armed = threading.Event()
        self.holder: sqlite3.Connection | None = None
        self.locked = threading.Event()

    def arm(self, db: Path) -> None:
        self.db = db
        self.locked.clear()
        self._armed.set()

    def _fire(self) -> None:
        if not self._armed.is_set() or self.db is None:
            return
        self._armed.clear()
        c = sqlite3.connect(self.db, isolation_level=None, check_same_thread=False, timeout=10)
        c.execute("BEGIN IMMEDIATE")
        self.holder = c
        self.locked.set()

    def release(self) -> None:
        if self.holder is not None:
            self.holder.execute("ROLLBACK")
            self.holder.close()
            self.holder = None

    def sign(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> list[SignResult]:
        out = super().sign(cka_id, spec, digests)
        self._fire()
        return out

    def sign_async(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> Future[list[SignResult]]:
        inner = super().sign_async(cka_id, spec, digests)
        if not self._armed.is_set():
            return inner
        out: Future[list[SignResult]] = Future()

        def done(f: Future[list[SignResult]]) -> None:
            self._fire()
            exc = f.exception()
            if exc is not None:
                out.set_exception(exc)
            else:
                out.set_result(f.result())

        inner.add_done_callback(done)
        return out


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory.mktemp("rsign-faulty"), wrap=LockingHsm) as e:
        yield e


def hsm_of(env: Env) -> LockingHsm:
    assert isinstance(env.hsm, LockingHsm)
    return env.hsm


def settled(env: Env) -> bool:
    return ledger_rows(env) == (0, 0) and env.app.signing.recovery.orphans == 0


def test_audit_store_fails_mid_stream(faulty: Env) -> None:
    """Chunk 1 signed and delivered; chunk 2 signed by the HSM, then the store refuses the commit:
    UNAVAILABLE, chunk 2 withheld. Once the store answers, chunk 2 is recorded as interrupted
    (naming the caller and request) and released, and batch.end says 'audit failure'."""
    env, hsm = faulty, hsm_of(faulty)
    signer = make_signer(env)
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(500)
    sad = c.authorize(cid, hs, signer.code()).sad
    s = Stream(c, cid, sad, timeout=60)
    s.send(hs[:100])
    assert len(s.answer().signatures) == 100
    hsm.arm(env.state_dir / "rsign.db")
    s.send(hs[100:250])
    try:
        with pytest.raises(grpc.RpcError) as e:
            s.answer()
        assert code(e) == grpc.StatusCode.UNAVAILABLE
        assert hsm.locked.is_set()
        assert ledger_rows(env)[0] >= 1, "chunk 2 is consumed and unsettled while the store is down"
    finally:
        s.close()
        hsm.release()
    assert wait_until(lambda: settled(env), 15), ledger_rows(env)
    signs = records(env, "sign.hash", cid)
    ok = [r for r in signs if r["result"] == "success"]
    lost = [r for r in signs if r["result"] == "failure"]
    assert [r["digest"] for r in ok] == [h.hex() for h in hs[:100]]
    assert [r["digest"] for r in lost] == [h.hex() for h in hs[100:250]]
    assert all(r["reason"] == INTERRUPTED for r in lost)
    # The records name the original caller and request, not the reconciler.
    assert {(r["actor"], r["request_id"], r["client"]) for r in lost} == {
        (ok[0]["actor"], ok[0]["request_id"], ok[0]["client"])
    }
    assert [details(r)["position"] for r in lost] == list(range(100, 250))
    end = batch_end(env, cid)
    d = details(end)
    assert end["result"] == "failure" and d["ended_by"] == "audit failure", end["reason"]
    assert (d["signed"], d["failed"], d["not_reached"]) == (100, 150, 250)
    with env.app.store.read() as t:
        assert not t.consumed(cid, [(h, 0) for h in hs[100:]])
    # Never delivered, so signable again.
    assert sign_all(c, signer, cid, hs[100:]) == 400
    assert env.app.audit.verify_log(LOCAL_OPERATOR).ok


def test_fault_between_hsm_sign_and_audit_commit_unary(faulty: Env) -> None:
    """AUD-02: SignHash signed in the HSM, the audit commit then fails: no signature leaves
    (UNAVAILABLE), the outcome is reconciled as interrupted, and the digests sign again."""
    env, hsm = faulty, hsm_of(faulty)
    signer = make_signer(env)
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(3)
    sad = c.authorize(cid, hs, signer.code()).sad
    hsm.arm(env.state_dir / "rsign.db")
    try:
        with pytest.raises(grpc.RpcError) as e:
            c.sign_hash(cid, sad, hs, "ECDSA")
        assert code(e) == grpc.StatusCode.UNAVAILABLE
        assert hsm.locked.is_set()
    finally:
        hsm.release()
    assert wait_until(lambda: settled(env), 15), ledger_rows(env)
    signs = records(env, "sign.hash", cid)
    assert [(r["result"], r["reason"], r["digest"]) for r in signs] == [("failure", INTERRUPTED, h.hex()) for h in hs]
    assert {r["actor"] for r in signs} == {signer.user_id}
    sad2 = c.authorize(cid, hs, signer.code()).sad
    assert len(c.sign_hash(cid, sad2, hs, "ECDSA").signatures) == 3
    assert env.app.audit.verify_log(LOCAL_OPERATOR).ok
