"""The documented CLI commands, run as a person would (subprocesses on a fresh state directory)."""

from __future__ import annotations

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def rsign(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rsign.cli", *args], input=stdin, capture_output=True, text=True, timeout=120
    )


def test_enrol_generate_verify_and_errors(tmp_path: Path) -> None:
    sd = str(tmp_path / "state")
    out = rsign(
        "users",
        "add",
        "lo.van.tuan",
        "--name",
        "Lò Văn Tuấn",
        "--agency",
        "Sở Nội vụ, tỉnh Sơn La",
        "--pin-stdin",
        "--state-dir",
        sd,
        stdin="73915428\n",
    )
    assert out.returncode == 0, out.stderr
    assert "otpauth://totp/rsign:lo.van.tuan?secret=" in out.stdout and "█" in out.stdout  # URI and QR code
    assert "73915428" not in out.stdout + out.stderr
    out = rsign(
        "users",
        "add",
        "kiem.toan",
        "--name",
        "Cầm Thị Hoa",
        "--role",
        "auditor",
        "--scope",
        "province",
        "--pin-stdin",
        "--state-dir",
        sd,
        stdin="12345678\n",
    )
    assert out.returncode == 0, out.stderr
    for alg in ("rsa-2048", "ec-p384"):
        out = rsign("keys", "generate", f"C-{alg}", "--algorithm", alg, "--holder", "lo.van.tuan", "--state-dir", sd)
        assert out.returncode == 0 and "key version 1" in out.stdout, out.stderr
    out = rsign("keys", "search", "--holder", "LO VAN TUAN", "--state-dir", sd)
    assert out.returncode == 0 and "C-rsa-2048" in out.stdout and "C-ec-p384" in out.stdout
    out = rsign("audit", "verify", "--state-dir", sd)
    assert out.returncode == 0 and "intact" in out.stdout
    # Clear errors, exit code 2, no traceback. The four commands are independent: run side by side,
    # since each spends about a second starting Python and opening the token.
    errors = (
        (("users", "add", "lo.van.tuan", "--name", "X", "--pin-stdin"), "already exists"),
        (("users", "add", "short.pin", "--name", "X", "--pin-stdin"), "at least 6"),
        (("keys", "generate", "C-x", "--algorithm", "ec-p256", "--holder", "nobody"), "no user nobody"),
        (("keys", "revoke", "NO-SUCH", "--reason", "other"), "no credential"),
    )
    with ThreadPoolExecutor(len(errors)) as ex:
        outs = list(
            ex.map(
                lambda args: rsign(*args, "--state-dir", sd, stdin="123\n" if "short.pin" in args else "87654321\n"),
                [args for args, _ in errors],
            )
        )
    for (args, message), out in zip(errors, outs, strict=True):
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
