"""Tamper evidence: every attack of the catalogue (TMP-01..05) against a real SQLite log protected
by real HSM keys, detected and named both by VerifyLog (online, with the HSM MAC key) and by the
offline verifier over an export (file only)."""

from __future__ import annotations

import hashlib
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from rsign.audit import chain
from rsign.audit.offline import verify_export
from rsign.audit.verification import LogReport
from rsign.dev import EMBEDDED
from rsign.domain import context
from rsign.domain.algorithms import HashAlg, Scheme
from rsign.domain.errors import AuditIntegrityError
from rsign.domain.events import EventFilter
from rsign.domain.principal import LOCAL_OPERATOR
from rsign.runtime.app import App, build_app
from rsign.runtime.config import load_settings


def _populate(app: App) -> None:
    """Enrol, generate keys, sign a few batches, checkpoint in between: ~60 records."""
    with context.request(client="test", actor="tester"):
        for i in range(3):
            enr = app.auth.enrol(f"u{i}", f"Người dùng {i}", "123456", agency=f"Agency {i % 2}")
            app.keys.generate(f"C{i}", "ec-p256", f"u{i}")
            assert enr.seed
        # Sign through the service without gRPC: a session is not needed for the audit content.
        from rsign.auth.totp import code_for_step, step_of
        from rsign.domain.principal import Principal, Role

        for i in range(3):
            who = Principal(f"u{i}", 0, Role.SIGNER, f"Agency {i % 2}")
            with app.store.read() as t:
                secret = t.get_user_secrets(f"u{i}")
            assert secret is not None
            seed = app.hsm.unseal(secret.totp_sealed, f"rsign-totp-seed-v1:u{i}".encode())
            hs = [hashlib.sha256(f"{i}-{j}".encode()).digest() for j in range(5)]
            code = code_for_step(seed, step_of(app.clock.now()))
            sad = app.signing.authorize(who, f"C{i}", HashAlg.SHA256, hs, code).sad
            app.signing.sign_hash(who, f"C{i}", sad, HashAlg.SHA256, Scheme.ECDSA, hs)
            app.audit.checkpoint()


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    state = tmp_path_factory.mktemp("audit-template")
    app = build_app(load_settings(state, embedded=EMBEDDED), pool=False)
    try:
        _populate(app)
    finally:
        app.close()
    return state


@pytest.fixture
def state(template: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "state"
    shutil.copytree(template, dst)
    # The copied softhsm2.conf names the template's token directory: point it at the copy.
    conf = dst / "softhsm2.conf"
    conf.write_text(conf.read_text().replace(str(template), str(dst)))
    return dst


@pytest.fixture
def app(state: Path) -> Iterator[App]:
    a = build_app(load_settings(state, embedded=EMBEDDED), pool=False)
    yield a
    a.close()


def db(state: Path) -> sqlite3.Connection:
    c = sqlite3.connect(state / "rsign.db")
    c.row_factory = sqlite3.Row
    return c


def verify(app: App) -> LogReport:
    with context.request(client="test", actor="auditor"):
        return app.audit.verify_log(LOCAL_OPERATOR)


def export(app: App, path: Path) -> list[str]:
    with context.request(client="test", actor="auditor"), open(path, "wb") as f:
        for line in app.audit.export(LOCAL_OPERATOR, EventFilter()):
            f.write(line)
    return verify_export(path).problems


def last_checkpoint(state: Path) -> int:
    with db(state) as c:
        return int(c.execute("SELECT max(seq) FROM audit_checkpoints").fetchone()[0])


def recompute_from(c: sqlite3.Connection, start: int) -> None:
    """What a database administrator without the HSM key can do: recompute every hash."""
    prev = c.execute("SELECT hash FROM audit_log WHERE seq = ?", (start - 1,)).fetchone()
    prev_hash = prev["hash"] if prev else chain.GENESIS
    for r in c.execute("SELECT * FROM audit_log WHERE seq >= ? ORDER BY seq", (start,)).fetchall():
        fields = dict(r)
        fields["prev_hash"] = prev_hash
        h = chain.record_hash(fields)
        c.execute("UPDATE audit_log SET prev_hash = ?, hash = ? WHERE seq = ?", (prev_hash, h, r["seq"]))
        prev_hash = h
    seq = c.execute("SELECT max(seq) FROM audit_log").fetchone()[0]
    c.execute("UPDATE audit_head SET seq = ?, hash = ?", (seq, prev_hash))
    c.commit()


def test_untouched_log_and_export_verify(app: App, tmp_path: Path) -> None:
    rep = verify(app)
    assert rep.ok and rep.checkpoints >= 3, rep.problem
    out = tmp_path / "export.jsonl"
    assert export(app, out) == []
    # The offline check runs as its own process with nothing but the file.
    res = subprocess.run([sys.executable, "-m", "rsign.cli", "audit", "verify-export", str(out)],
                         capture_output=True, text=True)  # fmt: skip
    assert res.returncode == 0 and "export intact" in res.stdout


def test_one_bit_flipped_in_export(app: App, tmp_path: Path) -> None:
    out = tmp_path / "export.jsonl"
    assert export(app, out) == []
    data = bytearray(out.read_bytes())
    i = data.index(b'"action":"sign.hash"') + len('"action":"sign.')
    data[i] ^= 0x01  # "sign.hash" -> "sign.iash"
    out.write_bytes(bytes(data))
    problems = verify_export(out).problems
    assert problems and any("modified" in p or "altered" in p for p in problems)


def test_modified_field(app: App, state: Path, tmp_path: Path) -> None:
    with db(state) as c:
        seq = c.execute("SELECT seq FROM audit_log WHERE action = 'sign.hash' LIMIT 1").fetchone()[0]
        c.execute("UPDATE audit_log SET digest = ? WHERE seq = ?", ("ab" * 32, seq))
    rep = verify(app)
    assert not rep.ok and rep.bad_seq == seq and "modified" in rep.problem
    problems = export(app, tmp_path / "e.jsonl")
    assert f"record {seq} was modified" in problems[0]


def test_forged_record_appended(app: App, state: Path, tmp_path: Path) -> None:
    with db(state) as c:
        head = c.execute("SELECT * FROM audit_log ORDER BY seq DESC LIMIT 1").fetchone()
        forged = {k: head[k] for k in head.keys()}
        forged.update(seq=head["seq"] + 1, actor="mallory", action="sign.hash", reason="", prev_hash=head["hash"],
                      mac="")  # fmt: skip
        forged["hash"] = chain.record_hash(forged)
        cols = ", ".join(forged)
        c.execute(f"INSERT INTO audit_log ({cols}) VALUES ({', '.join('?' * len(forged))})", tuple(forged.values()))
        c.execute("UPDATE audit_head SET seq = ?, hash = ?", (forged["seq"], forged["hash"]))
    # rsign refuses to build on a record it did not write: every audited operation stops.
    with pytest.raises(AuditIntegrityError, match="refusing to append"), context.request(client="test"):
        app.auth.enrol("u.after.forgery", "Người dùng", "123456")
    rep = verify(app)
    assert not rep.ok and rep.bad_seq == forged["seq"] and "MAC" in rep.problem
    problems = export(app, tmp_path / "e.jsonl")
    # The export's own record follows the forged one; neither can be covered by a checkpoint.
    assert any(f"records {forged['seq']}.." in p and "not covered by a signed checkpoint" in p for p in problems)
    assert "MAC" in problems[-1]  # the service refused to sign a checkpoint over the forgery, and says why


def test_deleted_middle_record(app: App, state: Path, tmp_path: Path) -> None:
    with db(state) as c:
        c.execute("DELETE FROM audit_log WHERE seq = 7")
    rep = verify(app)
    assert not rep.ok and rep.bad_seq == 7 and "missing" in rep.problem
    assert "record 7 is missing" in export(app, tmp_path / "e.jsonl")[0]


def test_swapped_records(app: App, state: Path, tmp_path: Path) -> None:
    with db(state) as c:
        a, b = (dict(c.execute("SELECT * FROM audit_log WHERE seq = ?", (s,)).fetchone()) for s in (10, 11))
        content = [k for k in a if k not in ("seq",)]
        for src, dst in ((a, 11), (b, 10)):
            c.execute(f"UPDATE audit_log SET {', '.join(f'{k} = ?' for k in content)} WHERE seq = ?",
                      (*(src[k] for k in content), dst))  # fmt: skip
    rep = verify(app)
    assert not rep.ok and rep.bad_seq == 10
    assert "record 10" in export(app, tmp_path / "e.jsonl")[0]


def test_tail_deleted_after_checkpoint(app: App, state: Path, tmp_path: Path) -> None:
    cp = last_checkpoint(state)
    with db(state) as c:
        c.execute("DELETE FROM audit_log WHERE seq > ?", (cp - 3,))
        h = c.execute("SELECT hash FROM audit_log WHERE seq = ?", (cp - 3,)).fetchone()[0]
        c.execute("UPDATE audit_head SET seq = ?, hash = ?", (cp - 3, h))
    rep = verify(app)
    assert not rep.ok and rep.bad_seq == cp - 2 and "truncated" in rep.problem
    problems = export(app, tmp_path / "e.jsonl")
    # (The export appended its own record where the deleted ones were.)
    assert any(f"..{cp} are missing: checkpoint {cp} was signed over them" in p for p in problems)


def test_edit_then_recompute_whole_unkeyed_chain(app: App, state: Path, tmp_path: Path) -> None:
    cp = last_checkpoint(state)
    with db(state) as c:
        c.execute("UPDATE audit_log SET actor = 'someone.else' WHERE seq = 5")
        recompute_from(c, 5)
    rep = verify(app)
    # The chain itself is consistent now; the HSM MAC and the signed checkpoints are not.
    assert not rep.ok and ("MAC" in rep.problem or "checkpoint" in rep.problem)
    assert rep.bad_seq is not None and 5 <= rep.bad_seq <= cp
    problems = export(app, tmp_path / "e.jsonl")
    assert any("checkpoint" in p and "does not match the log" in p for p in problems)


def _append_records(app: App, n: int) -> tuple[int, str]:
    """Audited operations after the last checkpoint; the head they leave (what rsign computed)."""
    with context.request(client="test", actor="tester"):
        for i in range(n):
            app.auth.enrol(f"late{i}", "Người dùng", "123456", agency="Agency 0")
    with app.store.read() as t:
        head = t.audit_head()
    assert head is not None
    return head


def test_checkpoint_after_a_content_edit_signs_what_rsign_wrote(app: App, state: Path, tmp_path: Path) -> None:
    """The checkpointer walks links and MACs, not contents (``Checkpoints.checkpoint`` says why):
    a record edited in place after it was written is then not covered but contradicted."""
    before = last_checkpoint(state)
    head_seq, head_hash = _append_records(app, 3)
    edited = before + 1
    with db(state) as c:
        c.execute("UPDATE audit_log SET actor = 'someone.else' WHERE seq = ?", (edited,))
    cp = app.audit.checkpoint()
    assert cp is not None and (cp.seq, cp.head_hash) == (head_seq, head_hash)
    rep = verify(app)
    assert not rep.ok and rep.bad_seq == edited and "modified" in rep.problem
    problems = export(app, tmp_path / "e.jsonl")
    assert f"record {edited} was modified" in problems[0]


def test_checkpoint_refuses_a_rewritten_chain(app: App, state: Path) -> None:
    before = last_checkpoint(state)
    _append_records(app, 3)
    with db(state) as c:
        c.execute("UPDATE audit_log SET actor = 'someone.else' WHERE seq = ?", (before + 1,))
        recompute_from(c, before + 1)
    with pytest.raises(AuditIntegrityError, match=r"refusing to sign a checkpoint: .*MAC"):
        app.audit.checkpoint()
    assert last_checkpoint(state) == before


def test_checkpoint_refuses_a_broken_link(app: App, state: Path) -> None:
    before = last_checkpoint(state)
    _append_records(app, 3)
    with db(state) as c:
        c.execute("UPDATE audit_log SET prev_hash = ? WHERE seq = ?", ("ab" * 32, before + 2))
    with pytest.raises(AuditIntegrityError, match=f"record {before + 2} does not link"):
        app.audit.checkpoint()
    assert last_checkpoint(state) == before
