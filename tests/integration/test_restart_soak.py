"""A few rounds of the restart soak (tests/soak/restart_soak.py; the closing note's figure is its
100-start run): every start on a state directory that the previous server left by SIGTERM, SIGKILL
or a kill during start-up serves."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.soak.restart_soak import run


@pytest.mark.slow
def test_restarts_on_one_state_directory_never_fail(tmp_path: Path) -> None:
    report = run(starts=3, state_dir=tmp_path / "state", seed=11)
    assert report["start_failures"] == 0, report["failures"]
