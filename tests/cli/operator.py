"""Running the CLI as an operator would, and what an operator's mistake must look like."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def rsign(
    *args: str, stdin: str = "", env: dict[str, str] | None = None, cwd: Path | None = None, columns: int = 200
) -> subprocess.CompletedProcess[str]:
    """``rsign ARGS`` in a subprocess; ``env`` adds to (or, with "", removes from) the environment."""
    full = {k: v for k, v in os.environ.items() if not k.startswith("RSIGN_")}
    full["COLUMNS"] = str(columns)
    for k, v in (env or {}).items():
        if v:
            full[k] = v
        else:
            full.pop(k, None)
    return subprocess.run(
        [sys.executable, "-m", "rsign.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=180,
        env=full,
        cwd=cwd,
    )


def listing(root: Path) -> list[str]:
    """Every path under ``root`` (relative), to show that nothing was created or left behind."""
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def assert_one_line_error(out: subprocess.CompletedProcess[str], *expected: str) -> str:
    """Exit status non-zero, one line on stderr, no traceback; the line says each of ``expected``."""
    assert out.returncode != 0, out.stdout
    assert "Traceback" not in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1, out.stderr
    for text in expected:
        assert text in lines[0], (text, lines[0])
    return lines[0]
