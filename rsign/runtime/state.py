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
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rsign.runtime.config import init_lock, resolve_state_dir, state_problem


@contextmanager
def undo_on_failure(state_dir: Path | str | None) -> Iterator[None]:
    """Around the start-up of a command that may create ``state_dir``. Nothing happens for an
    initialised state directory: there, nothing but the deployment's own writes happen, and no
    file of a live deployment is ever removed."""
    sd = resolve_state_dir(state_dir)
    if state_problem(sd) is None:
        yield
        return
    existed = sd.is_dir()
    before = set(os.listdir(sd)) if existed else set()
    try:
        yield
    except BaseException:
        _remove_added(sd, existed, before)
        raise


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
