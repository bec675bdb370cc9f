"""AuditService over real gRPC: roles and scopes, pagination, exports verified offline, VerifyLog,
and fail-closed signing when the audit store cannot be written."""

from __future__ import annotations

import json
import sqlite3
import time
from datetime import datetime
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rsign.audit.offline import verify_export
from rsign.domain.principal import LOCAL_OPERATOR
from tests.conftest import Env, Signer, detail, digests, make_signer

AGENCY_A = "Sở Y tế"
AGENCY_B = "Sở Giáo dục và Đào tạo"


def status(e: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return e.value.code()  # type: ignore[no-any-return,attr-defined]


def sign_one(s: Signer, alg: str = "ec-p256") -> str:
    cid = s.add_key(alg)
    c = s.client()
    hs = digests(2)
    sad = c.authorize(cid, hs, s.code()).sad
    c.sign_hash(cid, sad, hs, "ECDSA")
    return cid


@pytest.fixture(scope="module")
def agencies(env: Env) -> dict[str, str]:
    a = make_signer(env, "yte", agency=AGENCY_A)
    b = make_signer(env, "gd", agency=AGENCY_B)
    return {"a": sign_one(a), "b": sign_one(b)}


def health(env: Env) -> int:
    with grpc.insecure_channel(env.server.address) as ch:
        return int(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="")).status)


def test_signer_is_refused(env: Env, signer: Signer) -> None:
    c = signer.client()
    for call in (lambda: c.list_events(), lambda: c.verify_log(), lambda: c.export_events()):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert status(e) == grpc.StatusCode.PERMISSION_DENIED


def test_agency_auditor_sees_only_their_agency(env: Env, agencies: dict[str, str]) -> None:
    aud = make_signer(env, "auditor.yte", agency=AGENCY_A, role="auditor").client()
    seen: list[int] = []
    token = ""
    while True:
        page = aud.list_events(page_size=7, page_token=token)
        seen += [ev.seq for ev in page.events]
        assert all(ev.agency == AGENCY_A for ev in page.events)
        token = page.next_page_token
        if not token:
            break
    assert seen == sorted(set(seen)), "pages overlap or are out of order"
    assert aud.list_events(page_size=10, action="sign.hash", credential_id=agencies["a"]).events
    assert not aud.list_events(page_size=10, action="sign.hash", credential_id=agencies["b"]).events
    with pytest.raises(grpc.RpcError) as e:
        aud.list_events(agency=AGENCY_B)
    assert status(e) == grpc.StatusCode.PERMISSION_DENIED and AGENCY_B in detail(e)


def test_province_auditor_sees_all_and_filters(env: Env, agencies: dict[str, str]) -> None:
    aud = make_signer(env, "auditor.tinh", agency="Thanh tra tỉnh", role="auditor", scope="province").client()
    # Both agencies' signatures are visible (asked per credential: the shared log may already hold
    # more than a page of other tests' signatures).
    for cid in (agencies["a"], agencies["b"]):
        assert aud.list_events(page_size=10, action="sign.hash", credential_id=cid).events
    only_b = aud.list_events(page_size=1000, credential_id=agencies["b"]).events
    assert only_b and all(ev.credential_id == agencies["b"] for ev in only_b)
    assert {ev.action for ev in only_b} >= {"key.generate", "sad.issue", "sad.consume", "sign.hash"}
    failures = aud.list_events(page_size=50, result="failure").events
    assert all(ev.result == "failure" for ev in failures)
    everything = aud.list_events(page_size=1000).events
    mid = everything[len(everything) // 2]
    start = int(datetime.fromisoformat(mid.time.replace("Z", "+00:00")).timestamp())
    later = aud.list_events(page_size=1000, from_time=start).events
    first_second = mid.time[:19]
    assert later and all(ev.time[:19] >= first_second for ev in later)
    # The filter left out the oldest records (both lists are capped at 1,000: compare where they
    # start, not their lengths, which the shared log's size would decide).
    assert later[0].seq > everything[0].seq or everything[0].time[:19] >= first_second
    before = aud.list_events(page_size=1000, to_time=start).events
    assert all(ev.time[:19] < first_second for ev in before)


def test_scoped_export_verifies_offline_and_hides_other_agencies(
    env: Env, agencies: dict[str, str], tmp_path: Path
) -> None:
    aud = make_signer(env, "auditor.yte", agency=AGENCY_A, role="auditor").client()
    out = tmp_path / "export.jsonl"
    out.write_bytes(aud.export_events())
    rep = verify_export(out)
    assert rep.ok, rep.problems
    assert rep.records > 0 and rep.links > 0
    entries = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    records = [e for e in entries if e["type"] == "record"]
    assert all(r["agency"] == AGENCY_A for r in records)
    # Nothing about the other agency's credential is exported; other agencies' records are bare
    # links (no content). (Agency A's own auditors' query records may name what they searched for.)
    assert all(r["credential_id"] != agencies["b"] for r in records)
    assert all(set(e) == {"type", "seq", "content_hash", "hash"} for e in entries if e["type"] == "link")


def test_verify_log_over_grpc(env: Env) -> None:
    aud = make_signer(env, "auditor.tinh", agency="Thanh tra tỉnh", role="auditor", scope="province").client()
    # A checkpoint to verify, whether or not the service has been up long enough to sign one.
    env.app.audit.checkpoint()
    resp = aud.verify_log()
    assert resp.ok and resp.problem == "" and resp.records == resp.head_seq and resp.checkpoints >= 1


def test_fail_closed_when_the_audit_store_cannot_be_written(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(1)
    sad = c.authorize(cid, hs, signer.code()).sad
    calls = env.hsm.sign_calls
    # Another process takes the database's write lock and keeps it: nothing can be audited.
    blocker = sqlite3.connect(env.state_dir / "rsign.db", timeout=5, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(grpc.RpcError) as e:
            c.sign_hash(cid, sad, hs, "ECDSA")
        assert status(e) == grpc.StatusCode.UNAVAILABLE and "audit" in detail(e)
        assert env.hsm.sign_calls == calls, "the HSM was called although nothing could be audited"
        assert health(env) == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    deadline = time.monotonic() + 10
    while health(env) != health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
        time.sleep(0.2)
    assert health(env) == health_pb2.HealthCheckResponse.SERVING
    # Nothing was consumed while the store was down: the same SAD signs now.
    assert len(c.sign_hash(cid, sad, hs, "ECDSA").signatures) == 1
    assert env.app.audit.verify_log(LOCAL_OPERATOR).ok
