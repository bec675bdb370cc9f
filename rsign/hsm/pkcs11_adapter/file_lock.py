"""The token file lock: SoftHSMv2's file object store read while another process writes it."""

from __future__ import annotations

import contextlib
import fcntl
from collections.abc import Iterator
from pathlib import Path

from rsign.domain.settings import HsmConfig


class TokenFileLock:
    """Serialises token-file writes against token opens, across rsign's processes.

    SoftHSMv2's file object store is not safe against a concurrent reader: C_Login rewrites the
    token file (token.object) and creating an object updates it too, and a process that
    initialises the library or looks up the token while another is writing reads a half-written
    file: the token is reported missing (NoSuchToken) or the login fails (CKR_GENERAL_ERROR).
    Workers starting together, or a server starting while the previous one was killed mid-write,
    hit this about once in twenty starts. An advisory flock beside the token directory orders
    rsign's own processes; the bounded retries (``session``) cover anything else (softhsm2-util).
    A real HSM needs no such lock: the device orders its own state, so there is none.
    """

    def __init__(self, config: HsmConfig) -> None:
        self._path = Path(config.softhsm_conf).parent / "token.lock" if config.softhsm_conf else None
        # Re-entrant within this token object (its calls are serialised by the object's own lock):
        # a second flock on a new descriptor of the same file would wait for ourselves.
        self._depth = 0

    @contextlib.contextmanager
    def _locked(self, mode: int) -> Iterator[None]:
        if self._path is None or self._depth:
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        with open(self._path, "a") as f:
            fcntl.flock(f, mode)
            self._depth = 1
            try:
                yield
            finally:
                self._depth = 0
                fcntl.flock(f, fcntl.LOCK_UN)

    def exclusive(self) -> contextlib.AbstractContextManager[None]:
        return self._locked(fcntl.LOCK_EX)

    def shared(self) -> contextlib.AbstractContextManager[None]:
        return self._locked(fcntl.LOCK_SH)
