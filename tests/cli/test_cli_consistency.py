"""CLI consistency: refused operations leave their failure record, the audit certificate is
printed for pinning, audit tables fit 80 columns, --version, shell completion, PIN precedence,
and `users unlock` on a user who is not locked."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from rsign.dev.softhsm import find_softhsm_module
from rsign.runtime.config import load_settings
from tests.cli.operator import assert_one_line_error, rsign

PIN = "73915428\n"


@pytest.fixture(scope="module")
def state(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A deployment with one user and one revoked credential."""
    sd = tmp_path_factory.mktemp("consistency") / "state"
    steps = [
        ("users", "add", "lo.van.tuan", "--name", "Lò Văn Tuấn", "--agency", "Sở Nội vụ", "--pin-stdin"),
        ("keys", "generate", "C-1", "--algorithm", "ec-p256", "--holder", "lo.van.tuan"),
        ("keys", "revoke", "C-1", "--reason", "other"),
    ]
    for args in steps:
        out = rsign(*args, "--state-dir", str(sd), stdin=PIN)
        assert out.returncode == 0, (args, out.stderr)
    return sd


def test_refused_cli_operations_leave_failure_records(state: Path) -> None:
    sd = ("--state-dir", str(state))
    refused = [
        (("keys", "generate", "C-2", "--algorithm", "ec-p256", "--holder", "nobody"), "no user nobody", "key.generate"),
        (("users", "add", "lo.van.tuan", "--name", "X", "--pin-stdin"), "already exists", "user.enrol"),
        (("keys", "enable", "C-1"), "revoked", "key.enable"),
        (("users", "suspend", "nobody"), "no user nobody", "user.suspend"),
        (("users", "unlock", "lo.van.tuan"), "user lo.van.tuan is not locked", "auth.unlock"),
    ]
    for args, message, _ in refused:
        assert_one_line_error(rsign(*args, *sd, stdin=PIN), message)
    out = rsign("audit", "search", "--result", "failure", *sd, columns=200)
    assert out.returncode == 0, out.stderr
    rows = [line.split() for line in out.stdout.splitlines() if re.match(r"\s*\d+ \d{4}-\d\d-\d\d ", line)]
    assert [r[4] for r in rows] == [action for *_, action in refused]
    assert all(r[5] == "failed" for r in rows)
    # The unlock that was refused recorded no unlock.
    out = rsign("audit", "search", "--action", "auth.unlock", "--result", "success", *sd)
    assert "0 matching records" in out.stdout, out.stdout


def test_audit_certificate_is_the_one_verify_export_pins(state: Path, tmp_path: Path) -> None:
    out = rsign("audit", "certificate", "--state-dir", str(state))
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("-----BEGIN CERTIFICATE-----")
    sha = re.search(r"SHA-256: ([0-9a-f]{64})", out.stderr)
    assert sha is not None, out.stderr
    pem = tmp_path / "audit.pem"
    pem.write_text(out.stdout, encoding="ascii")  # stdout is the PEM only: it pins as it is
    assert rsign("audit", "checkpoint", "--state-dir", str(state)).returncode == 0
    export = tmp_path / "export.jsonl"
    assert rsign("audit", "export", "--out", str(export), "--state-dir", str(state)).returncode == 0
    out = rsign("audit", "verify-export", str(export), "--audit-cert", str(pem))
    assert out.returncode == 0 and "export intact" in out.stdout, out.stderr
    assert f"audit certificate SHA-256 {sha.group(1)}" in out.stdout


@pytest.mark.parametrize("command", [("audit", "tail"), ("audit", "search")])
def test_audit_tables_fit_80_columns(state: Path, command: tuple[str, ...]) -> None:
    out = rsign(*command, "--state-dir", str(state), columns=80)
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert max(len(line) for line in lines) <= 80
    # Every record's time is whole on the line with its sequence number: nothing folded.
    records = [line for line in lines if re.match(r"\s*\d+ \d", line)]
    assert len(records) >= 3
    assert all(re.match(r"\s*\d+ \d{4}-\d\d-\d\d \d\d:\d\d:\d\d ", line) for line in records), records


def test_version_and_shell_completion() -> None:
    out = rsign("--version")
    assert out.returncode == 0 and re.fullmatch(r"rsign, version \d+\.\d+\.\d+\n", out.stdout), out.stdout
    # The documented completion script (README, Operations): click's own, for the installed command.
    script = Path(sys.executable).parent / "rsign"
    env = {**os.environ, "_RSIGN_COMPLETE": "bash_source"}
    out = subprocess.run([str(script)], env=env, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and "_rsign_completion" in out.stdout and "complete -o" in out.stdout


def test_pin_file_wins_over_pin_variable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pin_file = tmp_path / "hsm-pin"
    pin_file.write_text("from-the-file\n", encoding="utf-8")
    monkeypatch.setenv("RSIGN_PKCS11_MODULE", find_softhsm_module())
    monkeypatch.setenv("RSIGN_HSM_PIN", "from-the-variable")
    monkeypatch.setenv("RSIGN_HSM_PIN_FILE", str(pin_file))
    assert load_settings(tmp_path / "sd").hsm.pin == "from-the-file"
    monkeypatch.delenv("RSIGN_HSM_PIN_FILE")
    assert load_settings(tmp_path / "sd").hsm.pin == "from-the-variable"
    monkeypatch.setenv("RSIGN_HSM_PIN_FILE", str(tmp_path / "missing"))
    with pytest.raises(Exception, match=r"cannot read the HSM PIN file .*missing \(RSIGN_HSM_PIN_FILE\)"):
        load_settings(tmp_path / "sd")
