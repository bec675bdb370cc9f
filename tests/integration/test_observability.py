"""What an operator watches, on ``rsign serve`` as it is run: Prometheus metrics that move while
signing, gRPC server reflection listing rsign's services, and JSON log lines (one per RPC) that
carry the request id, method, status, duration and principal, and never a PIN, OTP, session token
or SAD."""

from __future__ import annotations

import base64
import json
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import ProtoReflectionDescriptorDatabase
from prometheus_client.parser import text_string_to_metric_families

from rsign.client.raw import RsignClient
from tests.conftest import RecordingClient, Secrets, digests
from tests.integration.serving import Pki, Served, User, free_port, prepare_state, rsign_cmd, serve

RSIGN_SERVICES = {"rsign.v1.AuthService", "rsign.v1.SigningService", "rsign.v1.AuditService", "rsign.v1.AdminService"}
SIGN_HASH = "/rsign.v1.SigningService/SignHash"
STREAM = "/rsign.v1.SigningService/SignHashStream"
LOGIN = "/rsign.v1.AuthService/Login"


@dataclass
class Observed:
    srv: Served
    metrics: str  # the endpoint's URL
    state: Path
    users: list[User]


@pytest.fixture(scope="module")
def observed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Observed]:
    state = tmp_path_factory.mktemp("observe") / "state"
    users = prepare_state(state, 6, config="[service]\ncheckpoint_interval_seconds = 1\n")
    mport = free_port()
    srv = serve(state, free_port(), "--metrics-listen", f"127.0.0.1:{mport}", "--log-format", "json")
    yield Observed(srv, f"http://127.0.0.1:{mport}/metrics", state, users)
    srv.stop()


Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(url: str) -> Samples:
    with urllib.request.urlopen(url, timeout=10) as resp:
        assert resp.status == 200
        text = resp.read().decode()
    return {
        (s.name, frozenset(s.labels.items())): s.value for f in text_string_to_metric_families(text) for s in f.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def sign_some(srv: Served, unary: User, streaming: User, record: Secrets, n: int) -> None:
    """One SignHash of 2 hashes and one stream of ``n``, recording every secret. Two users: the
    server runs on the real clock, and a user has two fresh codes per 30 s (login, authorize)."""
    for user in (unary, streaming):
        c = RecordingClient(srv.address, record)
        try:
            c.login(user.user_id, user.pin, user.code())
            ds = digests(2 if user is unary else n, tag=user.user_id)
            sad = c.authorize(user.credential_id, ds, user.code()).sad
            if user is unary:
                assert len(c.sign_hash(user.credential_id, sad, ds, "ECDSA").signatures) == 2
            else:
                got = sum(len(r.signatures) for r in c.sign_stream(user.credential_id, sad, ds, "ECDSA", chunk=100))
                assert got == n
        finally:
            c.close()


def test_metrics_move_during_a_signing_run(observed: Observed) -> None:
    before = scrape(observed.metrics)
    record = Secrets()
    # Scraped again and again while the run goes on: the endpoint answers under load.
    scrapes: list[Samples] = []
    done = threading.Event()

    def keep_scraping() -> None:
        while not done.is_set():
            scrapes.append(scrape(observed.metrics))
            time.sleep(0.05)

    scraper = threading.Thread(target=keep_scraping)
    scraper.start()
    try:
        sign_some(observed.srv, observed.users[0], observed.users[1], record, 600)
        # A refused login (wrong PIN): counted under its status.
        bad = RecordingClient(observed.srv.address, record)
        with pytest.raises(grpc.RpcError) as refused:
            bad.login(observed.users[2].user_id, "P00000000", observed.users[2].code())
        bad.close()
    finally:
        done.set()
        scraper.join()
    after = scrape(observed.metrics)
    assert scrapes, "the endpoint answered during the run"

    def moved(name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    assert moved("rsign_rpcs_total", method=SIGN_HASH, code="OK") == 1
    assert moved("rsign_rpcs_total", method=STREAM, code="OK") == 1
    assert moved("rsign_rpcs_total", method=LOGIN, code="OK") >= 1
    assert moved("rsign_rpcs_total", method=LOGIN, code=refused.value.code().name) == 1
    assert moved("rsign_rpc_duration_seconds_count", method=SIGN_HASH) == 1
    assert moved("rsign_rpc_duration_seconds_bucket", method=STREAM, le="+Inf") == 1
    assert moved("rsign_signatures_total", algorithm="ECDSA-SHA256", result="success") == 602
    assert moved("rsign_audit_records_total") >= 602 + 6  # signatures, logins, SADs, batch start and end
    assert moved("rsign_audit_append_seconds_count") >= 3
    assert moved("rsign_audit_group_callers_count") == moved("rsign_audit_append_seconds_count")
    assert value(after, "rsign_audit_append_seconds_sum") > 0
    # The HSM pools: configured and running workers, with their queues; nothing restarted.
    for pool in ("signing", "audit"):
        assert value(after, "rsign_hsm_workers", pool=pool) >= 1
        assert value(after, "rsign_hsm_workers_alive", pool=pool) == value(after, "rsign_hsm_workers", pool=pool)
        assert ("rsign_hsm_queue_depth", frozenset({("pool", pool)})) in after
        assert ("rsign_hsm_workers_busy", frozenset({("pool", pool)})) in after
        assert value(after, "rsign_hsm_worker_restarts_total", pool=pool) == 0
    # The audit MACs of this run's sequential calls found the audit worker idle: no queue.
    assert moved("rsign_hsm_direct_jobs_total", pool="audit") >= 1
    assert ("rsign_database_errors_total", frozenset()) in after and value(after, "rsign_database_errors_total") == 0
    # A checkpoint every second here: the gauges are there and recent.
    deadline = time.monotonic() + 10
    while value(after, "rsign_audit_last_checkpoint_seq") < 602 and time.monotonic() < deadline:
        time.sleep(0.5)
        after = scrape(observed.metrics)
    assert value(after, "rsign_audit_last_checkpoint_seq") >= 602
    assert 0 <= value(after, "rsign_audit_seconds_since_checkpoint") < 10
    assert abs(value(after, "rsign_audit_last_checkpoint_timestamp_seconds") - time.time()) < 30
    assert ("rsign_tls_certificate_expiry_timestamp_seconds", frozenset()) not in after  # plaintext here


def test_reflection_lists_the_rsign_services(observed: Observed) -> None:
    with grpc.insecure_channel(observed.srv.address) as ch:
        db = ProtoReflectionDescriptorDatabase(ch)
        services = set(db.get_services())
        assert RSIGN_SERVICES <= services
        assert "grpc.health.v1.Health" in services
        pool = DescriptorPool(db)
        sign = pool.FindServiceByName("rsign.v1.SigningService")
        assert {"Authorize", "SignHash", "SignHashStream"} <= {m.name for m in sign.methods}
        assert pool.FindMessageTypeByName("rsign.v1.SignHashRequest").fields_by_name["hashes"].number > 0


def test_json_log_lines_name_the_call_and_never_a_secret(observed: Observed) -> None:
    record = Secrets()
    user, other = observed.users[3], observed.users[4]
    sign_some(observed.srv, user, other, record, 150)
    record.pins |= {user.pin, other.pin}
    record.seeds |= {user.seed, other.seed}
    bad = RecordingClient(observed.srv.address, record)
    with pytest.raises(grpc.RpcError):
        bad.login(observed.users[5].user_id, "P99999999", observed.users[5].code())
    bad.close()
    # A call with a made-up session token: refused, the token nowhere in the log.
    forged = "forged-" + base64.urlsafe_b64encode(b"not a session token at all").decode()
    record.tokens.add(forged)
    stranger = RsignClient(observed.srv.address)
    stranger.token = forged
    with pytest.raises(grpc.RpcError):
        stranger.list_credentials()
    stranger.close()
    time.sleep(0.5)  # the access lines of the last calls are written as the calls end

    text = observed.srv.stderr()
    lines = [json.loads(line) for line in text.splitlines() if line.strip()]  # every line is JSON
    access = [x for x in lines if x.get("logger") == "rsign.access"]
    assert (SIGN_HASH, "OK") in {(x["method"], x["code"]) for x in access if x["principal"] == user.user_id}
    assert (STREAM, "OK") in {(x["method"], x["code"]) for x in access if x["principal"] == other.user_id}
    for x in access:
        assert set(x) >= {"ts", "level", "request_id", "method", "code", "duration_ms", "principal", "client"}
        assert len(x["request_id"]) >= 16 and x["duration_ms"] >= 0
    assert any(x["method"] == LOGIN and x["code"] != "OK" for x in access)
    assert any(
        x["method"] == "/rsign.v1.SigningService/ListCredentials" and x["code"] == "UNAUTHENTICATED" for x in access
    )
    secrets = [*record.pins, *record.otps, *record.tokens, user.pin]
    assert record.pins and record.otps and len(record.tokens) >= 4
    for secret in secrets:
        assert secret not in text, "a secret in the log"
    for seed in record.seeds:
        assert base64.b32encode(seed).decode().rstrip("=") not in text


def test_tls_certificate_expiry_and_no_reflection_off_loopback(observed: Observed, tmp_path: Path) -> None:
    """A second replica on the same state, over TLS on every address: its metrics give the served
    certificate's expiry; reflection is off by default on a non-loopback listener."""
    pki = Pki(tmp_path / "pki")
    cert = pki.server()
    mport, port = free_port(), free_port()
    srv = serve(
        observed.state,
        port,
        "--listen",
        f"0.0.0.0:{port}",  # the last --listen wins; clients still reach it on 127.0.0.1
        "--tls-cert",
        str(cert.cert),
        "--tls-key",
        str(cert.key),
        "--metrics-listen",
        str(mport),  # a port alone: loopback
    )
    try:
        from cryptography import x509

        leaf = x509.load_pem_x509_certificate(cert.cert.read_bytes())
        got = scrape(f"http://127.0.0.1:{mport}/metrics")
        assert value(got, "rsign_tls_certificate_expiry_timestamp_seconds") == leaf.not_valid_after_utc.timestamp()
        creds = grpc.ssl_channel_credentials(pki.ca.path.read_bytes())
        with grpc.secure_channel(srv.address, creds) as ch:
            with pytest.raises(grpc.RpcError) as off:
                ProtoReflectionDescriptorDatabase(ch).get_services()
            assert off.value.code() == grpc.StatusCode.UNIMPLEMENTED
    finally:
        srv.stop()


def test_metrics_off_loopback_is_refused_unless_allowed(tmp_path: Path) -> None:
    import subprocess

    out = subprocess.run(
        rsign_cmd("serve", "--state-dir", str(tmp_path / "s"), "--metrics-listen", "0.0.0.0:9464"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: refusing the metrics endpoint on non-loopback 0.0.0.0:9464: it has no authentication; listen on"
        " 127.0.0.1, or pass --metrics-allow-remote (and restrict who reaches it)"
    ]
