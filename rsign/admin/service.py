"""Every administration operation: authorized by ``rsign.domain.policy`` (role and agency), audited
by the domain service it calls. Used by the gRPC AdminService (the session's principal) and by the
CLI on a local state directory (``LOCAL_OPERATOR``)."""

from __future__ import annotations

from collections.abc import Sequence

from rsign.admin.ports import MoveResult
from rsign.audit.journal import AuditedStore
from rsign.auth import totp
from rsign.auth.service import AuthService, seed_aad
from rsign.domain.clock import Clock
from rsign.domain.errors import FailedPrecondition, InvalidRequest, NotFound
from rsign.domain.events import Action, event
from rsign.domain.policy import Op, authorize, check_enrol, scope_agency
from rsign.domain.principal import CredentialStatus, Principal, Role, Scope, UserStatus, parse_role, parse_scope
from rsign.domain.records import CredentialView, Enrolment, KeyVersionView, UserView, fold
from rsign.hsm.ports import Hsm
from rsign.keys.service import KeyService


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

    # -- users -------------------------------------------------------------------------------

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

    def unlock(self, who: Principal, user_id: str) -> UserView:
        self._managed_user(who, user_id)
        self._auth.unlock(user_id)
        return self._user(user_id)

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

    def reactivate(self, who: Principal, user_id: str) -> UserView:
        user = self._managed_user(who, user_id)
        if user.status != UserStatus.SUSPENDED:
            raise FailedPrecondition(f"user {user_id} is {user.status}; only a suspended user is reactivated")
        with self._store.tx() as t:
            t.set_user_status(user_id, UserStatus.ACTIVE)
            t.append(event(Action.USER_REACTIVATE, agency=user.agency, details={"user_id": user_id}))
        return self._user(user_id)

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

    def search_users(
        self, who: Principal, agency: str = "", name: str = "", status: str = "", limit: int = 100
    ) -> list[UserView]:
        authorize(who, Op.SEARCH_USERS)
        agency = scope_agency(who, agency)
        with self._store.read() as t:
            return t.search_users(agency=agency, name_folded=fold(name), status=status, limit=max(1, min(limit, 1000)))

    # -- keys and certificates ---------------------------------------------------------------

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

    def csr(self, who: Principal, credential_id: str) -> bytes:
        authorize(who, Op.MANAGE_KEYS)
        return self._keys.csr(credential_id)

    def import_certificate(self, who: Principal, credential_id: str, chain: bytes) -> CredentialView:
        authorize(who, Op.MANAGE_KEYS)
        return self._keys.import_certificate(credential_id, chain)

    def rotate(self, who: Principal, credential_id: str) -> CredentialView:
        authorize(who, Op.MANAGE_KEYS)
        return self._keys.rotate(credential_id)

    def set_enabled(self, who: Principal, credential_id: str, enabled: bool, reason: str = "") -> CredentialView:
        authorize(who, Op.MANAGE_KEYS)
        return self._keys.set_enabled(credential_id, enabled, reason)

    def revoke(self, who: Principal, credential_id: str, reason: str) -> CredentialView:
        self._authorize_on_credential(who, Op.REVOKE_CREDENTIALS, credential_id)
        return self._keys.revoke(credential_id, reason)

    def destroy(self, who: Principal, credential_id: str) -> str:
        authorize(who, Op.MANAGE_KEYS)
        # Dual control counts officers by user id; the local operator counts as one officer
        # ("local-operator", a user id enrolment refuses).
        return self._keys.destroy(credential_id, who.user_id)

    def set_seal_users(self, who: Principal, credential_id: str, users: Sequence[str]) -> CredentialView:
        authorize(who, Op.MANAGE_KEYS)
        self._keys.set_seal_users(credential_id, users)
        return self._keys.get(credential_id)

    def history(self, who: Principal, credential_id: str) -> list[KeyVersionView]:
        self._authorize_on_credential(who, Op.SEARCH_CREDENTIALS, credential_id)
        return self._keys.history(credential_id)

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

    def expiring(self, who: Principal, days: int, agency: str = "") -> list[CredentialView]:
        authorize(who, Op.SEARCH_CREDENTIALS)
        return self._keys.expiring(days, scope_agency(who, agency))
