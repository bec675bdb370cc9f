"""Every administration operation: authorized by ``rsign.domain.policy`` (role and agency), audited
by the domain service it calls. Used by the gRPC AdminService (the session's principal) and by the
CLI on a local state directory (``LOCAL_OPERATOR``).

A refused operation is audited too (``refusal``): the action it would have been, result failure,
the caller, the target user or credential, and why (policy, state, unknown target, bad input)."""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Concatenate, ParamSpec, TypeVar

from rsign.admin.ports import MoveResult
from rsign.audit.journal import AuditedStore
from rsign.auth import totp
from rsign.auth.service import AuthService, seed_aad
from rsign.domain.clock import Clock
from rsign.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    ResourceExhausted,
    RsignError,
)
from rsign.domain.events import Action, Result, event
from rsign.domain.policy import Op, authorize, check_enrol, scope_agency
from rsign.domain.principal import CredentialStatus, Principal, Role, Scope, UserStatus, parse_role, parse_scope
from rsign.domain.records import CredentialView, Enrolment, KeyVersionView, UserView, fold
from rsign.hsm.ports import Hsm
from rsign.keys.service import KeyService

P = ParamSpec("P")
R = TypeVar("R")
# What a refusal is: the caller asked for something not allowed, not possible now, unknown or
# malformed. A failing dependency (HSM, audit store) is not one: it has its own records and status.
REFUSALS = (PermissionDenied, FailedPrecondition, NotFound, InvalidRequest, AlreadyExists, ResourceExhausted)
Method = Callable[Concatenate["AdminService", Principal, P], R]


def refusal(action: Action, target: str) -> Callable[[Method[P, R]], Method[P, R]]:
    """Audit a refused call of the decorated operation as ``action`` failure. ``target`` says what
    the first argument after the principal names: "user", "credential" or "agency" (searches)."""

    def decorate(fn: Method[P, R]) -> Method[P, R]:
        @functools.wraps(fn)
        def call(self: AdminService, who: Principal, /, *args: P.args, **kwargs: P.kwargs) -> R:
            try:
                return fn(self, who, *args, **kwargs)
            except REFUSALS as exc:
                # Refusals a domain service already recorded itself carry ``audited``.
                if not getattr(exc, "audited", False):
                    self._refused(who, action, target, str(args[0]) if args else "", exc)
                raise

        return call

    return decorate


class AdminService:
    def __init__(self, store: AuditedStore, hsm: Hsm, clock: Clock, auth: AuthService, keys: KeyService) -> None:
        self._store = store
        self._hsm = hsm
        self._clock = clock
        self._auth = auth
        self._keys = keys

    # -- helpers -----------------------------------------------------------------------------

    def _user(self, user_id: str) -> UserView:
        with self._store.read() as t:
            u = t.get_user(user_id)
        if u is None:
            raise NotFound(f"no user {user_id}")
        return u

    def _managed_user(self, who: Principal, user_id: str) -> UserView:
        """The user ``who`` is about to manage, once the policy allows it. The role is checked
        before the lookup: a caller without it learns nothing, not even whether the user exists."""
        authorize(who, Op.MANAGE_USERS)
        user = self._user(user_id)
        authorize(who, Op.MANAGE_USERS, user.agency)
        return user

    def _authorize_on_credential(self, who: Principal, op: Op, credential_id: str) -> None:
        authorize(who, op)  # role first, as in ``_managed_user``
        authorize(who, op, self._keys.get(credential_id).agency)

    def _refused(self, who: Principal, action: Action, target: str, value: str, exc: RsignError) -> None:
        """The refusal's record, in its own transaction. If even that cannot be written, the audit
        store's error wins (fail closed)."""
        details: dict[str, str] = {"error": type(exc).__name__}
        if target == "user":
            details["user_id"] = value  # as in the operation's success record
        elif target == "agency":
            details["agency"] = value  # the agency searched
        with self._store.tx() as t:
            t.append(
                event(
                    action,
                    Result.FAILURE,
                    # The local operator's refusals name the operator as their successes do
                    # (the request's actor, e.g. "cli:alice"), not the placeholder principal.
                    **({} if who.local else {"actor": who.user_id}),
                    agency=who.agency,
                    credential_id=value if target == "credential" else "",
                    reason=exc.message,
                    details=details,
                )
            )

    # -- users -------------------------------------------------------------------------------

    @refusal(Action.USER_ENROL, "user")
    def enrol(
        self,
        who: Principal,
        user_id: str,
        name: str,
        pin: str,
        agency: str,
        role: str = Role.SIGNER,
        scope: str = Scope.AGENCY,
    ) -> Enrolment:
        check_enrol(who, agency, parse_role(role), parse_scope(scope))
        return self._auth.enrol(user_id, name, pin, agency=agency, role=role, scope=scope)

    @refusal(Action.UNLOCK, "user")
    def unlock(self, who: Principal, user_id: str) -> UserView:
        self._managed_user(who, user_id)
        self._auth.unlock(user_id)
        return self._user(user_id)

    @refusal(Action.USER_SUSPEND, "user")
    def suspend(self, who: Principal, user_id: str, reason: str) -> UserView:
        """No login, no signing, open sessions ended; reversible with ``reactivate``."""
        user = self._managed_user(who, user_id)
        if user.status != UserStatus.ACTIVE:
            raise FailedPrecondition(f"user {user_id} is {user.status}")
        now = self._clock.now()
        with self._store.tx() as t:
            t.set_user_status(user_id, UserStatus.SUSPENDED)
            ended = t.end_user_sessions(user_id, now, "user suspended")
            t.expire_user_sads(user_id, now)
            t.append(
                event(
                    Action.USER_SUSPEND,
                    agency=user.agency,
                    reason=reason,
                    details={"user_id": user_id, "sessions_ended": ended},
                )
            )
        return self._user(user_id)

    @refusal(Action.USER_REACTIVATE, "user")
    def reactivate(self, who: Principal, user_id: str) -> UserView:
        user = self._managed_user(who, user_id)
        if user.status != UserStatus.SUSPENDED:
            raise FailedPrecondition(f"user {user_id} is {user.status}; only a suspended user is reactivated")
        with self._store.tx() as t:
            t.set_user_status(user_id, UserStatus.ACTIVE)
            t.append(event(Action.USER_REACTIVATE, agency=user.agency, details={"user_id": user_id}))
        return self._user(user_id)

    @refusal(Action.USER_RESET_TOTP, "user")
    def reset_totp(self, who: Principal, user_id: str) -> Enrolment:
        """Re-enrol the authenticator (lost device): new seed; the old seed, every open session
        and every unused SAD of the user stop working at once."""
        user = self._managed_user(who, user_id)
        if user.status == UserStatus.RETIRED:
            raise FailedPrecondition(f"user {user_id} is retired")
        seed = totp.new_seed()
        sealed = self._hsm.seal(seed, seed_aad(user_id))
        now = self._clock.now()
        with self._store.tx() as t:
            t.set_totp(user_id, sealed)
            ended = t.end_user_sessions(user_id, now, "authenticator reset")
            sads = t.expire_user_sads(user_id, now)
            t.append(
                event(
                    Action.USER_RESET_TOTP,
                    agency=user.agency,
                    details={"user_id": user_id, "sessions_ended": ended, "sads_expired": sads},
                )
            )
        return Enrolment(user_id, seed, totp.provisioning_uri(seed, user_id))

    @refusal(Action.USER_MOVE, "user")
    def move(self, who: Principal, user_id: str, new_agency: str) -> MoveResult:
        """Job change: the user moves agency; per Decree 68 their individual credentials are revoked
        (a new one can then be issued in the new agency), open sessions and SADs end."""
        user = self._managed_user(who, user_id)
        new_agency = new_agency.strip()
        if not new_agency or new_agency == user.agency:
            raise InvalidRequest("name the agency the user moves to")
        revoked = self._end_credentials(user_id, "job change")
        now = self._clock.now()
        with self._store.tx() as t:
            t.set_user_agency(user_id, new_agency)
            t.end_user_sessions(user_id, now, "moved to another agency")
            t.expire_user_sads(user_id, now)
            t.append(
                event(
                    Action.USER_MOVE,
                    agency=user.agency,
                    reason="job change",
                    details={"user_id": user_id, "from": user.agency, "to": new_agency, "revoked": revoked},
                )
            )
        return MoveResult(self._user(user_id), revoked)

    @refusal(Action.USER_RETIRE, "user")
    def retire(self, who: Principal, user_id: str) -> MoveResult:
        user = self._managed_user(who, user_id)
        if user.status == UserStatus.RETIRED:
            raise FailedPrecondition(f"user {user_id} is already retired")
        revoked = self._end_credentials(user_id, "retirement")
        now = self._clock.now()
        with self._store.tx() as t:
            t.set_user_status(user_id, UserStatus.RETIRED)
            t.end_user_sessions(user_id, now, "retired")
            t.expire_user_sads(user_id, now)
            t.append(
                event(
                    Action.USER_RETIRE,
                    agency=user.agency,
                    reason="retirement",
                    details={"user_id": user_id, "revoked": revoked},
                )
            )
        return MoveResult(self._user(user_id), revoked)

    def _end_credentials(self, user_id: str, reason: str) -> list[str]:
        with self._store.read() as t:
            creds = [
                c for c in t.credentials_of(user_id) if c.status in (CredentialStatus.ACTIVE, CredentialStatus.DISABLED)
            ]
        for c in creds:
            self._keys.revoke(c.credential_id, reason)
        return [c.credential_id for c in creds]

    @refusal(Action.ADMIN_SEARCH, "agency")
    def search_users(
        self, who: Principal, agency: str = "", name: str = "", status: str = "", limit: int = 100
    ) -> list[UserView]:
        authorize(who, Op.SEARCH_USERS)
        agency = scope_agency(who, agency)
        with self._store.read() as t:
            return t.search_users(agency=agency, name_folded=fold(name), status=status, limit=max(1, min(limit, 1000)))

    # -- keys and certificates ---------------------------------------------------------------

    @refusal(Action.KEY_GENERATE, "credential")
    def generate(
        self,
        who: Principal,
        credential_id: str,
        algorithm: str,
        holder: str = "",
        multisign: int | None = None,
        seal_agency: str = "",
        seal_users: Sequence[str] = (),
    ) -> CredentialView:
        authorize(who, Op.MANAGE_KEYS)
        return self._keys.generate(
            credential_id, algorithm, holder, multisign, seal_agency=seal_agency, seal_users=seal_users
        )

    @refusal(Action.KEY_CSR, "credential")
    def csr(self, who: Principal, credential_id: str) -> bytes:
        authorize(who, Op.MANAGE_KEYS)
        return self._keys.csr(credential_id)

    @refusal(Action.KEY_IMPORT_CERT, "credential")
    def import_certificate(self, who: Principal, credential_id: str, chain: bytes) -> CredentialView:
        authorize(who, Op.MANAGE_KEYS)
        return self._keys.import_certificate(credential_id, chain)

    @refusal(Action.KEY_ROTATE, "credential")
    def rotate(self, who: Principal, credential_id: str) -> CredentialView:
        authorize(who, Op.MANAGE_KEYS)
        return self._keys.rotate(credential_id)

    def set_enabled(self, who: Principal, credential_id: str, enabled: bool, reason: str = "") -> CredentialView:
        try:
            authorize(who, Op.MANAGE_KEYS)
            return self._keys.set_enabled(credential_id, enabled, reason)
        except REFUSALS as exc:
            self._refused(who, Action.KEY_ENABLE if enabled else Action.KEY_DISABLE, "credential", credential_id, exc)
            raise

    @refusal(Action.KEY_REVOKE, "credential")
    def revoke(self, who: Principal, credential_id: str, reason: str) -> CredentialView:
        self._authorize_on_credential(who, Op.REVOKE_CREDENTIALS, credential_id)
        return self._keys.revoke(credential_id, reason)

    @refusal(Action.KEY_DESTROY, "credential")
    def destroy(self, who: Principal, credential_id: str) -> str:
        authorize(who, Op.MANAGE_KEYS)
        # Dual control counts officers by user id; the local operator counts as one officer
        # ("local-operator", a user id enrolment refuses).
        return self._keys.destroy(credential_id, who.user_id)

    @refusal(Action.KEY_SEAL_USERS, "credential")
    def set_seal_users(self, who: Principal, credential_id: str, users: Sequence[str]) -> CredentialView:
        authorize(who, Op.MANAGE_KEYS)
        self._keys.set_seal_users(credential_id, users)
        return self._keys.get(credential_id)

    @refusal(Action.ADMIN_SEARCH, "credential")
    def history(self, who: Principal, credential_id: str) -> list[KeyVersionView]:
        self._authorize_on_credential(who, Op.SEARCH_CREDENTIALS, credential_id)
        return self._keys.history(credential_id)

    @refusal(Action.ADMIN_SEARCH, "agency")
    def search_credentials(
        self,
        who: Principal,
        agency: str = "",
        holder_name: str = "",
        status: str = "",
        expires_within_days: int = 0,
        limit: int = 100,
    ) -> list[CredentialView]:
        authorize(who, Op.SEARCH_CREDENTIALS)
        agency = scope_agency(who, agency)
        horizon = self._clock.now() + expires_within_days * 86400 if expires_within_days else 0.0
        with self._store.read() as t:
            return t.search_credentials(
                agency=agency,
                name_folded=fold(holder_name),
                status=status,
                expires_before=horizon,
                limit=max(1, min(limit, 1000)),
            )

    @refusal(Action.ADMIN_SEARCH, "agency")
    def expiring(self, who: Principal, days: int, agency: str = "") -> list[CredentialView]:
        authorize(who, Op.SEARCH_CREDENTIALS)
        return self._keys.expiring(days, scope_agency(who, agency))
