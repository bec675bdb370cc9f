"""No caller can starve the others (issue 9, item 2).

Before: 70 authenticated SignHashStream calls that never sent a message each held one of the 64
server threads, and Health.Check and every other user's Login timed out. Each test here runs its
own server over the session's App with a short idle time, so that held streams end in seconds.
"""

from __future__ import annotations

import dataclasses
import json
import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rsign.api.server import RunningServer, start_server
from rsign.client.raw import HASH, SCHEME, RsignClient
from rsign.v1 import rsign_pb2 as pb
from tests.conftest import Env, Signer, digests, make_signer

IDLE = 2.0
IDLE_MESSAGE = f"no message for {IDLE:g} s: stream closed"


def serve(env: Env, **overrides: Any) -> RunningServer:
    """A server of its own over the session's App (same store, HSM pool and clock)."""
    app = dataclasses.replace(env.app, settings=env.settings.with_overrides(stream_idle_seconds=IDLE, **overrides))
    return start_server(app, "127.0.0.1:0")


def login(srv: RunningServer, who: Signer) -> RsignClient:
    c = RsignClient(srv.address)
    c.login(who.user_id, who.pin, who.code())
    return c


def idle_batch_ends(env: Env, user_id: str) -> list[Mapping[str, Any]]:
    with env.app.store.read() as t:
        return [
            r
            for r in t.audit_rows()
            if r["action"] == "batch.end" and r["actor"] == user_id and r["reason"] == f"idle: {IDLE_MESSAGE}"
        ]


def wait_until(cond: Any, timeout: float) -> bool:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if cond():
            return True
        time.sleep(0.02)
    return bool(cond())


@pytest.mark.parametrize(
    ("caps", "held"),
    [
        ({}, 4),  # the default per-session cap (4 streams) is what stops one signer
        # Caller caps lifted: the server-wide stream budget alone must keep threads for the others.
        ({"streams_per_session": 1000, "streams_per_user": 1000, "rpc_stream_threads": 24}, 24),
    ],
    ids=["default-caps", "server-budget"],
)
def test_idle_streams_cannot_starve_health_and_login(env: Env, caps: dict[str, int], held: int) -> None:
    """Acceptance: one signer opens 300 SignHashStream calls that never send a message. Health
    answers within 1 s and another user's Login -> Authorize -> SignHash within 2 s while the
    admitted streams are held; the excess is refused at once (RESOURCE_EXHAUSTED); the held
    streams end with the idle status and each leaves a batch.end failure record."""
    srv = serve(env, **caps)
    hog, other = make_signer(env, "hog"), make_signer(env, "other")
    cid = other.add_key("ec-p256")
    hog_client = login(srv, hog)
    release = threading.Event()

    def silent() -> Iterator[pb.SignHashStreamRequest]:
        release.wait()
        yield from ()

    try:
        calls = [hog_client.signing.SignHashStream(silent(), metadata=hog_client.md()) for _ in range(300)]

        def refused() -> list[Any]:
            return [c for c in calls if c.done()]

        assert wait_until(lambda: len(refused()) >= 300 - held, 10.0), f"{len(refused())} of 300 ended"
        assert srv.admission.in_progress("streams") == held
        for c in refused():
            assert c.code() is grpc.StatusCode.RESOURCE_EXHAUSTED, (c.code(), c.details())
            assert "too many streams in progress" in c.details() or "busy" in c.details()

        t0 = time.monotonic()
        health = health_pb2_grpc.HealthStub(grpc.insecure_channel(srv.address))
        resp = health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
        assert resp.status == health_pb2.HealthCheckResponse.SERVING
        assert time.monotonic() - t0 < 1.0

        t0 = time.monotonic()
        oc = login(srv, other)
        hs = digests(3)
        sad = oc.authorize(cid, hs, other.code()).sad
        signed = oc.sign_hash(cid, sad, hs, "ECDSA", timeout=2.0)
        assert len(signed.signatures) == 3 and all(signed.signatures)
        assert time.monotonic() - t0 < 2.0
        # The hog's streams were held all along: the checks above ran beside them.
        assert srv.admission.in_progress("streams") == held

        assert wait_until(lambda: all(c.done() for c in calls), IDLE + 5.0)
        idled = [c for c in calls if c.code() is not grpc.StatusCode.RESOURCE_EXHAUSTED]
        assert len(idled) == held
        for c in idled:
            assert c.code() is grpc.StatusCode.DEADLINE_EXCEEDED and c.details() == IDLE_MESSAGE
        assert wait_until(lambda: len(idle_batch_ends(env, hog.user_id)) == held, 5.0)
        rec = idle_batch_ends(env, hog.user_id)[0]
        assert rec["result"] == "failure" and rec["credential_id"] == ""
        # Every slot was given back, and no reader thread outlived its stream.
        assert srv.admission.in_progress("streams") == 0 and srv.admission.in_progress("authenticated") == 0
        assert wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("rsign-stream")], 5.0), [
            t.name for t in threading.enumerate()
        ]
    finally:
        release.set()
        hog_client.close()
        srv.stop(grace=1)


def first(cid: str, sad: str, hashes: list[bytes]) -> pb.SignHashStreamRequest:
    return pb.SignHashStreamRequest(
        credential_id=cid, sad=sad, hash_algorithm=HASH["SHA256"], signature_scheme=SCHEME["ECDSA"], hashes=hashes
    )


def test_stream_idle_after_first_chunk_is_closed_and_audited(env: Env, signer: Signer) -> None:
    """A client that sends one chunk, reads its signatures, then goes silent: DEADLINE_EXCEEDED
    after the idle time, and batch.end says so; what was signed stays signed and audited."""
    srv = serve(env)
    cid = signer.add_key("ec-p256")
    c = login(srv, signer)
    hs = digests(200)
    sad = c.authorize(cid, hs, signer.code()).sad
    release = threading.Event()

    def requests() -> Iterator[pb.SignHashStreamRequest]:
        yield first(cid, sad, hs[:100])
        release.wait()

    try:
        call = c.signing.SignHashStream(requests(), metadata=c.md(), timeout=IDLE + 5)
        got = next(call)
        assert got.offset == 0 and len(got.signatures) == 100
        t0 = time.monotonic()
        with pytest.raises(grpc.RpcError) as e:
            next(call)
        assert e.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED  # type: ignore[attr-defined]
        assert e.value.details() == IDLE_MESSAGE  # type: ignore[attr-defined]
        assert IDLE - 0.5 <= time.monotonic() - t0 <= IDLE + 2.0
        assert wait_until(lambda: len(idle_batch_ends(env, signer.user_id)) == 1, 5.0)
        end = idle_batch_ends(env, signer.user_id)[0]
        assert end["credential_id"] == cid and end["result"] == "failure"
        details = json.loads(end["details"])
        assert details["received"] == 100 and details["signed"] == 100
        assert wait_until(lambda: not [t for t in threading.enumerate() if t.name.startswith("rsign-stream")], 5.0)
    finally:
        release.set()
        c.close()
        srv.stop(grace=1)


def test_slow_but_steady_client_is_not_cut(env: Env, signer: Signer) -> None:
    """Idle means silent: a client that sends its next chunk within the idle time, however long
    the whole batch takes, is served to the end."""
    srv = serve(env)
    cid = signer.add_key("ec-p256")
    c = login(srv, signer)
    hs = digests(30)
    sad = c.authorize(cid, hs, signer.code()).sad

    def requests() -> Iterator[pb.SignHashStreamRequest]:
        yield first(cid, sad, hs[:10])
        for i in range(10, 30, 10):
            time.sleep(IDLE * 0.6)  # two pauses: longer together than the idle time
            yield pb.SignHashStreamRequest(hashes=hs[i : i + 10])

    try:
        sigs = [s for r in c.signing.SignHashStream(requests(), metadata=c.md(), timeout=20) for s in r.signatures]
        assert len(sigs) == 30 and all(sigs)
    finally:
        c.close()
        srv.stop(grace=1)


def test_authorize_of_10000_sha512_hashes_fits_the_message_limit(env: Env, signer: Signer) -> None:
    """The 4 MiB receive limit leaves room for the largest legitimate request (multisign_max
    SHA-512 digests, ~660 KB); a bigger message is refused by grpc before it is parsed."""
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(env.settings.multisign_max, "sha512")
    assert c.authorize(cid, hs, signer.code(), "SHA512").sad
    with pytest.raises(grpc.RpcError) as e:
        c.auth.Login(pb.LoginRequest(user_id="x", pin="p" * (4 * 1024 * 1024), otp="000000"))
    assert e.value.code() is grpc.StatusCode.RESOURCE_EXHAUSTED  # type: ignore[attr-defined]
