"""Issue 10, item 1: an audit log that cannot be rolled back.

A database administrator without HSM access deletes the records after an earlier signed
checkpoint, the newer checkpoints, and sets the head back, in SQL. The HSM anchor (the latest
checkpoint, kept on the token) names it: ``rsign audit verify`` fails, ``rsign serve`` refuses to
start, a running server stops serving, and an auditor's kept checkpoint refuses a later export.
The operator's recovery (``rsign audit accept-rollback``) is audited and resumes service. Real
SoftHSMv2 token, SQLite, gRPC; the rollbacks are done the way the administrator would, in SQL.
"""

from __future__ import annotations

import json
import random
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner, Result
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rsign.api.server import start_server
from rsign.cli.main import main
from rsign.dev import EMBEDDED
from rsign.domain import context
from rsign.domain.anchor import Anchor
from rsign.domain.errors import AuditRollback
from rsign.domain.events import EventFilter
from rsign.domain.principal import LOCAL_OPERATOR
from rsign.hsm.pool import HsmPool
from rsign.runtime.app import App, build_app
from rsign.runtime.config import load_settings
from tests.conftest import Env, Signer, digests, make_signer, running_env

SERVING, NOT_SERVING = health_pb2.HealthCheckResponse.SERVING, health_pb2.HealthCheckResponse.NOT_SERVING


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def db(state: Path) -> sqlite3.Connection:
    return sqlite3.connect(state / "rsign.db")


def roll_back(state: Path, to: int) -> None:
    """The finding: records after checkpoint ``to``, the newer checkpoints and the head, set back."""
    with db(state) as c:
        (h,) = c.execute("SELECT hash FROM audit_log WHERE seq = ?", (to,)).fetchone()
        c.execute("DELETE FROM audit_log WHERE seq > ?", (to,))
        c.execute("DELETE FROM audit_checkpoints WHERE seq > ?", (to,))
        c.execute("UPDATE audit_head SET seq = ?, hash = ?", (to, h))


def head(state: Path) -> int:
    with db(state) as c:
        return int(c.execute("SELECT seq FROM audit_head").fetchone()[0])


def anchor_resets(state: Path) -> list[dict[str, object]]:
    with db(state) as c:
        rows = c.execute("SELECT reason, details FROM audit_log WHERE action = 'audit.anchor_reset'").fetchall()
    return [{"reason": r, **json.loads(d)} for r, d in rows]


# -- a log with two checkpoints, on the CLI's path (no server) ------------------------------------


@dataclass(frozen=True)
class Template:
    state: Path
    early: int  # checkpoint K, the rollback target
    anchored: int  # checkpoint N, the latest: the HSM anchor
    export: Path  # an export covering N, as an auditor got it before the rollback
    kept: Path  # the checkpoint the auditor kept from it


def _activity(app: App, tag: str, n: int) -> None:
    with context.request(client="test", actor="tester"):
        for i in range(n):
            app.auth.enrol(f"{tag}.{i}", f"Người dùng {i}", "123456", agency="Sở Y tế")


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    state = tmp_path_factory.mktemp("rollback-template")
    app = build_app(load_settings(state, embedded=EMBEDDED), pool=False)
    try:
        _activity(app, "a", 4)
        early = app.audit.checkpoint()
        _activity(app, "b", 6)
        export = state.parent / "before.jsonl"
        with context.request(client="test", actor="auditor"), open(export, "wb") as f:
            f.writelines(app.audit.export(LOCAL_OPERATOR, EventFilter()))  # signs checkpoint N
        _activity(app, "c", 2)  # after N: not anchored yet
    finally:
        app.close()
    with db(state) as c:
        anchored = int(c.execute("SELECT max(seq) FROM audit_checkpoints").fetchone()[0])
    kept = state.parent / "kept.json"
    res = cli("audit", "extract-checkpoint", str(export), "--out", str(kept))
    assert res.exit_code == 0 and f"checkpoint at record {anchored}" in res.output, res.output
    assert early is not None and early.seq < anchored
    return Template(state, early.seq, anchored, export, kept)


@pytest.fixture
def state(template: Template, tmp_path: Path) -> Path:
    dst = tmp_path / "state"
    shutil.copytree(template.state, dst)
    conf = dst / "softhsm2.conf"  # it names the template's token directory: point it at the copy
    conf.write_text(conf.read_text().replace(str(template.state), str(dst)))
    return dst


def test_untouched_log_is_anchored_and_the_kept_checkpoint_is_extended(template: Template, state: Path) -> None:
    res = cli("audit", "verify", "--state-dir", str(state))
    assert res.exit_code == 0 and f"HSM anchor at record {template.anchored} (epoch 0)" in res.output, res.output
    res = cli("audit", "verify-export", str(template.export), "--after", str(template.kept))
    assert res.exit_code == 0 and f"extends the checkpoint kept in {template.kept}" in res.output, res.output
    # A checkpoint kept straight from the state directory: a later export extends it, an older one does not.
    kept = state.parent / "kept-now.json"
    res = cli("audit", "checkpoint", "--out", str(kept), "--state-dir", str(state))
    assert res.exit_code == 0 and f"wrote {kept}" in res.output, res.output
    later = state.parent / "later.jsonl"
    assert cli("audit", "export", "--out", str(later), "--state-dir", str(state)).exit_code == 0
    assert cli("audit", "verify-export", str(later), "--after", str(kept)).exit_code == 0
    res = cli("audit", "verify-export", str(template.export), "--after", str(kept))
    assert res.exit_code == 1 and "the checkpoint you kept is at record" in res.stderr, res.output


def test_rollback_is_named_refused_recovered_and_audited(template: Template, state: Path) -> None:
    k, n = template.early, template.anchored
    roll_back(state, k)

    res = cli("audit", "verify", "--state-dir", str(state))
    assert res.exit_code == 1
    assert f"the HSM anchor is at record {n}, the database ends at {k}" in res.stderr, res.output

    # `rsign serve` as an operator runs it: one line, non-zero, before anything listens.
    proc = subprocess.run(
        [sys.executable, "-m", "rsign.cli", "serve", "--state-dir", str(state), "--listen", "127.0.0.1:0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "rsign serving on" not in proc.stdout
    refusal = [line for line in proc.stderr.splitlines() if "refusing to serve" in line]
    assert len(refusal) == 1 and f"the HSM anchor is at record {n}, the database ends at {k}" in refusal[0]
    assert "accept-rollback" in refusal[0] and "Traceback" not in proc.stderr, proc.stderr

    # The export an auditor gets now is refused against the header's anchor and the kept checkpoint.
    rolled = state.parent / "rolled.jsonl"
    assert cli("audit", "export", "--out", str(rolled), "--state-dir", str(state)).exit_code == 0
    res = cli("audit", "verify-export", str(rolled))
    assert res.exit_code == 1 and f"the HSM anchor is at record {n}, the export ends at" in res.stderr, res.output

    # Recovery: explicit, with a reason, audited.
    assert cli("audit", "accept-rollback", "--state-dir", str(state), "--reason", "  ").exit_code == 2
    res = cli("audit", "accept-rollback", "--state-dir", str(state), "--reason", "restored from the 02:00 backup")
    assert res.exit_code == 0, res.output
    assert f"HSM anchor moved from record {n} (epoch 0) to record {k} (epoch 1)" in res.output
    (reset,) = anchor_resets(state)
    assert reset["reason"] == "restored from the 02:00 backup"
    old, new = reset["old_anchor"], reset["new_anchor"]
    assert isinstance(old, dict) and isinstance(new, dict)
    assert (old["seq"], old["epoch"], new["seq"], new["epoch"]) == (n, 0, k, 1)
    assert f"the database ends at {k}" in str(reset["found"])
    res = cli("audit", "verify", "--state-dir", str(state))
    assert res.exit_code == 0 and "(epoch 1)" in res.output, res.output

    # An export after recovery verifies; against the checkpoint kept before the rollback, it does not.
    after = state.parent / "after.jsonl"
    assert cli("audit", "export", "--out", str(after), "--state-dir", str(state)).exit_code == 0
    res = cli("audit", "verify-export", str(after))
    assert res.exit_code == 0 and "HSM anchor at record" in res.output, res.output
    res = cli("audit", "verify-export", str(after), "--after", str(template.kept))
    assert res.exit_code == 1
    assert f"record {n}" in res.stderr and "rolled back" in res.stderr, res.output


def _last_mac_before(state: Path, seq: int) -> int:
    """The last record below ``seq`` that ends an append (carries rsign's MAC): where a careful
    administrator cuts, so that nothing but the anchor can tell."""
    with db(state) as c:
        return int(c.execute("SELECT max(seq) FROM audit_log WHERE mac != '' AND seq < ?", (seq,)).fetchone()[0])


@pytest.mark.parametrize("attack", ["anchored_checkpoint_deleted", "tail_trimmed", "rolled_back_and_rewritten"])
def test_each_rollback_is_named(template: Template, state: Path, attack: str) -> None:
    n = template.anchored
    if attack == "anchored_checkpoint_deleted":
        with db(state) as c:
            c.execute("DELETE FROM audit_checkpoints WHERE seq = ?", (n,))
        expected = f"checkpoint {n} is missing (the HSM anchor holds it"
    elif attack == "tail_trimmed":  # the anchored tail: records up to N cut, head fixed
        to = _last_mac_before(state, n)
        roll_back(state, to)
        expected = f"the HSM anchor is at record {n}, the database ends at {to}"
    else:  # rolled back to K, then the log grew again past N with other records (a CLI has no anchor guard)
        roll_back(state, template.early)
    app = build_app(load_settings(state, embedded=EMBEDDED), pool=False)
    try:
        if attack == "rolled_back_and_rewritten":
            while head(state) <= n:
                _activity(app, f"x{head(state)}", 1)
            expected = f"record {n}'s hash differs from the anchored one"
        with context.request(client="test", actor="auditor"):
            rep = app.audit.verify_log(LOCAL_OPERATOR)
        assert not rep.ok and expected in rep.problem, rep.problem
        with pytest.raises(AuditRollback, match="refusing to serve: the audit log was rolled back"):
            start_server(app, "127.0.0.1:0")
        with pytest.raises(AuditRollback, match="refusing to sign a checkpoint"):
            app.audit.checkpoint()
    finally:
        app.close()


# -- a running server ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    # Checkpoints are signed by the tests, when they want them; the watch runs every second anyway.
    with running_env(
        tmp_path_factory.mktemp("rollback-served"), checkpoint_interval_seconds=3600, checkpoint_every_records=10**6
    ) as e:
        yield e


def health(env: Env) -> int:
    with grpc.insecure_channel(env.server.address) as ch:
        return int(health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service="")).status)


def wait_health(env: Env, want: int) -> None:
    deadline = time.monotonic() + 10
    while health(env) != want and time.monotonic() < deadline:
        time.sleep(0.2)
    assert health(env) == want


def sign_once(signer: Signer, cid: str) -> None:
    c = signer.client()
    hs = digests(1)
    assert len(c.sign_hash(cid, c.authorize(cid, hs, signer.code()).sad, hs, "ECDSA").signatures) == 1


def test_running_server_stops_on_a_rollback_and_resumes_after_recovery(served: Env) -> None:
    env, state = served, served.state_dir
    signer = make_signer(env)
    cid = signer.add_key("ec-p256")
    sign_once(signer, cid)
    early = env.app.audit.checkpoint()
    sign_once(signer, cid)
    anchored = env.app.audit.checkpoint()
    c = signer.client()
    hs = digests(1)
    sad = c.authorize(cid, hs, signer.code()).sad  # records after N: not anchored yet
    assert early is not None and anchored is not None

    roll_back(state, early.seq)
    wait_health(env, NOT_SERVING)
    calls = env.hsm.sign_calls
    with pytest.raises(grpc.RpcError) as e:
        c.sign_hash(cid, sad, hs, "ECDSA")
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE and "rollback check" in str(e.value.details())
    with pytest.raises(grpc.RpcError) as e:
        signer.client()  # a login must be audited too
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert env.hsm.sign_calls == calls, "the HSM signed on a rolled-back log"
    assert head(state) == early.seq, "something was appended to the rolled-back log"

    res = cli("audit", "accept-rollback", "--state-dir", str(state), "--reason", "database restored after a fault")
    assert res.exit_code == 0, res.output
    wait_health(env, SERVING)
    sign_once(signer, cid)
    assert [r["reason"] for r in anchor_resets(state)] == ["database restored after a fault"]
    out = state.parent / "served-after.jsonl"
    assert cli("audit", "export", "--out", str(out), "--state-dir", str(state)).exit_code == 0
    res = cli("audit", "verify-export", str(out))
    assert res.exit_code == 0, res.output


def test_running_server_stops_on_a_tail_trim(served: Env) -> None:
    """The window the anchor leaves (records after the last checkpoint) is watched while serving:
    the head going back is a rollback too. Offline, such a trim is not visible: hence a short
    checkpoint interval (README, Audit)."""
    env, state = served, served.state_dir
    signer = make_signer(env)
    cid = signer.add_key("ec-p256")
    cp = env.app.audit.checkpoint()
    assert cp is not None
    sign_once(signer, cid)
    assert head(state) > cp.seq
    with db(state) as c:  # trim after the last checkpoint, head fixed
        c.execute("DELETE FROM audit_log WHERE seq > ?", (cp.seq,))
        c.execute("UPDATE audit_head SET seq = ?, hash = ?", (cp.seq, cp.head_hash))
    wait_health(env, NOT_SERVING)
    with pytest.raises(grpc.RpcError) as e:
        signer.client()
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    res = cli("audit", "verify", "--state-dir", str(state))
    assert res.exit_code == 0, "the unanchored tail is beyond what an offline check can see"
    res = cli("audit", "accept-rollback", "--state-dir", str(state), "--reason", "trim investigated: ticket 4711")
    assert res.exit_code == 0 and "no rollback visible here" in res.output, res.output
    wait_health(env, SERVING)
    sign_once(signer, cid)


# -- replicas racing -------------------------------------------------------------------------------


def test_anchor_never_moves_backwards_when_writers_race(tmp_path: Path) -> None:
    """Two worker processes (two writers, as two replicas would be) store anchors in random order
    while a third caller keeps reading (each read prunes what is below the highest it sees): the
    highest anchor is never destroyed, and a reset (accept-rollback) outranks any later write of the
    old epoch. (A read may lag behind another process's newest object for a moment: SoftHSMv2
    refreshes its object index lazily; rsign keeps the highest anchor it has seen.)"""
    settings = load_settings(tmp_path / "state", embedded=EMBEDDED)
    pool = HsmPool(settings.hsm, workers=2, warm=False)

    def anchor(seq: int) -> bytes:
        return Anchor(0, seq, "ab" * 32, "2026-11-26T10:00:00.000000Z", b"signature").encode()

    def settles_at(order: tuple[int, int]) -> bool:
        """Every worker reads ``order``, four times running, within a few seconds."""
        deadline, streak = time.monotonic() + 5, 0
        while streak < 4 and time.monotonic() < deadline:
            raw = pool.read_anchor()
            streak = streak + 1 if raw is not None and Anchor.decode(raw).order == order else 0
        return streak == 4

    try:
        top = 0
        for _ in range(2):
            seqs = list(range(top + 1, top + 21))
            random.shuffle(seqs)
            top = max(seqs)
            done = threading.Event()

            def read(done: threading.Event) -> None:
                while not done.is_set():
                    pool.read_anchor()

            def write(part: list[int]) -> None:
                for s in part:
                    pool.write_anchor(anchor(s))

            reader = threading.Thread(target=read, args=(done,))
            writers = [threading.Thread(target=write, args=(sorted(seqs[i::3]),)) for i in range(3)]
            reader.start()
            for t in writers:
                t.start()
            for t in writers:
                t.join()
            done.set()
            reader.join()
            assert settles_at((0, top)), "the highest anchor was lost"
        assert Anchor.decode(pool.reset_anchor(anchor(5))).order == (1, 5)
        pool.write_anchor(anchor(99))  # a replica that has not seen the reset yet
        assert settles_at((1, 5))
    finally:
        pool.close()
