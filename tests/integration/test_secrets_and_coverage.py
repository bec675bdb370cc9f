"""Runs last (file order): the audit log of the whole session verifies with `rsign audit verify`,
and a single row changed with plain SQL is detected and named."""

from __future__ import annotations

import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

from tests.conftest import SECRETS, Env


def verify(state: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rsign.cli", "audit", "verify", "--state-dir", str(state)],
        capture_output=True,
        text=True,
    )


def test_audit_covers_the_run_and_verifies(env: Env, tmp_path: Path) -> None:
    with env.app.store.read() as t:
        rows = list(t.audit_rows())
    seen = {(r["action"], r["result"]) for r in rows}
    for action, result in (
        ("auth.login", "success"),
        ("auth.login", "failure"),
        ("auth.lockout", "success"),
        ("auth.unlock", "success"),
        ("auth.logout", "success"),
        ("auth.session_expired", "success"),
        ("sad.issue", "success"),
        ("sad.issue", "failure"),  # wrong or replayed OTP at Authorize
        ("sad.consume", "success"),
        ("sad.refuse", "failure"),
        ("sign.hash", "success"),
        ("sign.hash", "failure"),
        ("batch.start", "success"),
        ("batch.end", "success"),
        ("batch.end", "failure"),
        ("key.generate", "success"),
        ("user.enrol", "success"),
        ("audit.export", "success"),
        ("audit.verify", "success"),
        ("audit.query", "success"),
    ):
        assert (action, result) in seen, (action, result)
    # Every record says who, when (UTC), which request and from where.
    for r in rows:
        assert r["actor"] and r["request_id"] and r["client"], (r["action"], r["result"], r["reason"], r["client"])
        assert r["ts"].endswith("Z") and len(r["ts"]) == 27, r["ts"]
    grpc_rows = [r for r in rows if r["client"].startswith(("ipv4:", "ipv6:"))]
    assert grpc_rows and all(len(r["request_id"]) >= 16 for r in grpc_rows)
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


def test_no_secret_in_database_dump_or_logs(env: Env) -> None:
    """Every PIN, OTP, session token and SAD handed out during the whole run: none appears in a
    dump of the database or in the service's log."""
    db = sqlite3.connect(env.state_dir / "rsign.db")
    dump = "\n".join(db.iterdump())
    db.close()
    logs = (env.state_dir / "service.log").read_text(encoding="utf-8", errors="replace")
    assert SECRETS.pins and SECRETS.otps and SECRETS.tokens
    for where, text in (("database", dump), ("log", logs)):
        for secret in SECRETS.pins | SECRETS.tokens:
            assert secret not in text, f"a PIN, session token or SAD appears in the {where}"
        # OTPs are 6 digits: look for them as values, not inside hex digests or timestamps.
        for otp in SECRETS.otps:
            assert not re.search(rf"['\"=: ]{otp}['\", ]", text), f"an OTP appears in the {where}"
