"""The session every part of ``Pkcs11Token`` works through: opening the token (bounded retries,
under the token file lock), the logged-in session, restoring it when it goes away, the key-handle
cache, and one PKCS#11 call at a time on a token object."""

from __future__ import annotations

import contextlib
import functools
import os
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import pkcs11
from pkcs11 import ObjectClass
from pkcs11.exceptions import (
    NoSuchKey,
    PinExpired,
    PinIncorrect,
    PinInvalid,
    PinLenRange,
    PinLocked,
    PKCS11Error,
    SessionClosed,
    SessionHandleInvalid,
    UserNotLoggedIn,
)

from rsign.domain.errors import HsmUnavailable, NotFound
from rsign.domain.settings import HsmConfig
from rsign.hsm.pkcs11_adapter.file_lock import TokenFileLock

T = TypeVar("T")
_active_softhsm_conf: str | None = None
# A session that went away: retried with a new login (see TokenSession._restoring).
RETRYABLE = (SessionHandleInvalid, SessionClosed, UserNotLoggedIn)


def serialised(fn: Callable[..., T]) -> Callable[..., T]:
    """One PKCS#11 call at a time on this token object. Worker processes use a token from one
    thread (the lock is then free); an in-process user with threads (CLI provisioning) must not
    reach SoftHSMv2 concurrently: it runs without mutexes and crashes."""

    @functools.wraps(fn)
    def wrapper(self: TokenSession, *args: Any, **kwargs: Any) -> T:
        with self._lock:
            return fn(self, *args, **kwargs)

    return wrapper


# Opening and logging in: bounded retries for transient failures (see TokenFileLock for the
# cause on a file-backed token; a network HSM can also refuse briefly while it fails over). A PIN
# that is wrong, locked or expired is not transient: it fails at once, and retrying it would
# count towards the token's own lockout.
_OPEN_ATTEMPTS = 6
_OPEN_BACKOFF = 0.05  # seconds, doubled per attempt: 0.05 + 0.1 + ... = 1.55 s at most
NOT_TRANSIENT = (PinIncorrect, PinLocked, PinExpired, PinInvalid, PinLenRange)
# A session lost while signing or computing a MAC: retries per call (see TokenSession._restoring).
_SESSION_RETRIES = 5


def _with_retries(what: str, attempt: Callable[[], T]) -> T:
    last: BaseException | None = None
    for i in range(_OPEN_ATTEMPTS):
        try:
            return attempt()
        except NOT_TRANSIENT as exc:
            raise HsmUnavailable(f"{what}: the HSM refused the PIN ({describe(exc)})") from exc
        except (PKCS11Error, RuntimeError, OSError) as exc:
            last = exc
            time.sleep(_OPEN_BACKOFF * (2**i))
    assert last is not None
    raise HsmUnavailable(f"{what} after {_OPEN_ATTEMPTS} attempts: {describe(last)}") from last


def describe(exc: BaseException) -> str:
    """The underlying PKCS#11 error by name, and its text when python-pkcs11 gives one."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class TokenSession:
    def __init__(self, config: HsmConfig) -> None:
        self._lock = threading.RLock()
        if config.softhsm_conf:
            os.environ["SOFTHSM2_CONF"] = config.softhsm_conf
        self._config = config
        # python-pkcs11's key classes are mixins typed loosely; Any keeps mypy honest elsewhere.
        self._keys: dict[bytes, Any] = {}
        self._file_lock = TokenFileLock(config)
        self._lost = False  # a session restore failed: the next call restores first (see _restoring)
        self._session = _with_retries(f"cannot open the HSM token {config.token_label!r}", self._connect)

    def _forget_handles(self) -> None:
        """Handles are session-bound: a new session drops every cached one (parts add theirs)."""
        self._keys.clear()

    def _connect(self) -> pkcs11.Session:
        """Load the module, find the token and log in: one attempt, under the token file lock."""
        global _active_softhsm_conf
        with self._file_lock.exclusive():
            self._lib = pkcs11.lib(self._config.module)
            # python-pkcs11 loads a module once per process and SoftHSMv2 reads SOFTHSM2_CONF at
            # C_Initialize: switching to another embedded token (another state directory) in the
            # same process needs a re-initialisation, which invalidates the previous one's
            # sessions. A process serves one state directory at a time.
            if self._config.softhsm_conf and _active_softhsm_conf not in (None, self._config.softhsm_conf):
                self._lib.reinitialize()
            _active_softhsm_conf = self._config.softhsm_conf or _active_softhsm_conf
            self._token = self._lib.get_token(token_label=self._config.token_label)
            return self._login()

    def _login(self) -> pkcs11.Session:
        # A second C_Login in the same process returns CKR_USER_ALREADY_LOGGED_IN, which
        # python-pkcs11 treats as success: login state is per token, not per session.
        return self._token.open(user_pin=self._config.pin, rw=True)

    def _open(self) -> pkcs11.Session:
        def attempt() -> pkcs11.Session:
            with self._file_lock.exclusive():
                return self._login()

        return _with_retries("cannot log in to the HSM token", attempt)

    def _reopen(self, reinitialize: bool = False) -> None:
        """A new session (and, with ``reinitialize``, a reloaded token); handles are session-bound."""
        self._forget_handles()
        try:
            self._session.close()
        except PKCS11Error:
            pass
        if reinitialize:

            def reload() -> pkcs11.Session:
                with self._file_lock.exclusive():
                    self._lib.reinitialize()
                    self._token = self._lib.get_token(token_label=self._config.token_label)
                    return self._login()

            self._session = _with_retries("cannot re-open the HSM token", reload)
            return
        self._session = self._open()

    def _cached_key(self, object_class: ObjectClass, cka_id: bytes) -> Any:
        key = self._keys.get(cka_id)
        if key is None:
            # One C_FindObjects per key per worker lifetime: lookups are linear in the number of
            # objects on SoftHSMv2, so they must never happen per request.
            key = self._find_key(object_class, cka_id)
            self._keys[cka_id] = key
        return key

    def _find_key(self, object_class: ObjectClass, cka_id: bytes) -> Any:
        try:
            return self._session.get_key(object_class=object_class, id=cka_id)
        except NoSuchKey:
            # SoftHSMv2 can miss an object another process created moments ago (its on-disk
            # index is refreshed lazily): a key another worker just generated. Re-initialising
            # the library reloads the token; only a lookup that fails pays for it.
            self._reopen(reinitialize=True)
            try:
                return self._session.get_key(object_class=object_class, id=cka_id)
            except NoSuchKey as exc:
                raise NotFound("the key is not present in the HSM") from exc

    def _restoring(self, call: Callable[[], T]) -> T:
        """``call``, restoring a session that went away (closed, logged out, HSM restarted) with a
        new login, then, from the second retry on, a reloaded library (a token that vanished and
        came back needs it). At most ``_SESSION_RETRIES`` retries, with back-off; then
        ``HsmUnavailable`` naming the PKCS#11 error. A refused PIN fails at once."""
        last: BaseException | None = None
        for retry in range(_SESSION_RETRIES + 1):
            if retry:
                time.sleep(_OPEN_BACKOFF * 2 ** (retry - 1))
            if retry or self._lost:
                try:
                    # A failed attempt may leave the library half re-initialised: reload it then.
                    self._relogin(reload=self._lost or retry > 1)
                except NOT_TRANSIENT as exc:
                    raise HsmUnavailable(f"the HSM refused the PIN ({describe(exc)})") from exc
                except (PKCS11Error, RuntimeError, OSError) as exc:
                    last = exc
                    continue
            try:
                return call()
            except RETRYABLE as exc:
                last = exc
        assert last is not None
        raise HsmUnavailable(
            f"the HSM session could not be restored ({_SESSION_RETRIES} retries): {describe(last)}"
        ) from last

    def _relogin(self, reload: bool) -> None:
        """One attempt at a new logged-in session; handles are session-bound, so caches go."""
        self._lost = True  # until this attempt succeeds
        self._forget_handles()
        with contextlib.suppress(PKCS11Error):
            self._session.close()
        with self._file_lock.exclusive():
            if reload:
                self._lib.reinitialize()
                self._token = self._lib.get_token(token_label=self._config.token_label)
            self._session = self._login()
        self._lost = False

    @serialised
    def close(self) -> None:
        try:
            self._session.close()
        except PKCS11Error:
            pass
