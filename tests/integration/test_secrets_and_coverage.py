"""A representative workload on a service of its own: every audited action it performs is on the
log with who, when, which request and from where; the log verifies with `rsign audit verify` and a
single row changed with plain SQL is detected and named; and no PIN, OTP, session token, SAD or
TOTP seed that its clients sent or were handed appears in the database file, its WAL, a dump of
it, an audit export, or anything the service logged (SQL statements and their parameters
included). Self-contained: it does not depend on which other tests ran, or in which order."""

from __future__ import annotations

import base64
import logging
import re
import secrets
import shutil
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import grpc
import pyotp
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rsign.auth import totp
from rsign.client.raw import RsignClient
from rsign.v1 import rsign_pb2 as pb
from tests.conftest import Env, Secrets, Signer, digests, make_signer, running_env

AGENCY = "Sở Nội vụ, tỉnh Sơn La"

# The audited (action, result) pairs the workload must leave on the log.
EXPECTED = {
    ("auth.login", "success"),
    ("auth.login", "failure"),
    ("auth.lockout", "success"),
    ("auth.unlock", "success"),
    ("auth.logout", "success"),
    ("auth.session_expired", "success"),
    ("sad.issue", "success"),
    ("sad.issue", "failure"),  # a replayed OTP at Authorize
    ("sad.consume", "success"),
    ("sad.refuse", "failure"),
    ("sign.hash", "success"),
    ("sign.hash", "failure"),
    ("batch.start", "success"),
    ("batch.end", "success"),
    ("batch.end", "failure"),
    ("key.generate", "success"),
    ("user.enrol", "success"),
    ("user.reset_totp", "success"),
    ("audit.export", "success"),
    ("audit.verify", "success"),
    ("audit.query", "success"),
}

# An OTP is six digits: look for it as a value (quoted, after '=' or ':', at the end of a line), not
# inside a longer number, a hex digest, base64 or a timestamp, nor as an SQL integer in the dump
# ("(123456," or ",123456,": sequence numbers and counts; the service handles codes as text).
OTP_VALUE = re.compile(rb"""(?:^|(?<=['"=:\s\[{]))([0-9]{6})(?=['"\s,)\]}]|$)""")


def needles(record: Secrets) -> dict[bytes, str]:
    """Every fixed byte string that would betray a secret, with what it is: text forms, and the raw
    bytes behind tokens and seeds (a BLOB column or a binary log line would hold those)."""
    out: dict[bytes, str] = {}
    for pin in record.pins:
        out[pin.encode()] = "PIN"
    for token in record.tokens:
        out[token.encode()] = "session token or SAD"
        out[base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))] = "session token or SAD (raw bytes)"
    for seed in record.seeds:
        out[seed] = "TOTP seed (raw bytes)"
        out[base64.b32encode(seed).rstrip(b"=")] = "TOTP seed (base32)"
        out[seed.hex().encode()] = "TOTP seed (hex)"
        out[seed.hex().upper().encode()] = "TOTP seed (hex)"
    return out


def leaks(sources: Mapping[str, bytes], record: Secrets) -> list[str]:
    """What of ``record`` appears where. The OTPs in one pass per source (one regex collects every
    six-digit value, then a set intersection: a regex search per OTP was what made the old scan
    take minutes), and the fixed secrets with ``bytes.__contains__`` (C fast search; for this
    workload's ~150 secrets in ~1 MB, a few tens of milliseconds)."""
    fixed = needles(record)
    otps = {otp.encode() for otp in record.otps}
    found: list[str] = []
    for where, data in sources.items():
        found += sorted({f"a {kind} appears in the {where}" for needle, kind in fixed.items() if needle in data})
        if otps & set(OTP_VALUE.findall(data)):
            found.append(f"an OTP appears in the {where}")
    return found


def health(env: Env) -> int:
    with grpc.insecure_channel(env.server.address) as ch:
        return int(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="")).status)


def distinctive_pin(tag: str) -> str:
    # Wrong PINs are recorded and searched for too: they must not match by accident.
    return f"{tag}{secrets.randbelow(10**8):08d}"


def _authentication(env: Env, admin: RsignClient, alice: Signer) -> None:
    """Login ok and refused, lockout and an unlock over AdminService, logout, an idle session
    expired by the fake clock; an enrolment and an authenticator reset over AdminService."""
    c = env.client()
    with pytest.raises(grpc.RpcError):
        c.login(alice.user_id, distinctive_pin("W"), alice.code())
    bob = make_signer(env, "bob", agency=AGENCY)
    for _ in range(env.settings.lockout_threshold):
        with pytest.raises(grpc.RpcError):
            c.login(bob.user_id, distinctive_pin("W"), bob.code())
    with pytest.raises(grpc.RpcError) as e:
        c.login(bob.user_id, bob.pin, bob.code())
    assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
    admin.admin.UnlockUser(pb.UserActionRequest(user_id=bob.user_id), metadata=admin.md())
    b = bob.client()
    b.logout()

    # Enrolled and reset through the server: the PIN goes in, seeds come back in otpauth URIs.
    pin = distinctive_pin("E")
    assert env.recorder is not None
    env.recorder.pins.add(pin)
    user_id = f"enrolled.{secrets.token_hex(3)}"
    enr = admin.admin.EnrolUser(
        pb.EnrolUserRequest(user_id=user_id, name="Cầm Thị Hoa", agency=AGENCY, pin=pin), metadata=admin.md()
    )
    carol = Signer(env, user_id, pin, pyotp.parse_uri(enr.otpauth_uri).byte_secret())
    env.recorder.seeds.add(carol.seed)
    carol.client()
    reset = admin.admin.ResetTotp(pb.UserActionRequest(user_id=user_id), metadata=admin.md())
    carol.seed = pyotp.parse_uri(reset.otpauth_uri).byte_secret()
    env.recorder.seeds.add(carol.seed)
    idle = carol.client()
    env.clock.advance(env.settings.session_idle_seconds + 1)
    with pytest.raises(grpc.RpcError) as e:
        idle.list_credentials()
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]


def _signing(env: Env, officer: RsignClient, alice: Signer) -> None:
    """Authorize and sign, refused and failed; a batch stream that ends well and one that aborts."""
    cid = officer.admin.GenerateKey(
        pb.GenerateKeyRequest(credential_id=f"SEC-{alice.user_id}", algorithm="ec-p256", holder_user_id=alice.user_id),
        metadata=officer.md(),
    ).credential_id
    c = alice.client()
    with pytest.raises(grpc.RpcError):
        c.authorize(cid, digests(1), totp.code_for_step(alice.seed, alice.last_step))  # the login's code
    hs = digests(2)
    sad = c.authorize(cid, hs, alice.code()).sad
    c.sign_hash(cid, sad, hs, "ECDSA")
    with pytest.raises(grpc.RpcError):
        c.sign_hash(cid, sad, hs, "ECDSA")  # the SAD is spent
    with pytest.raises(grpc.RpcError):
        c.sign_hash(cid, "not-a-sad", hs, "ECDSA")

    batch = digests(300)
    sad = c.authorize(cid, batch, alice.code()).sad
    assert sum(len(r.signatures) for r in c.sign_stream(cid, sad, batch, "ECDSA", chunk=100)) == 300
    batch = digests(300)
    sad = c.authorize(cid, batch, alice.code()).sad
    with pytest.raises(grpc.RpcError):
        list(c.sign_stream(cid, sad, [*batch[:150], *digests(150)], "ECDSA", chunk=100))

    # The audit store cannot be written (another process holds the write lock): UNAVAILABLE, logged.
    hs = digests(1)
    sad = c.authorize(cid, hs, alice.code()).sad
    blocker = sqlite3.connect(env.state_dir / "rsign.db", timeout=5, isolation_level=None)
    blocker.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(grpc.RpcError) as e:
            c.sign_hash(cid, sad, hs, "ECDSA")
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    deadline = time.monotonic() + 10
    while health(env) != health_pb2.HealthCheckResponse.SERVING and time.monotonic() < deadline:
        time.sleep(0.05)
    c.sign_hash(cid, sad, hs, "ECDSA")

    # The key vanishes from the HSM behind the service's back: the signing fails and is audited.
    lost = alice.add_key("ec-p256")
    with env.app.store.read() as t:
        (version,) = t.key_versions(lost)
    env.hsm.destroy_keypair(version.cka_id)
    hs = digests(1)
    sad = c.authorize(lost, hs, alice.code()).sad
    with pytest.raises(grpc.RpcError):
        c.sign_hash(lost, sad, hs, "ECDSA")


def _auditing(env: Env) -> bytes:
    auditor = make_signer(env, "auditor", role="auditor", scope="province").client()
    auditor.list_events(page_size=50)
    assert auditor.verify_log().ok
    return auditor.export_events()


@dataclass
class Run:
    env: Env
    record: Secrets
    export: bytes  # what an auditor downloaded
    log: Path  # everything logged in this process while the workload ran, DEBUG and up


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Run]:
    state = tmp_path_factory.mktemp("secrets-state")
    log_path = state.parent / f"{state.name}.log"
    handler = logging.FileHandler(log_path, encoding="utf-8")
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root, sql = logging.getLogger(), logging.getLogger("sqlalchemy.engine")
    levels = root.level, sql.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    # Every SQL statement and its parameters too: a secret must not even travel to the database.
    sql.setLevel(logging.INFO)
    record = Secrets()
    try:
        # A short busy timeout: the audit-store outage below is detected quickly.
        with running_env(state, record, database_busy_timeout_seconds=0.3) as env:
            admin = make_signer(env, "admin", agency=AGENCY, role="agency_admin").client()
            officer = make_signer(env, "officer", role="key_officer").client()
            alice = make_signer(env, "alice", agency=AGENCY)
            _signing(env, officer, alice)
            _authentication(env, admin, alice)
            export = _auditing(env)
            yield Run(env, record, export, log_path)
    finally:
        root.removeHandler(handler)
        handler.close()
        root.setLevel(levels[0])
        sql.setLevel(levels[1])


def verify(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rsign.cli", "audit", "verify", "--state-dir", str(state)],
        capture_output=True,
        text=True,
    )


def test_audit_covers_the_workload_and_verifies(run: Run, tmp_path: Path) -> None:
    env = run.env
    with env.app.store.read() as t:
        rows = list(t.audit_rows())
    seen = {(r["action"], r["result"]) for r in rows}
    assert EXPECTED <= seen, sorted(EXPECTED - seen)
    # Every record says who, when (UTC), which request and from where.
    for r in rows:
        assert r["actor"] and r["request_id"] and r["client"], (r["action"], r["result"], r["reason"], r["client"])
        assert r["ts"].endswith("Z") and len(r["ts"]) == 27, r["ts"]
    grpc_rows = [r for r in rows if r["client"].startswith(("ipv4:", "ipv6:"))]
    assert grpc_rows and all(len(r["request_id"]) >= 16 for r in grpc_rows)

    # Tamper with a copy of the whole state (token + database) so the live one stays intact. The
    # database is copied with SQLite's backup API: a consistent snapshot of a live database.
    copy = tmp_path / "copy"
    shutil.copytree(env.state_dir, copy, ignore=shutil.ignore_patterns("rsign.db*"))
    with sqlite3.connect(env.state_dir / "rsign.db") as live, sqlite3.connect(copy / "rsign.db") as db:
        live.backup(db)
        (seq,) = db.execute(
            "SELECT seq FROM audit_log WHERE action = 'sign.hash' ORDER BY seq LIMIT 1 OFFSET 3"
        ).fetchone()
        db.execute("UPDATE audit_log SET digest = ? WHERE seq = ?", ("00" * 32, seq))
    db.close()
    live.close()
    # Both verifications at once: each is a Python process opening its token.
    with ThreadPoolExecutor(2) as ex:
        intact, tampered = ex.map(verify, (env.state_dir, copy))
    assert intact.returncode == 0, intact.stderr
    assert "intact" in intact.stdout
    assert tampered.returncode == 1
    assert f"record {seq}" in tampered.stderr and "modified" in tampered.stderr


def test_no_secret_in_database_wal_export_or_log(run: Run) -> None:
    env, record = run.env, run.record
    # The workload handed out what it should have: an empty record would prove nothing.
    assert len(record.pins) >= 10 and len(record.otps) >= 10 and len(record.tokens) >= 10 and len(record.seeds) >= 6
    assert all(len(pin) >= 9 for pin in record.pins)
    db = env.state_dir / "rsign.db"
    wal = db.with_name("rsign.db-wal")
    with sqlite3.connect(db) as conn:
        dump = "\n".join(conn.iterdump()).encode()
    conn.close()
    log = run.log.read_bytes()
    # The log really holds what the service said: its SQL, the outage, and the refusals.
    assert b"INSERT INTO audit_log" in log and b"audit store write failed" in log
    sources = {
        "database file": db.read_bytes(),
        "write-ahead log": wal.read_bytes() if wal.exists() else b"",
        "database dump": dump,
        "audit export": run.export,
        "service log": log,
    }
    assert sources["write-ahead log"], "the WAL was checkpointed away: nothing of it was searched"
    assert leaks(sources, record) == []


def test_the_search_finds_each_kind_of_secret() -> None:
    """The scanner itself: each form of each secret is found, and a six-digit number that is not
    an OTP is not."""
    token = secrets.token_urlsafe(32)
    seed = secrets.token_bytes(20)
    record = Secrets(pins={"P12345678"}, otps={"493817"}, tokens={token}, seeds={seed})
    raw_token = base64.urlsafe_b64decode(token + "=")
    cases = {
        b"pin='P12345678'": "a PIN appears in the x",
        b'{"otp": "493817"}': "an OTP appears in the x",
        b"otp=493817\n": "an OTP appears in the x",
        b"Bearer " + token.encode(): "a session token or SAD appears in the x",
        b"\x00" + raw_token + b"\x00": "a session token or SAD (raw bytes) appears in the x",
        b"\x01" + seed + b"\x02": "a TOTP seed (raw bytes) appears in the x",
        b"secret=" + base64.b32encode(seed).rstrip(b"="): "a TOTP seed (base32) appears in the x",
        seed.hex().encode(): "a TOTP seed (hex) appears in the x",
    }
    for data, message in cases.items():
        assert leaks({"x": data}, record) == [message], data
    not_otps = b"digest=ab493817cd seq=1493817 ts=2026-01-01T00:49:38.17Z n: 123456, VALUES(493817,"
    assert leaks({"x": not_otps}, record) == []
