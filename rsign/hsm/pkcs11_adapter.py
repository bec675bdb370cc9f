"""The only module that imports ``pkcs11``.

``Pkcs11Token`` holds one logged-in session and a cache of key handles keyed by CKA_ID. It is NOT
thread-safe: python-pkcs11 initialises the library with ``C_Initialize(NULL)``, after which SoftHSMv2
disables its own mutexes. Use it from one thread only; ``HsmPool`` gives each worker process its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import os
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from pathlib import Path
from typing import Any, TypeVar

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import Mechanism as P11Mech
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
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from rsign.domain.algorithms import KeyAlgorithm, Mechanism, SignSpec
from rsign.domain.anchor import Anchor
from rsign.domain.errors import AuditIntegrityError, HsmUnavailable, InvalidRequest, NotFound, SecretIntegrityError
from rsign.domain.settings import HsmConfig
from rsign.hsm.ports import ItemFailure, SignResult

T = TypeVar("T")
SEAL_KEY_LABEL = "rsign-seal-v1"
ANCHOR_LABEL = "rsign-audit-anchor"
_active_softhsm_conf: str | None = None
_SEAL_VERSION = b"\x01"

_MECH = {
    Mechanism.RSA_PKCS: P11Mech.RSA_PKCS,
    Mechanism.RSA_PKCS_PSS: P11Mech.RSA_PKCS_PSS,
    Mechanism.ECDSA: P11Mech.ECDSA,
}
_PSS_HASH = {
    "SHA256": (P11Mech.SHA256, pkcs11.MGF.SHA256),
    "SHA384": (P11Mech.SHA384, pkcs11.MGF.SHA384),
    "SHA512": (P11Mech.SHA512, pkcs11.MGF.SHA512),
}
# Private keys: generated on the token, never readable or exportable, usable only for signing.
_PRIVATE_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}
_PUBLIC_TEMPLATE = {Attribute.TOKEN: True, Attribute.VERIFY: True, Attribute.ENCRYPT: False, Attribute.WRAP: False}
_RETRYABLE = (SessionHandleInvalid, SessionClosed, UserNotLoggedIn)


def _serialised(fn: Callable[..., T]) -> Callable[..., T]:
    """One PKCS#11 call at a time on this token object. Worker processes use a token from one
    thread (the lock is then free); an in-process user with threads (CLI provisioning) must not
    reach SoftHSMv2 concurrently: it runs without mutexes and crashes."""

    @functools.wraps(fn)
    def wrapper(self: Pkcs11Token, *args: Any, **kwargs: Any) -> T:
        with self._lock:
            return fn(self, *args, **kwargs)

    return wrapper


# Opening and logging in: bounded retries for transient failures (see _TokenFileLock for the
# cause on a file-backed token; a network HSM can also refuse briefly while it fails over). A PIN
# that is wrong, locked or expired is not transient: it fails at once, and retrying it would
# count towards the token's own lockout.
_OPEN_ATTEMPTS = 6
_OPEN_BACKOFF = 0.05  # seconds, doubled per attempt: 0.05 + 0.1 + ... = 1.55 s at most
_NOT_TRANSIENT = (PinIncorrect, PinLocked, PinExpired, PinInvalid, PinLenRange)
# A session lost while signing or computing a MAC: retries per call (see Pkcs11Token._restoring).
_SESSION_RETRIES = 5


def _with_retries(what: str, attempt: Callable[[], T]) -> T:
    last: BaseException | None = None
    for i in range(_OPEN_ATTEMPTS):
        try:
            return attempt()
        except _NOT_TRANSIENT as exc:
            raise HsmUnavailable(f"{what}: the HSM refused the PIN ({_describe(exc)})") from exc
        except (PKCS11Error, RuntimeError, OSError) as exc:
            last = exc
            time.sleep(_OPEN_BACKOFF * (2**i))
    assert last is not None
    raise HsmUnavailable(f"{what} after {_OPEN_ATTEMPTS} attempts: {_describe(last)}") from last


def _describe(exc: BaseException) -> str:
    """The underlying PKCS#11 error by name, and its text when python-pkcs11 gives one."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class _TokenFileLock:
    """Serialises token-file writes against token opens, across rsign's processes.

    SoftHSMv2's file object store is not safe against a concurrent reader: C_Login rewrites the
    token file (token.object) and creating an object updates it too, and a process that
    initialises the library or looks up the token while another is writing reads a half-written
    file: the token is reported missing (NoSuchToken) or the login fails (CKR_GENERAL_ERROR).
    Workers starting together, or a server starting while the previous one was killed mid-write,
    hit this about once in twenty starts. An advisory flock beside the token directory orders
    rsign's own processes; the bounded retries above cover anything else (softhsm2-util).
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


class Pkcs11Token:
    def __init__(self, config: HsmConfig) -> None:
        self._lock = threading.RLock()
        if config.softhsm_conf:
            os.environ["SOFTHSM2_CONF"] = config.softhsm_conf
        self._config = config
        # python-pkcs11's key classes are mixins typed loosely; Any keeps mypy honest elsewhere.
        self._keys: dict[bytes, Any] = {}
        self._seal_cache: list[Any] = []
        # The anchor object this process created last, with its (epoch, seq): see write_anchor.
        self._anchor_own: tuple[tuple[int, int], Any] | None = None
        self._file_lock = _TokenFileLock(config)
        self._lost = False  # a session restore failed: the next call restores first (see _restoring)
        self._session = _with_retries(f"cannot open the HSM token {config.token_label!r}", self._connect)

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
        self._keys.clear()
        self._seal_cache = []
        self._anchor_own = None  # handles are session-bound; a read_anchor prunes what it leaves
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

    # -- keys --------------------------------------------------------------------------------

    @_serialised
    def warm(self) -> int:
        """Cache a handle for every private key on the token in one pass.

        On SoftHSMv2 a lookup is linear in the number of objects (128 ms with 5,000 keys), so
        25,000 per-key lookups would take an hour; one scan takes seconds. Keys created later are
        looked up once, on first use."""
        try:
            with self._file_lock.shared():
                for key in self._session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
                    self._keys[bytes(key[Attribute.ID])] = key
        except PKCS11Error as exc:
            raise HsmUnavailable(f"cannot list the HSM's keys ({type(exc).__name__})") from exc
        return len(self._keys)

    def _private_key(self, cka_id: bytes) -> Any:
        return self._cached_key(ObjectClass.PRIVATE_KEY, cka_id)

    def _cached_key(self, object_class: ObjectClass, cka_id: bytes) -> Any:
        key = self._keys.get(cka_id)
        if key is None:
            # One C_FindObjects per key per worker lifetime: lookups are linear in the number of
            # objects on SoftHSMv2, so they must never happen per request.
            try:
                key = self._session.get_key(object_class=object_class, id=cka_id)
            except NoSuchKey:
                # SoftHSMv2 can miss an object another process created moments ago (its on-disk
                # index is refreshed lazily); re-initialising the library reloads the token.
                # Only a cache miss that also fails lookup pays for this.
                self._reopen(reinitialize=True)
                try:
                    key = self._session.get_key(object_class=object_class, id=cka_id)
                except NoSuchKey as exc:
                    raise NotFound("the key is not present in the HSM") from exc
            self._keys[cka_id] = key
        return key

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
                except _NOT_TRANSIENT as exc:
                    raise HsmUnavailable(f"the HSM refused the PIN ({_describe(exc)})") from exc
                except (PKCS11Error, RuntimeError, OSError) as exc:
                    last = exc
                    continue
            try:
                return call()
            except _RETRYABLE as exc:
                last = exc
        assert last is not None
        raise HsmUnavailable(
            f"the HSM session could not be restored ({_SESSION_RETRIES} retries): {_describe(last)}"
        ) from last

    def _relogin(self, reload: bool) -> None:
        """One attempt at a new logged-in session; handles are session-bound, so caches go."""
        self._lost = True  # until this attempt succeeds
        self._keys.clear()
        self._seal_cache = []
        self._anchor_own = None
        with contextlib.suppress(PKCS11Error):
            self._session.close()
        with self._file_lock.exclusive():
            if reload:
                self._lib.reinitialize()
                self._token = self._lib.get_token(token_label=self._config.token_label)
            self._session = self._login()
        self._lost = False

    @_serialised
    def sign(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> list[SignResult]:
        return self._restoring(lambda: self._sign(cka_id, spec, digests))

    def sign_async(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> Future[list[SignResult]]:
        """Single-threaded: signs now and returns a completed future."""
        fut: Future[list[SignResult]] = Future()
        try:
            fut.set_result(self.sign(cka_id, spec, digests))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    def _sign(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> list[SignResult]:
        key = self._private_key(cka_id)
        mech = _MECH[spec.mechanism]
        param = None
        if spec.mechanism is Mechanism.RSA_PKCS_PSS:
            h, mgf = _PSS_HASH[spec.hash_alg.value]
            param = (h, mgf, spec.pss_salt_len)
        out: list[SignResult] = []
        for digest in digests:
            try:
                sig = key.sign(spec.frame(digest), mechanism=mech, mechanism_param=param)
            except _RETRYABLE:
                raise
            except PKCS11Error as exc:
                out.append(ItemFailure(f"HSM refused to sign: {type(exc).__name__}"))
                continue
            out.append(_der_ecdsa(sig) if spec.der_ecdsa else sig)
        return out

    @_serialised
    def generate_keypair(self, alg: KeyAlgorithm, cka_id: bytes, label: str) -> bytes:
        with self._file_lock.exclusive():
            return self._generate_keypair(alg, cka_id, label)

    def _generate_keypair(self, alg: KeyAlgorithm, cka_id: bytes, label: str) -> bytes:
        try:
            if alg.is_rsa:
                pub, _priv = self._session.generate_keypair(
                    KeyType.RSA,
                    alg.rsa_bits,
                    id=cka_id,
                    label=label,
                    store=True,
                    public_template=_PUBLIC_TEMPLATE,
                    private_template=_PRIVATE_TEMPLATE,
                )
            else:
                params = self._session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters(alg.curve)},
                    local=True,
                )
                pub, _priv = params.generate_keypair(
                    id=cka_id,
                    label=label,
                    store=True,
                    public_template=_PUBLIC_TEMPLATE,
                    private_template=_PRIVATE_TEMPLATE,
                )
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not generate the key ({type(exc).__name__})") from exc
        return _spki(pub)

    @_serialised
    def generate_keypairs(self, items: Sequence[tuple[KeyAlgorithm, bytes, str]]) -> list[bytes]:
        with self._file_lock.exclusive():
            return [self._generate_keypair(alg, cka_id, label) for alg, cka_id, label in items]

    @_serialised
    def public_key(self, cka_id: bytes) -> bytes:
        try:
            pub = self._session.get_key(object_class=ObjectClass.PUBLIC_KEY, id=cka_id)
        except NoSuchKey as exc:
            raise NotFound("the key is not present in the HSM") from exc
        return _spki(pub)

    @_serialised
    def destroy_keypair(self, cka_id: bytes) -> int:
        self._keys.pop(cka_id, None)
        try:
            with self._file_lock.exclusive():
                objs = list(self._session.get_objects({Attribute.ID: cka_id}))
                for obj in objs:
                    obj.destroy()
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not destroy the key ({type(exc).__name__})") from exc
        return len(objs)

    # -- MAC keys (audit integrity) -----------------------------------------------------------

    @_serialised
    def generate_mac_key(self, cka_id: bytes, label: str) -> None:
        try:
            with self._file_lock.exclusive():
                self._generate_mac_key(cka_id, label)
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not generate the MAC key ({type(exc).__name__})") from exc

    def _generate_mac_key(self, cka_id: bytes, label: str) -> None:
        self._session.generate_key(
            KeyType.GENERIC_SECRET,
            256,
            id=cka_id,
            label=label,
            store=True,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.VERIFY: True,
            },
        )

    @_serialised
    def mac(self, cka_id: bytes, messages: Sequence[bytes]) -> list[bytes]:
        def compute() -> list[bytes]:
            try:
                key = self._cached_key(ObjectClass.SECRET_KEY, cka_id)
                return [bytes(key.sign(m, mechanism=P11Mech.SHA256_HMAC)) for m in messages]
            except _RETRYABLE:
                raise
            except PKCS11Error as exc:
                raise HsmUnavailable(f"the HSM could not compute the MAC ({type(exc).__name__})") from exc

        # Every audit append needs a MAC: a lost session must not stop the log for good.
        return self._restoring(compute)

    # -- sealing small secrets -------------------------------------------------------------

    def _seal_keys(self) -> list[Any]:
        """Every sealing key on the token, oldest CKA_ID first, creating one if there is none.

        rsign's processes create it under the token file lock (re-listing first). With a real HSM,
        where there is no such lock, two processes starting at once on a fresh token may each
        create one: sealing uses the first key in CKA_ID order and unsealing tries them all (AES-GCM
        authentication tells the right key apart).
        """
        if not self._seal_cache:
            with self._file_lock.exclusive():
                self._seal_cache = sorted(self._find_or_create_seal_keys(), key=lambda k: bytes(k[Attribute.ID]))
        return self._seal_cache

    def _find_or_create_seal_keys(self) -> list[Any]:
        found = list(
            self._session.get_objects({Attribute.CLASS: ObjectClass.SECRET_KEY, Attribute.LABEL: SEAL_KEY_LABEL})
        )
        if found:
            return found
        key = self._session.generate_key(
            KeyType.AES,
            256,
            id=secrets.token_bytes(16),
            label=SEAL_KEY_LABEL,
            store=True,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.ENCRYPT: True,
                Attribute.DECRYPT: True,
            },
        )
        return [key]

    @_serialised
    def ensure_seal_key(self) -> None:
        try:
            self._seal_keys()
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM sealing key is unavailable ({type(exc).__name__})") from exc

    @_serialised
    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        nonce = secrets.token_bytes(12)
        try:
            ct = self._seal_keys()[0].encrypt(
                plaintext, mechanism=P11Mech.AES_GCM, mechanism_param=pkcs11.GCMParams(nonce, aad, 128)
            )
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not seal the secret ({type(exc).__name__})") from exc
        return _SEAL_VERSION + nonce + bytes(ct)

    @_serialised
    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        """Raises ``SecretIntegrityError`` when the blob does not authenticate under any sealing key
        of a working HSM (altered, truncated, or bound to another ``aad``: copied from another
        user), and ``HsmUnavailable`` only when the HSM itself fails."""
        if blob[:1] != _SEAL_VERSION or len(blob) < 1 + 12 + 16:
            raise SecretIntegrityError("the sealed secret is malformed (altered or truncated)")
        nonce, ct = blob[1:13], blob[13:]
        for attempt in range(2):
            try:
                keys = self._seal_keys()
            except PKCS11Error as exc:
                raise HsmUnavailable(f"the HSM sealing key is unavailable ({type(exc).__name__})") from exc
            for key in keys:
                try:
                    return bytes(
                        key.decrypt(ct, mechanism=P11Mech.AES_GCM, mechanism_param=pkcs11.GCMParams(nonce, aad, 128))
                    )
                except PKCS11Error:
                    # A GCM tag mismatch has no error code of its own (SoftHSMv2 answers
                    # CKR_GENERAL_ERROR): try the other keys, then tell the cases apart below.
                    continue
            if attempt == 0:
                # Another process may have created a sealing key this one cannot see yet (two
                # workers starting on a fresh token; SoftHSMv2 refreshes its object index lazily).
                self._reopen(reinitialize=True)
        # No key opens it. If the HSM round-trips a fresh secret, the HSM works and the blob is
        # what is wrong: an integrity failure, which no retry will cure. Otherwise the HSM failed.
        if not self._seal_round_trip_ok():
            raise HsmUnavailable("the HSM could not unseal the secret (sealing is failing)")
        raise SecretIntegrityError("the sealed secret failed its integrity check (altered, or copied from elsewhere)")

    def _seal_round_trip_ok(self) -> bool:
        probe, aad, nonce = secrets.token_bytes(16), b"rsign-seal-probe", secrets.token_bytes(12)
        try:
            key = self._seal_keys()[0]
            ct = key.encrypt(probe, mechanism=P11Mech.AES_GCM, mechanism_param=pkcs11.GCMParams(nonce, aad, 128))
            back = key.decrypt(ct, mechanism=P11Mech.AES_GCM, mechanism_param=pkcs11.GCMParams(nonce, aad, 128))
        except PKCS11Error:
            return False
        return bytes(back) == probe

    # -- the audit anchor ------------------------------------------------------------------
    #
    # Why one object per write, never an update: SoftHSMv2 refuses C_SetAttributeValue on a data
    # object's CKA_VALUE (CKR_ATTRIBUTE_READ_ONLY; PKCS#11 does not make it modifiable), so a new
    # value is a new object. That also settles replicas racing, with no lock that spans hosts
    # (there is none with a network HSM; _TokenFileLock orders one machine's processes only):
    #   - a writer creates a new object (atomic), then destroys only objects it knows to be LOWER
    #     than one that exists: its own previous one, or, when reading, those below the highest;
    #   - the anchor is the highest (epoch, seq) of all anchor objects.
    # An object is destroyed only once a higher one has existed, so the highest is never destroyed
    # and the anchor never moves backwards, however writers interleave. A read in another process
    # may lag for a moment (SoftHSMv2 refreshes its object index lazily): it can return an older
    # anchor, never a higher one, so callers keep the highest they have seen. The rejected alternative,
    # one object compared-then-written under a lock, needs a lock every replica shares: the token
    # file lock exists only for the embedded token, on one machine.

    def _anchor_objects(self) -> list[tuple[tuple[int, int], Any, bytes]]:
        """Every anchor object with its (epoch, seq), highest last."""
        found: list[tuple[tuple[int, int], Any, bytes]] = []
        with self._file_lock.shared():
            objects = list(
                self._session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: ANCHOR_LABEL})
            )
            for obj in objects:
                try:
                    value = bytes(obj[Attribute.VALUE])
                except PKCS11Error:
                    continue  # destroyed by another process meanwhile
                try:
                    order = Anchor.decode(value).order
                except ValueError as exc:
                    # Never guess past an anchor this version cannot read (a newer rsign may
                    # have written a higher one): the caller reports it; only a reset replaces it.
                    raise AuditIntegrityError(f"an HSM anchor object cannot be read: {exc}") from None
                found.append((order, obj, value))
        found.sort(key=lambda f: f[0])
        return found

    def _destroy_quietly(self, obj: Any) -> None:
        try:
            obj.destroy()
        except PKCS11Error:
            pass  # already destroyed by another process: the same outcome

    @_serialised
    def read_anchor(self) -> bytes | None:
        try:
            found = self._anchor_objects()
            if not found:
                return None
            top = found[-1][0]
            lower = [obj for order, obj, _ in found if order < top]
            if lower:
                with self._file_lock.exclusive():
                    for obj in lower:
                        self._destroy_quietly(obj)
            return found[-1][2]
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not read the audit anchor ({_describe(exc)})") from exc

    @_serialised
    def write_anchor(self, data: bytes) -> bool:
        try:
            order = Anchor.decode(data).order
        except ValueError as exc:
            raise InvalidRequest(f"not an audit anchor: {exc}") from None
        own = self._anchor_own
        if own is not None and order <= own[0]:
            return False
        try:
            with self._file_lock.exclusive():
                obj = self._create_anchor(data)
                if own is not None:
                    self._destroy_quietly(own[1])
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not store the audit anchor ({_describe(exc)})") from exc
        self._anchor_own = (order, obj)
        return True

    @_serialised
    def reset_anchor(self, data: bytes) -> bytes:
        try:
            anchor = Anchor.decode(data)
        except ValueError as exc:
            raise InvalidRequest(f"not an audit anchor: {exc}") from None
        try:
            with self._file_lock.exclusive():
                # Unreadable objects are replaced too: resetting is the operator's explicit decision.
                objects = list(
                    self._session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: ANCHOR_LABEL})
                )
                epoch = 0
                for obj in objects:
                    try:
                        epoch = max(epoch, Anchor.decode(bytes(obj[Attribute.VALUE])).epoch)
                    except (PKCS11Error, ValueError):
                        continue
                value = anchor.with_epoch(epoch + 1).encode()
                created = self._create_anchor(value)  # first: the token is never without an anchor
                for obj in objects:
                    self._destroy_quietly(obj)
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not reset the audit anchor ({_describe(exc)})") from exc
        self._anchor_own = ((epoch + 1, anchor.seq), created)
        return value

    def _create_anchor(self, value: bytes) -> Any:
        return self._session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                # Readable and writable only after C_Login with the user PIN, which the database
                # administrator does not hold.
                Attribute.PRIVATE: True,
                Attribute.LABEL: ANCHOR_LABEL,
                Attribute.APPLICATION: "rsign",
                Attribute.VALUE: value,
            }
        )

    @_serialised
    def close(self) -> None:
        try:
            self._session.close()
        except PKCS11Error:
            pass


def _spki(pub: Any) -> bytes:
    if pub.key_type == KeyType.RSA:
        n = int.from_bytes(pub[Attribute.MODULUS], "big")
        e = int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big")
        return (
            rsa.RSAPublicNumbers(e, n)
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    return bytes(encode_ec_public_key(pub))


def _der_ecdsa(raw: bytes) -> bytes:
    """PKCS#11 returns r || s; X.509, CMS and PAdES consumers need DER ECDSA-Sig-Value."""
    n = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:n], "big"), int.from_bytes(raw[n:], "big"))
