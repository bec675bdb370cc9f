"""Login, sessions, fresh-TOTP checks and user enrolment.

The only domain package that holds ``UserSecrets`` (PIN hash, sealed TOTP seed): it reads them from
the store, checks them here, and hands nothing of them further up.
"""

from __future__ import annotations

import hashlib
import logging
import math
import secrets
from typing import NoReturn

from rsign.audit.journal import AuditedStore
from rsign.auth import pins, totp
from rsign.domain import context
from rsign.domain.clock import Clock
from rsign.domain.errors import (
    AlreadyExists,
    AuthenticationFailed,
    CodeAlreadyUsed,
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    OtpRejected,
    RsignError,
    SecretIntegrityError,
)
from rsign.domain.events import Action, AuditEvent, Result, event
from rsign.domain.principal import (
    LOCAL_OPERATOR,
    Principal,
    Role,
    Scope,
    UserStatus,
    parse_role,
    parse_scope,
    user_id_problem,
)
from rsign.domain.records import Enrolment, UserSecrets, UserView
from rsign.domain.settings import Settings
from rsign.hsm.ports import Hsm

# Refresh a session's idle timer at most this often: saves a database write on most calls, at the
# cost of idle expiry being up to this much late.
_TOUCH_INTERVAL = 30.0
_LOGIN_FAILED = "login failed: wrong user id, PIN or one-time code"
SEED_INTEGRITY_REASON = "sealed TOTP seed failed integrity check"
_SEED_DAMAGED = (
    "this user's authenticator enrolment is damaged on the server and cannot check one-time codes;"
    " ask an agency admin to reset the authenticator (retrying will not help)"
)

log = logging.getLogger(__name__)


def token_hash(token: str) -> bytes:
    """Tokens (sessions, SADs) are stored only as SHA-256: they are 256-bit random, so a fast hash
    is enough and a database dump reveals nothing usable."""
    return hashlib.sha256(token.encode("utf-8")).digest()


def seed_aad(user_id: str) -> bytes:
    # Binds a sealed seed to its user: a seed blob copied onto another user row will not unseal.
    return b"rsign-totp-seed-v1:" + user_id.encode("utf-8")


class AuthService:
    def __init__(self, store: AuditedStore, hsm: Hsm, clock: Clock, settings: Settings) -> None:
        self._store = store
        self._hsm = hsm
        self._clock = clock
        self._settings = settings

    # -- enrolment ---------------------------------------------------------------------------

    def enrol(
        self, user_id: str, name: str, pin: str, agency: str = "", role: str = Role.SIGNER, scope: str = Scope.AGENCY
    ) -> Enrolment:
        user_id = user_id.strip()
        if problem := user_id_problem(user_id):
            raise InvalidRequest(problem)
        if not name.strip():
            raise InvalidRequest("a name is required")
        if len(pin) < self._settings.pin_min_length:
            raise InvalidRequest(f"the PIN must have at least {self._settings.pin_min_length} characters")
        if user_id == LOCAL_OPERATOR.user_id:
            # Audit records and destroy approvals name the local operator by this id.
            raise InvalidRequest(f"the user id {user_id!r} is reserved")
        role_ = parse_role(role)
        scope_ = parse_scope(scope)
        with self._store.read() as t:
            if t.get_user(user_id) is not None:
                raise AlreadyExists(f"user {user_id} already exists")
        seed = totp.new_seed()
        sealed = self._hsm.seal(seed, seed_aad(user_id))
        pin_hash = pins.hash_pin(pin)  # ~20 ms of Argon2: never inside the write transaction
        with self._store.tx() as t:
            t.add_user(user_id, name.strip(), agency.strip(), role_, pin_hash, sealed, self._clock.now(), scope_)
            t.append(
                event(
                    Action.USER_ENROL,
                    actor=context.current().actor or "cli",
                    agency=agency.strip(),
                    details={"user_id": user_id, "agency": agency, "role": role_, "scope": scope_},
                )
            )
        return Enrolment(user_id, seed, totp.provisioning_uri(seed, user_id))

    def unlock(self, user_id: str) -> None:
        with self._store.tx() as t:
            user = t.get_user(user_id)
            if user is None:
                raise NotFound(f"no user {user_id}")
            if not user.locked:
                # Nothing to undo: no unlock is recorded for a user who was not locked (the
                # refusal is, by the caller: AdminService).
                raise FailedPrecondition(f"user {user_id} is not locked")
            t.unlock_user(user_id)
            t.append(event(Action.UNLOCK, agency=user.agency, details={"user_id": user_id}))

    # -- login / sessions --------------------------------------------------------------------

    def login(self, user_id: str, pin: str, otp: str) -> tuple[str, float]:
        context.set_actor(user_id)
        with self._store.read() as t:
            user = t.get_user(user_id)
            secret = t.get_user_secrets(user_id)
        pin_ok = pins.verify_pin(secret.pin_hash if secret else None, pin)
        if user is None or secret is None:
            self._audit_only(event(Action.LOGIN, Result.FAILURE, reason="unknown user"))
            raise AuthenticationFailed(_LOGIN_FAILED)
        context.set_actor(user_id, user.agency)
        if user.locked:
            self._audit_only(event(Action.LOGIN, Result.FAILURE, reason="user locked"))
            raise FailedPrecondition(
                "this user is locked after too many failed attempts; ask an agency admin to unlock it"
            )
        if user.status != UserStatus.ACTIVE:
            self._audit_only(event(Action.LOGIN, Result.FAILURE, reason=f"user {user.status}"))
            raise FailedPrecondition(f"this user is {user.status}")
        if not pin_ok:
            self._fail(user, Action.LOGIN, "wrong PIN", AuthenticationFailed(_LOGIN_FAILED))
        # Only reached with the right PIN: a damaged seed is reported (below) to whoever knows it,
        # never to a guesser.
        # A used code is refused here like a wrong one, and counted: unlike Authorize (whose caller
        # already proved PIN and code), a distinct answer at Login would tell whoever replays a code
        # they saw typed that the PIN they are guessing is right.
        step, _ = self._match_otp(user, secret, otp, Action.LOGIN)
        if step is None:
            self._fail(user, Action.LOGIN, "wrong or replayed one-time code", AuthenticationFailed(_LOGIN_FAILED))
        token = secrets.token_urlsafe(32)
        now = self._clock.now()
        expires = now + self._settings.session_max_seconds
        with self._store.tx() as t:
            if not t.accept_otp_step(user_id, step):
                accepted = False
            else:
                accepted = True
                sid = t.add_session(token_hash(token), user_id, now, expires)
                t.append(event(Action.LOGIN, details={"session_id": sid}))
        if not accepted:  # a concurrent request used this step (or a later one) first
            self._fail(user, Action.LOGIN, "replayed one-time code", AuthenticationFailed(_LOGIN_FAILED))
        return token, expires

    def authenticate(self, token: str) -> Principal:
        """Resolve a bearer token to a principal, enforcing idle and absolute expiry."""
        if not token:
            raise AuthenticationFailed("no session: log in and send 'authorization: Bearer <token>'")
        now = self._clock.now()
        with self._store.read() as t:
            sess = t.get_session(token_hash(token))
            user = t.get_user(sess.user_id) if sess else None
        if sess is None or user is None:
            # Nobody to name: an unknown token is not recorded (it would let anyone fill the log).
            raise AuthenticationFailed("invalid session token; log in again")
        if sess.ended_at is not None:
            # A call on an ended session (revoked, expired, user suspended or moved): its user is
            # known, so the refusal is recorded.
            self._audit_only(
                event(
                    Action.AUTH_REFUSE,
                    Result.FAILURE,
                    actor=user.user_id,
                    agency=user.agency,
                    reason=f"session {sess.end_reason or 'ended'}",
                    details={"session_id": sess.id},
                )
            )
            raise AuthenticationFailed(f"session {sess.end_reason or 'ended'}; log in again")
        reason = ""
        if now >= sess.expires_at:
            reason = "expired (maximum lifetime)"
        elif now - sess.last_seen >= self._settings.session_idle_seconds:
            reason = "expired (idle)"
        if reason:
            with self._store.tx() as t:
                if t.end_session(sess.id, now, "expired"):
                    t.append(
                        event(
                            Action.SESSION_EXPIRED,
                            actor=user.user_id,
                            agency=user.agency,
                            reason=reason,
                            details={"session_id": sess.id},
                        )
                    )
            raise AuthenticationFailed(f"session {reason}; log in again")
        if now - sess.last_seen >= _TOUCH_INTERVAL:
            with self._store.tx() as t:
                t.touch_session(sess.id, now)
        context.set_actor(user.user_id, user.agency)
        return Principal(user.user_id, sess.id, user.role, user.agency, user.scope)

    def logout(self, principal: Principal) -> None:
        with self._store.tx() as t:
            t.end_session(principal.session_id, self._clock.now(), "revoked")
            t.append(event(Action.LOGOUT, details={"session_id": principal.session_id}))

    # -- fresh TOTP for signing activation ---------------------------------------------------

    def check_fresh_otp(self, user_id: str, otp: str, action: Action) -> int:
        """Verify a fresh TOTP for ``user_id`` and return its step, NOT yet accepted: the caller
        accepts it with ``Tx.accept_otp_step`` in the transaction that uses it."""
        with self._store.read() as t:
            user = t.get_user(user_id)
            secret = t.get_user_secrets(user_id)
        if user is None or secret is None:
            self._audit_only(event(action, Result.FAILURE, actor=user_id, reason="unknown user"))
            raise AuthenticationFailed("invalid session; log in again")
        if user.status != UserStatus.ACTIVE:
            self._refuse_user(user, action, f"user {user.status}")
            raise FailedPrecondition(f"this user is {user.status}")
        if user.locked:
            self._refuse_user(user, action, "user locked")
            raise FailedPrecondition(
                "this user is locked after too many failed attempts; ask an agency admin to unlock it"
            )
        step, used = self._match_otp(user, secret, otp, action)
        if step is None and used:
            self._code_already_used(user, action, secret.last_otp_step)
        if step is None:
            self._fail(user, action, "wrong one-time code", OtpRejected("wrong one-time code"))
        return step

    def otp_replayed(self, user_id: str, action: Action) -> NoReturn:
        """A concurrent request accepted this (correct) step first: refused as an already used code."""
        with self._store.read() as t:
            user = t.get_user(user_id)
            secret = t.get_user_secrets(user_id)
        if user is None or secret is None:
            self._audit_only(event(action, Result.FAILURE, actor=user_id, reason="unknown user"))
            raise AuthenticationFailed("invalid session; log in again")
        if user.locked:  # accept_otp_step also refuses a user locked meanwhile
            self._refuse_user(user, action, "user locked")
            raise FailedPrecondition(
                "this user is locked after too many failed attempts; ask an agency admin to unlock it"
            )
        self._code_already_used(user, action, secret.last_otp_step)

    def _code_already_used(self, user: UserView, action: Action, last_step: int) -> NoReturn:
        """Refuse a correct code for a step already accepted; audited, NOT counted towards lockout.

        Only callers that already proved PIN and code (a session) get here, so the distinct answer
        reveals nothing, and the official signing a second document within the minute learns to
        wait instead of being locked out. A random guess that happens to hit a used step's code
        (2 in a million with the +-1 window) is not counted either: it is worth nothing to anyone."""
        now = self._clock.now()
        # The first step the server will accept that an authenticator shows from now on.
        next_step = max(last_step + 1, totp.step_of(now))
        retry_after = max(0, math.ceil(next_step * totp.STEP_SECONDS - now))
        self._audit_only(
            event(
                action,
                Result.FAILURE,
                actor=user.user_id,
                agency=user.agency,
                reason="one-time code already used",
                details={"retry_after": retry_after},
            )
        )
        raise CodeAlreadyUsed(retry_after)

    # -- internals ---------------------------------------------------------------------------

    def _match_otp(self, user: UserView, secret: UserSecrets, otp: str, action: Action) -> tuple[int | None, bool]:
        """(the fresh step ``otp`` is the code of, or None; whether it is the code of a used step)."""
        try:
            seed = self._hsm.unseal(secret.totp_sealed, seed_aad(user.user_id))
        except SecretIntegrityError:
            self._seed_damaged(user, action)
        steps = totp.matching_steps(seed, otp.strip(), self._clock.now(), self._settings.otp_window)
        fresh = [s for s in steps if s > secret.last_otp_step]
        return (fresh[0] if fresh else None), bool(steps) and not fresh

    def _seed_damaged(self, user: UserView, action: Action) -> NoReturn:
        """The sealed seed does not authenticate (altered, or copied from another user's row).

        Audited and refused with ``SecretIntegrityError``; NOT counted towards lockout: no code was
        compared (so nothing can be guessed through it), the fault is the server's data and not
        the caller's, and locking the user on top would only add a second thing to repair. The
        cure is an authenticator reset, which seals a new seed."""
        log.error("user %s: %s", user.user_id, SEED_INTEGRITY_REASON)
        self._audit_only(
            event(action, Result.FAILURE, actor=user.user_id, agency=user.agency, reason=SEED_INTEGRITY_REASON)
        )
        raise SecretIntegrityError(_SEED_DAMAGED)

    def _refuse_user(self, user: UserView, action: Action, reason: str) -> None:
        """Record a refusal that names the user (not counted towards lockout: no code was tried)."""
        self._audit_only(event(action, Result.FAILURE, actor=user.user_id, agency=user.agency, reason=reason))

    def _audit_only(self, ev: AuditEvent) -> None:
        with self._store.tx() as t:
            t.append(ev)

    def _fail(self, user: UserView, action: Action, reason: str, err: RsignError) -> NoReturn:
        """Count a failure, lock at the threshold, audit both; then raise ``err`` (or the lock)."""
        with self._store.tx() as t:
            failures, locked_now = t.record_auth_failure(user.user_id, self._settings.lockout_threshold)
            evs = [
                event(
                    action,
                    Result.FAILURE,
                    actor=user.user_id,
                    agency=user.agency,
                    reason=reason,
                    details={"failures": failures},
                )
            ]
            if locked_now:
                evs.append(
                    event(
                        Action.LOCKOUT,
                        actor=user.user_id,
                        agency=user.agency,
                        reason=f"{failures} consecutive failures",
                    )
                )
            t.append(*evs)
        if locked_now:
            raise FailedPrecondition(
                "too many failed attempts: this user is now locked; ask an agency admin to unlock it"
            )
        raise err
