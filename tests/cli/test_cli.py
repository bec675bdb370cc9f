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


def side_by_side(*commands: tuple[tuple[str, ...], str]) -> list[subprocess.CompletedProcess[str]]:
    """Run independent commands (arguments, standard input) at once; their results in order."""
    with ThreadPoolExecutor(len(commands)) as ex:
        return list(ex.map(lambda c: rsign(*c[0], stdin=c[1]), commands))


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
    # Then two operators at once, as it were: each command spends a second or more starting Python
    # and opening the token, so independent ones run side by side.
    auditor = ("users", "add", "kiem.toan", "--name", "Cầm Thị Hoa", "--role", "auditor", "--scope", "province")
    added, *generated = side_by_side(
        ((*auditor, "--pin-stdin", "--state-dir", sd), "12345678\n"),
        *(
            (("keys", "generate", f"C-{alg}", "--algorithm", alg, "--holder", "lo.van.tuan", "--state-dir", sd), "")
            for alg in ("rsa-2048", "ec-p384")
        ),
    )
    assert added.returncode == 0, added.stderr
    for out in generated:
        assert out.returncode == 0 and "key version 1" in out.stdout, out.stderr
    # Clear errors, exit code 2, no traceback.
    errors = (
        (("users", "add", "lo.van.tuan", "--name", "X", "--pin-stdin"), "already exists"),
        (("users", "add", "short.pin", "--name", "X", "--pin-stdin"), "at least 6"),
        (("keys", "generate", "C-x", "--algorithm", "ec-p256", "--holder", "nobody"), "no user nobody"),
        (("keys", "revoke", "NO-SUCH", "--reason", "other"), "no credential"),
    )
    found, *refused = side_by_side(
        (("keys", "search", "--holder", "LO VAN TUAN", "--state-dir", sd), ""),
        *(((*args, "--state-dir", sd), "123\n" if "short.pin" in args else "87654321\n") for args, _ in errors),
    )
    assert found.returncode == 0 and "C-rsa-2048" in found.stdout and "C-ec-p384" in found.stdout
    for (args, message), out in zip(errors, refused, strict=True):
        assert out.returncode == 2 and message in out.stderr and "Traceback" not in out.stderr, (args, out.stderr)
    out = rsign("audit", "verify", "--state-dir", sd)
    assert out.returncode == 0 and "intact" in out.stdout
