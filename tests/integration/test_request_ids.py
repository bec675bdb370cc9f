"""A caller's own request id (``x-request-id``) names its audit records, over gRPC and over the HTTP
face alike (one rule, rsign.domain.context.client_request_id); one that does not fit the audit
column is replaced by rsign's own, never cut."""

from __future__ import annotations

from collections.abc import Iterator

import grpc
import httpx
import pytest

from rsign.domain.context import client_request_id
from rsign.domain.events import EventFilter
from rsign.http.server import HttpServer, start_http
from rsign.v1 import rsign_pb2 as pb
from rsign.v1 import rsign_pb2_grpc as rpc
from tests.conftest import Env, Signer


@pytest.fixture(scope="module")
def http(env: Env) -> Iterator[HttpServer]:
    srv = start_http(env.app, "127.0.0.1:0")
    try:
        yield srv
    finally:
        srv.stop(1.0)


def _last_login_request_id(env: Env, user_id: str) -> str:
    with env.app.store.read() as t:
        (rec,) = t.last_events(EventFilter(action="auth.login", actor=user_id), 1)
    return str(rec["request_id"])


def test_the_rule() -> None:
    assert client_request_id("trace-1") == "trace-1"
    assert client_request_id("x" * 64) == "x" * 64
    assert client_request_id("x" * 65) is None
    assert client_request_id("") is None
    assert client_request_id(b"trace-1") is None


def test_grpc_metadata_names_the_records(env: Env, signer: Signer) -> None:
    with grpc.insecure_channel(env.server.address) as ch:
        auth = rpc.AuthServiceStub(ch)  # type: ignore[no-untyped-call]  # generated, untyped
        for rid, expected in (("trace-grpc-1", "trace-grpc-1"), ("y" * 65, None)):
            req = pb.LoginRequest(user_id=signer.user_id, pin=signer.pin, otp=signer.code())
            auth.Login(req, metadata=[("x-request-id", rid)], timeout=30)
            got = _last_login_request_id(env, signer.user_id)
            if expected is None:
                assert got != rid and 16 <= len(got) <= 64  # rsign's own
            else:
                assert got == expected


def test_http_header_names_the_records(env: Env, signer: Signer, http: HttpServer) -> None:
    url = f"{http.base_url}/csc/v2/auth/login"
    for rid, expected in (("trace-http-1", "trace-http-1"), ("z" * 65, None)):
        body = {"userID": signer.user_id, "PIN": signer.pin, "OTP": signer.code()}
        r = httpx.post(url, json=body, headers={"x-request-id": rid})
        assert r.status_code == 200, r.text
        got = _last_login_request_id(env, signer.user_id)
        if expected is None:
            assert got != rid and 16 <= len(got) <= 64
        else:
            assert got == expected
