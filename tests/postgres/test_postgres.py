"""Two service replicas on one PostgreSQL database and one HSM token: single-use SADs, fresh-OTP
acceptance and the audit chain stay correct when the replicas race (SAD-06, DB-02)."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import psycopg
import pytest

from rsign.audit.offline import verify_export_bytes
from rsign.auth import totp
from rsign.dev import EMBEDDED
from rsign.domain import context
from rsign.domain.algorithms import HashAlg, Scheme
from rsign.domain.clock import FakeClock
from rsign.domain.errors import FailedPrecondition, PermissionDenied
from rsign.domain.events import EventFilter
from rsign.domain.principal import LOCAL_OPERATOR
from rsign.runtime.app import App, build_app
from rsign.runtime.config import load_settings
from rsign.signing.recovery import INTERRUPTED, Recovery

PG = os.environ.get("RSIGN_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
pytestmark = pytest.mark.postgres


@pytest.fixture(scope="module")
def pg_url() -> Iterator[str]:
    name = f"rsign_test_{secrets.token_hex(4)}"
    admin = psycopg.connect(PG, autocommit=True)
    admin.execute(f"CREATE DATABASE {name}")
    params = dict(p.split("=", 1) for p in PG.split())
    yield f"postgresql+psycopg://{params['user']}@{params['host']}:{params['port']}/{name}"
    admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
    admin.close()


@pytest.fixture(scope="module")
def replicas(pg_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[App, App, FakeClock]]:
    state: Path = tmp_path_factory.mktemp("pg-state")
    settings = replace(load_settings(state, embedded=EMBEDDED), database_url=pg_url, hsm_workers=1)
    clock = FakeClock(float(totp.step_of(time.time()) * 30))
    a = build_app(settings, pool=True, clock=clock)
    b = build_app(settings, pool=True, clock=clock)
    yield a, b, clock
    a.close()
    b.close()


def test_same_sad_on_two_replicas_signs_exactly_once(replicas: tuple[App, App, FakeClock]) -> None:
    a, b, clock = replicas
    with context.request(client="test", actor="setup"):
        enr = a.auth.enrol("pg.signer", "Hà Thị Lan", "24681357", agency="Sở Y tế")
        a.keys.generate("PG-1", "ec-p256", "pg.signer")
        step = totp.step_of(clock.now())
        token, _ = a.auth.login("pg.signer", "24681357", totp.code_for_step(enr.seed, step))
        who = a.auth.authenticate(token)
        h = [hashlib.sha256(b"decision 1").digest()]
        sad = a.signing.authorize(who, "PG-1", HashAlg.SHA256, h, totp.code_for_step(enr.seed, step + 1)).sad
    wins: list[int] = []
    refused: list[str] = []
    barrier = threading.Barrier(50)

    def attempt(i: int) -> None:
        app = (a, b)[i % 2]
        barrier.wait()
        with context.request(client=f"replica-{i % 2}"):
            try:
                app.signing.sign_hash(app.auth.authenticate(token), "PG-1", sad, HashAlg.SHA256, Scheme.ECDSA, h)
                wins.append(i)
            except PermissionDenied as exc:
                refused.append(exc.message)

    threads = [threading.Thread(target=attempt, args=(i,)) for i in range(50)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert len(wins) == 1 and len(refused) == 49
    with a.store.read() as t:
        rows = [r for r in t.audit_rows() if r["credential_id"] == "PG-1"]
    assert sum(r["action"] == "sign.hash" and r["result"] == "success" for r in rows) == 1
    assert a.audit.verify_log(LOCAL_OPERATOR).ok


def test_concurrent_appends_from_two_replicas_keep_one_chain(replicas: tuple[App, App, FakeClock]) -> None:
    a, b, _ = replicas
    errors: list[BaseException] = []

    def unlock_many(app: App, n: int) -> None:
        with context.request(client="test", actor="ops"):
            for _ in range(n):
                try:
                    # One audited write each: the refusal of an unlock (the user is not locked).
                    app.admin.unlock(LOCAL_OPERATOR, "pg.signer")
                except FailedPrecondition:
                    pass
                except BaseException as exc:
                    errors.append(exc)

    threads = [threading.Thread(target=unlock_many, args=((a, b)[i % 2], 40)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert errors == []
    rep = b.audit.verify_log(LOCAL_OPERATOR)
    assert rep.ok, rep.problem
    with a.store.read() as t:
        seqs = [int(r["seq"]) for r in t.audit_rows()]
    assert seqs == list(range(1, len(seqs) + 1))
    assert a.audit.checkpoint() is not None and b.audit.verify_log(LOCAL_OPERATOR).ok


def test_work_of_a_replica_whose_lease_ran_out_is_reconciled(replicas: tuple[App, App, FakeClock]) -> None:
    """Replica "b" consumed a chunk of a stream and went silent (killed on another host: no lock
    file can tell). While its lease runs, nobody touches its work; once it has run out, replica a
    records the chunk as interrupted (naming b's caller), releases it and closes the stream; b's
    own late commit of that chunk's outcome then finds its row gone and may deliver nothing."""
    a, _, clock = replicas
    silent = Recovery(a.journal, clock, lease_seconds=3.0)  # a second replica id, leases only (PostgreSQL)
    hs = [hashlib.sha256(f"lease {i} {secrets.token_hex(4)}".encode()).digest() for i in range(3)]
    with context.request(client="test", actor="setup"):
        enr = a.auth.enrol(f"pg.lease.{secrets.token_hex(3)}", "Lò Thị Mai", "24681357", agency="Sở Y tế")
        a.keys.generate(cid := f"PG-L-{secrets.token_hex(3)}", "ec-p256", enr.user_id)
        step = totp.step_of(clock.now())
        token, _ = a.auth.login(enr.user_id, "24681357", totp.code_for_step(enr.seed, step))
        sad = a.signing.authorize(
            a.auth.authenticate(token), cid, HashAlg.SHA256, hs, totp.code_for_step(enr.seed, step + 1)
        )
    with a.store.read() as t:
        (sad_id,) = t.c.exec_driver_sql("SELECT id FROM sads WHERE credential_id = %s", (cid,)).scalars()
    caller = (enr.user_id, "Sở Y tế", "request-of-b", "ipv4:10.0.0.2:5000")
    with silent.tx() as t:  # what b's SignHashStream does: open the stream, consume chunk 1 (2 items)
        stream = t.add_stream(silent.replica_id, sad_id, cid, sad.key_version, "fp", 3, caller, clock.now())
        t.consume_hashes(cid, sad_id, 0, [(hs[0], 0), (hs[1], 0)])
        row = t.add_inflight(silent.replica_id, stream, sad_id, cid, sad.key_version, "SHA256", 0, 2, caller, 0.0)
        t.count_stream(stream, received=2)
    assert a.signing.recovery.reconcile() == 0  # b's lease still runs
    time.sleep(3.5)
    assert a.signing.recovery.reconcile() == 2
    with a.store.read() as t:
        assert not t.consumed(cid, [(hs[0], 0), (hs[1], 0)])
        signs = t.find_events(EventFilter(action="sign.hash", credential_id=cid), 0, 10)
        (end,) = t.find_events(EventFilter(action="batch.end", credential_id=cid), 0, 10)
    assert [(r["result"], r["reason"], r["digest"], r["request_id"]) for r in signs] == [
        ("failure", INTERRUPTED, h.hex(), "request-of-b") for h in hs[:2]
    ]
    d = json.loads(end["details"])
    assert (end["result"], d["ended_by"]) == ("failure", "interrupted")
    assert (d["signed"], d["failed"], d["not_reached"]) == (0, 2, 1)
    with silent.tx() as t:  # b wakes up: its outcome commit finds nothing to settle
        assert t.end_inflight([row]) == 0
    assert a.audit.verify_log(LOCAL_OPERATOR).ok


def test_audit_keys_rotate_while_two_replicas_append(replicas: tuple[App, App, FakeClock]) -> None:
    """Replica a rotates the audit MAC key and the checkpoint key while both replicas append: b,
    holding the old keys, finds the new ones by itself (its next append meets a head MAC'd under a
    key it does not hold, and re-reads the key under the head's row lock), and the log, with
    records and checkpoints of both eras, verifies on both replicas and offline."""
    a, b, _ = replicas
    with context.request(client="test", actor="setup"):
        a.auth.enrol("pg.rotation", "Lò Thị Hoa", "24681357", agency="Sở Y tế")
    errors: list[BaseException] = []
    stop = threading.Event()

    def unlock_loop(app: App) -> None:
        with context.request(client="test", actor="ops"):
            while not stop.is_set():
                try:
                    # One audited write each: the refusal of an unlock (the user is not locked).
                    app.admin.unlock(LOCAL_OPERATOR, "pg.rotation")
                except FailedPrecondition:
                    pass
                except BaseException as exc:
                    errors.append(exc)
                    return

    threads = [threading.Thread(target=unlock_loop, args=(app,)) for app in (a, b, a, b)]
    for th in threads:
        th.start()
    try:
        with context.request(client="cli", actor="cli:operator"):
            time.sleep(0.2)
            mac = a.audit_rotation.rotate_mac()
            time.sleep(0.2)
            assert b.audit.checkpoint() is not None  # the old checkpoint key, on b
            cp = a.audit_rotation.rotate_checkpoint()
            time.sleep(0.2)
    finally:
        stop.set()
        for th in threads:
            th.join()
    assert errors == []
    assert b.audit.checkpoint() is not None  # b signs with the new key now
    with b.store.read() as t:
        eras = {p: [e.last_seq for e in t.audit_key_eras(p)] for p in ("mac", "checkpoint")}
    assert eras == {"mac": [mac.old_last_seq], "checkpoint": [cp.old_last_seq]}
    for app in (a, b):
        rep = app.audit.verify_log(LOCAL_OPERATOR)
        assert rep.ok, rep.problem
    with context.request(client="test", actor="auditor"):
        raw = b"".join(b.audit.export(LOCAL_OPERATOR, EventFilter()))
    report = verify_export_bytes(raw)
    assert report.ok, report.problems
    assert len(report.previous_certificates_sha256) == 1


def test_batch_stream_records_on_postgres(replicas: tuple[App, App, FakeClock]) -> None:
    """The batch path's rows built from a template (ItemEvents) and inserted in bulk, on
    PostgreSQL: one record per signature, in order, verifying on the other replica, with a
    checkpoint (links and MACs walked) over them and an export that verifies offline."""
    a, b, clock = replicas
    with context.request(client="test", actor="setup"):
        enr = a.auth.enrol("pg.batch", "Lò Văn Tuấn", "24681357", agency="Sở Giáo dục")
        a.keys.generate("PG-B", "ec-p256", "pg.batch")
        step = totp.step_of(clock.now()) + 5  # past the steps the other tests used
        clock.set(step * 30.0)
        token, _ = a.auth.login("pg.batch", "24681357", totp.code_for_step(enr.seed, step))
        who = a.auth.authenticate(token)
        hs = [hashlib.sha256(f"result {i}".encode()).digest() for i in range(600)]
        sad = a.signing.authorize(who, "PG-B", HashAlg.SHA256, hs, totp.code_for_step(enr.seed, step + 1)).sad
        chunks = [hs[i : i + 250] for i in range(0, len(hs), 250)]
        out = list(a.signing.sign_stream(who, "PG-B", sad, HashAlg.SHA256, Scheme.ECDSA, chunks))
    assert sum(len(c.signatures) for c in out) == 600 and not any(c.errors for c in out)
    with b.store.read() as t:
        rows = [r for r in t.audit_rows() if r["credential_id"] == "PG-B" and r["action"] == "sign.hash"]
    assert [r["digest"] for r in rows] == [h.hex() for h in hs]
    assert [json.loads(r["details"])["position"] for r in rows] == list(range(600))
    assert b.audit.verify_log(LOCAL_OPERATOR).ok
    assert a.audit.checkpoint() is not None
    with context.request(client="test", actor="auditor"):
        export = b"".join(b.audit.export(LOCAL_OPERATOR, EventFilter()))
    assert verify_export_bytes(export).problems == []
