"""A state directory's life: first initialisation without leftovers when it fails.

Only the commands that create a deployment (``serve``, ``demo``, ``init``, ``provision``, ``users
add``) initialise a state directory; every other command refuses one that is not initialised
(``load_settings(create=False)``). When creating one fails at start-up (port in use, wrong PKCS#11
module, database that cannot be opened), what this process added is removed again: a half-made
state directory would later pass for a deployment.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import TracebackType

from rsign.runtime.config import init_lock, resolve_state_dir, state_problem


class undo_on_failure:  # noqa: N801 (used as a function: ``with undo_on_failure(sd):``)
    """Around the start-up of a command that may create ``state_dir``: when it fails, what this
    process added is removed. Nothing happens for an initialised state directory: no file of a
    live deployment is ever removed. ``keep()`` ends the guard early (start-up done: what follows
    may fail without undoing the deployment just made, e.g. an interrupted provisioning resumes)."""

    def __init__(self, state_dir: Path | str | None) -> None:
        self._sd = resolve_state_dir(state_dir)
        self._armed = False
        self._existed = False
        self._before: set[str] = set()

    def __enter__(self) -> undo_on_failure:
        self._armed = state_problem(self._sd) is not None
        self._existed = self._sd.is_dir()
        self._before = set(os.listdir(self._sd)) if self._existed else set()
        return self

    def keep(self) -> None:
        self._armed = False

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc_type is not None and self._armed:
            _remove_added(self._sd, self._existed, self._before)


def _remove_added(sd: Path, existed: bool, before: set[str]) -> None:
    if not sd.is_dir():
        return
    # Under the initialisation lock: another process initialising the same new directory at the
    # same moment is the only one that could be adding files, and it waits for this lock.
    # Trade-off: had it already finished (its token complete), its files go too, and it fails
    # on its next step; two first starts racing on one new directory, one of them failing, is
    # not a case worth a more intricate protocol.
    with init_lock(sd):
        for name in set(os.listdir(sd)) - before - {".init.lock"}:
            path = sd / name
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path, ignore_errors=True)
            else:
                path.unlink(missing_ok=True)
    if not existed:
        shutil.rmtree(sd, ignore_errors=True)
    elif ".init.lock" not in before:
        (sd / ".init.lock").unlink(missing_ok=True)
