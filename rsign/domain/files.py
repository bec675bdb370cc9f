"""Writing files that hold secrets."""

from __future__ import annotations

import os
from pathlib import Path


def write_private(path: Path, data: str) -> None:
    """Create ``path`` with mode 0600 from the start (no window where it is world-readable)."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(data)
