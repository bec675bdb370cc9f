"""Bounded input over real gRPC (issue 9, items 3 and 4): oversized, out-of-range, unknown and
unparsable requests get INVALID_ARGUMENT with a message a person understands, before anything is
written; what the audit keeps of a refused request is bounded; nothing reaches the log as a
traceback."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rsign.domain import limits
from rsign.v1 import rsign_pb2 as pb
from tests.conftest import Env, Signer, detail, digests, make_signer

MIB = 1 << 20


def status(e: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return e.value.code()  # type: ignore[no-any-return,attr-defined]


def state_size(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def audit_rows(env: Env, after: int = 0) -> list[Mapping[str, Any]]:
    with env.app.store.read() as t:
        return list(t.audit_rows(after=after))


def head(env: Env) -> int:
    with env.app.store.read() as t:
        return (t.audit_head() or (0, ""))[0]


def serving(env: Env) -> bool:
    with grpc.insecure_channel(env.server.address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def no_tracebacks(caplog: pytest.LogCaptureFixture) -> None:
    bad = [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR or "Traceback" in r.getMessage()]
    assert not bad, [f"{r.name}: {r.getMessage()}" for r in bad]


def raw_call(env: Env, method: str, payload: bytes, md: list[tuple[str, str]] | None = None) -> None:
    """Send ``payload`` as the request bytes of ``method``, unparsed."""
    with grpc.insecure_channel(env.server.address) as ch:
        call = ch.unary_unary(method, request_serializer=None, response_deserializer=None)
        call(payload, metadata=tuple(md or ()), timeout=10)


def test_thirty_oversized_requests_write_almost_nothing(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    """Acceptance: the report's 27 MB (30 requests with a 1 MiB user id, PIN or credential id) is
    now at most 1 MiB, the signer is not locked out by them, and an auditor still reads the log."""
    signer = make_signer(env, "limits")
    cid = signer.add_key("ec-p256")
    auditor = make_signer(env, "auditor.limits", role="auditor", scope="province").client()
    session = signer.client()
    anonymous = signer.client(login=False)
    before, seq0 = state_size(env.state_dir), head(env)
    huge = "x" * MIB
    for i in range(10):
        with pytest.raises(grpc.RpcError) as e:
            anonymous.auth.Login(pb.LoginRequest(user_id=huge + str(i), pin="12345678", otp="123456"), timeout=10)
        assert status(e) == grpc.StatusCode.INVALID_ARGUMENT
        assert detail(e) == f"user_id is {MIB + 1} characters; at most {limits.ID_MAX} are allowed"
        with pytest.raises(grpc.RpcError) as e:
            anonymous.auth.Login(pb.LoginRequest(user_id=signer.user_id, pin=huge, otp="123456"), timeout=10)
        assert status(e) == grpc.StatusCode.INVALID_ARGUMENT
        assert detail(e).startswith(f"pin is {MIB} characters")
        with pytest.raises(grpc.RpcError) as e:
            anonymous.signing.Authorize(
                pb.AuthorizeRequest(credential_id=huge, hash_algorithm=pb.SHA256, hashes=digests(1), otp="1"),
                timeout=10,
            )
        assert status(e) == grpc.StatusCode.UNAUTHENTICATED
    # Nothing identifies the caller of those thirty: nothing was written for them.
    assert head(env) == seq0
    # With a session the refusal is audited, in a record of bounded size.
    for _ in range(10):
        with pytest.raises(grpc.RpcError) as e:
            session.signing.Authorize(
                pb.AuthorizeRequest(credential_id=huge, hash_algorithm=pb.SHA256, hashes=digests(1), otp="1"),
                metadata=session.md(),
                timeout=10,
            )
        assert status(e) == grpc.StatusCode.INVALID_ARGUMENT
        assert detail(e) == f"credential_id is {MIB} characters; at most {limits.ID_MAX} are allowed"
    assert state_size(env.state_dir) - before <= MIB
    refusals = [r for r in audit_rows(env, seq0) if r["action"] == "request.refuse"]
    assert len(refusals) == 10
    for r in refusals:
        assert r["result"] == "failure" and r["actor"] == signer.user_id
        assert len(r["credential_id"]) <= limits.ID_MAX
        assert r["credential_id"].startswith("xxxx") and f"{MIB} chars)" in r["credential_id"]
        assert "sha256:" in r["credential_id"]
    # The PIN refusals counted no failure: the signer is not locked and still signs.
    hs = digests(1)
    c = signer.client()
    sad = c.authorize(cid, hs, signer.code()).sad
    assert len(c.sign_hash(cid, sad, hs, "ECDSA").signatures) == 1
    events = auditor.list_events(page_size=1000, action="request.refuse").events
    assert {e.actor for e in events} >= {signer.user_id}
    no_tracebacks(caplog)


def test_list_events_out_of_range_and_long_filters(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    auditor = make_signer(env, "auditor.range", role="auditor", scope="province").client()
    cases: list[tuple[dict[str, Any], str]] = [
        ({"from_time": 2**62}, "filter.from_time"),
        ({"to_time": -1}, "filter.to_time"),
        ({"from_time": 10}, "filter.from_time"),
        ({"agency": "A" * 60_000}, "filter.agency is 60000 characters"),
        ({"user_id": "u" * 60_000}, "filter.user_id is 60000 characters"),
        ({"action": "a" * 60_000}, "filter.action is 60000 characters"),
        ({"credential_id": "bad\x00id"}, "filter.credential_id contains a NUL character"),
    ]
    for flt, message in cases:
        with pytest.raises(grpc.RpcError) as e:
            auditor.list_events(**flt)
        assert status(e) == grpc.StatusCode.INVALID_ARGUMENT, flt
        assert detail(e).startswith(message), detail(e)
    with pytest.raises(grpc.RpcError) as e:
        auditor.list_events(page_token="t" * 60_000)
    assert status(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert serving(env)
    # In range: both bounds of the documented window work.
    auditor.list_events(from_time=limits.UNIX_TIME_MIN, to_time=limits.UNIX_TIME_MAX)
    no_tracebacks(caplog)


def test_admin_search_strings_are_bounded(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    admin = make_signer(env, "admin.limits", role="admin").client()
    with pytest.raises(grpc.RpcError) as e:
        admin.admin.SearchUsers(pb.SearchUsersRequest(name="n" * 60_000), metadata=admin.md())
    assert status(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert detail(e) == f"name is 60000 characters; at most {limits.SEARCH_MAX} are allowed"
    with pytest.raises(grpc.RpcError) as e:
        admin.admin.SearchCredentials(pb.SearchCredentialsRequest(expires_within_days=2**32 - 1), metadata=admin.md())
    assert status(e) == grpc.StatusCode.INVALID_ARGUMENT
    with pytest.raises(grpc.RpcError) as e:
        admin.admin.SetSealUsers(
            pb.SetSealUsersRequest(credential_id="S", user_ids=["u"] * (limits.USER_IDS_MAX + 1)), metadata=admin.md()
        )
    assert status(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert serving(env)
    no_tracebacks(caplog)


def test_unknown_enum_values_are_refused_and_audited(
    env: Env, signer: Signer, caplog: pytest.LogCaptureFixture
) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(1)
    seq0 = head(env)
    with pytest.raises(grpc.RpcError) as e:
        c.signing.Authorize(
            pb.AuthorizeRequest(credential_id=cid, hash_algorithm=7, hashes=hs, otp=signer.code()),  # type: ignore[arg-type]
            metadata=c.md(),
        )
    assert status(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert "hash_algorithm" in detail(e) and "SHA256" in detail(e)
    sad = c.authorize(cid, hs, signer.code()).sad
    with pytest.raises(grpc.RpcError) as e:
        c.signing.SignHash(
            pb.SignHashRequest(credential_id=cid, sad=sad, hash_algorithm=pb.SHA256, signature_scheme=9, hashes=hs),  # type: ignore[arg-type]
            metadata=c.md(),
        )
    assert status(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert "signature_scheme" in detail(e)
    refusals = [r for r in audit_rows(env, seq0) if r["action"] == "request.refuse"]
    assert [(r["result"], r["actor"], r["credential_id"]) for r in refusals] == [
        ("failure", signer.user_id, cid),
        ("failure", signer.user_id, cid),
    ]
    assert '"field":"hash_algorithm"' in refusals[0]["details"]
    assert '"method":"SigningService/Authorize"' in refusals[0]["details"]
    assert '"field":"signature_scheme"' in refusals[1]["details"]
    # The SAD was not consumed by the refused request: it still signs.
    assert len(c.sign_hash(cid, sad, hs, "ECDSA").signatures) == 1
    no_tracebacks(caplog)


def test_unparsable_requests(env: Env, signer: Signer, caplog: pytest.LogCaptureFixture) -> None:
    junk = b"\xff\xff\xff\xff\x0f"
    with pytest.raises(grpc.RpcError) as e:
        raw_call(env, "/rsign.v1.AuthService/Login", junk)
    assert status(e) == grpc.StatusCode.INVALID_ARGUMENT
    assert "rsign.v1.LoginRequest" in detail(e)
    c = signer.client()
    seq0 = head(env)
    with pytest.raises(grpc.RpcError) as e:
        raw_call(env, "/rsign.v1.SigningService/Authorize", junk, c.md())
    assert status(e) == grpc.StatusCode.INVALID_ARGUMENT
    refusals = [r for r in audit_rows(env, seq0) if r["action"] == "request.refuse"]
    assert [(r["result"], r["actor"]) for r in refusals] == [("failure", signer.user_id)]
    # A stream whose second message is junk: the batch ends, audited, with the same status.
    cid = signer.add_key("ec-p256")
    hs = digests(4)
    sad = c.authorize(cid, hs, signer.code()).sad
    first = pb.SignHashStreamRequest(
        credential_id=cid, sad=sad, hash_algorithm=pb.SHA256, signature_scheme=pb.ECDSA, hashes=hs[:2]
    ).SerializeToString()
    with grpc.insecure_channel(env.server.address) as ch:
        call = ch.stream_stream(
            "/rsign.v1.SigningService/SignHashStream", request_serializer=None, response_deserializer=None
        )
        with pytest.raises(grpc.RpcError) as e:
            list(call(iter([first, junk]), metadata=tuple(c.md()), timeout=10))
    assert status(e) == grpc.StatusCode.INVALID_ARGUMENT
    ends = [r for r in audit_rows(env, seq0) if r["action"] == "batch.end"]
    assert ends and ends[-1]["result"] == "failure" and "SignHashStreamRequest" in ends[-1]["reason"]
    assert serving(env)
    no_tracebacks(caplog)
