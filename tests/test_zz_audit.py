"""Runs last (file order): the audit log of the whole session verifies with `rsign audit verify`,
and a single row changed with plain SQL is detected and named."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import Env


def verify(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rsign.cli", "audit", "verify", "--state-dir", str(state)],
        capture_output=True,
        text=True,
    )


def test_audit_covers_the_run_and_verifies(env: Env, tmp_path: Path) -> None:
    with env.app.store.read() as t:
        actions = {r["action"] for r in t.audit_rows()}
    for a in (
        "auth.login",
        "auth.lockout",
        "auth.unlock",
        "auth.logout",
        "auth.session_expired",
        "sad.issue",
        "sad.consume",
        "sad.refuse",
        "sign.hash",
        "key.generate",
        "user.enrol",
    ):
        assert a in actions, a
    out = verify(env.state_dir)
    assert out.returncode == 0, out.stderr
    assert "intact" in out.stdout

    # Tamper with a copy of the whole state (token + database) so the live one stays intact.
    copy = tmp_path / "copy"
    shutil.copytree(env.state_dir, copy)
    db = sqlite3.connect(copy / "rsign.db")
    seq = db.execute("SELECT seq FROM audit_log WHERE action = 'sign.hash' ORDER BY seq LIMIT 1 OFFSET 3").fetchone()[0]
    db.execute("UPDATE audit_log SET digest = ? WHERE seq = ?", ("00" * 32, seq))
    db.commit()
    db.close()
    out = verify(copy)
    assert out.returncode == 1
    assert f"record {seq}" in out.stderr and "modified" in out.stderr


def test_no_secret_in_database_dump(env: Env) -> None:
    """PIN, OTPs, session token and SAD of a full flow appear nowhere in the database."""
    from rsign.api.client import RsignClient
    from tests.conftest import digests, make_signer

    s = make_signer(env)
    s.pin = "pin-Zq9xY-Lò"
    from rsign.auth.pins import hash_pin

    with env.app.store.tx() as t:  # a distinctive PIN, so that a match in the dump means a leak
        t.set_pin_hash(s.user_id, hash_pin(s.pin))
    cid = s.add_key("ec-p256")
    c = RsignClient(env.server.address)
    login_otp = s.code()
    c.login(s.user_id, s.pin, login_otp)
    hs = digests(2)
    authz_otp = s.code()
    sad = c.authorize(cid, hs, authz_otp).sad
    c.sign_hash(cid, sad, hs, "ECDSA")
    token = c.token
    c.logout()
    db = sqlite3.connect(env.state_dir / "rsign.db")
    dump = "\n".join(db.iterdump())
    db.close()
    for secret in (s.pin, token, sad):
        assert secret and secret not in dump
    for otp in (login_otp, authz_otp):
        assert not re.search(rf"\b{otp}\b", dump)
