"""``AdminOps`` (``rsign.admin.ports``) through a running server's AdminService, so that the CLI drives
a server or a local state directory with one code path.

The answers are converted here, at the edge, into the domain records the local ``AdminService``
returns. ``who`` is taken, as the protocol requires, and not sent: the server acts for the user who
opened this client's session, and its policy decides (a client cannot choose whom it acts as).
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import TypeVar

import pyotp

from rsign.admin.ports import MoveResult
from rsign.client.raw import RsignClient
from rsign.domain.errors import RsignError
from rsign.domain.principal import (
    CredentialKind,
    CredentialStatus,
    KeyVersionStatus,
    Principal,
    Role,
    Scope,
    UserStatus,
)
from rsign.domain.records import CredentialView, Enrolment, KeyVersionView, UserView
from rsign.v1 import rsign_pb2 as pb

E = TypeVar("E", bound=enum.StrEnum)


def _known(kind: type[E], value: str) -> E:
    try:
        return kind(value)
    except ValueError:
        raise RsignError(
            f"the server answered with a {kind.__name__} this client does not know ({value!r}): upgrade rsign"
        ) from None


def _enrolment(r: pb.EnrolUserResponse) -> Enrolment:
    # The seed travels only inside the otpauth:// URI (shown once, for the authenticator app).
    try:
        seed = pyotp.parse_uri(r.otpauth_uri).byte_secret()
    except ValueError:
        raise RsignError("the server answered with an authenticator URI this client cannot read") from None
    return Enrolment(r.user_id, seed, r.otpauth_uri)


def _user(u: pb.User) -> UserView:
    return UserView(
        user_id=u.user_id,
        name=u.name,
        agency=u.agency,
        role=_known(Role, u.role),
        status=_known(UserStatus, u.status),
        locked=u.locked,
        scope=_known(Scope, u.scope or Scope.AGENCY),
    )


def _move(r: pb.MoveUserResponse) -> MoveResult:
    return MoveResult(_user(r.user), list(r.revoked_credentials))


def _credential(c: pb.Credential) -> CredentialView:
    certs = list(c.certificates)  # leaf first, then its issuers; none before a certificate is imported
    return CredentialView(
        credential_id=c.credential_id,
        holder_user_id=c.holder_user_id,
        agency=c.agency,
        key_algorithm=c.key_algorithm,
        status=_known(CredentialStatus, c.status),
        key_version=c.key_version,
        multisign=c.multisign,
        # The API does not disclose HSM object ids: a remote record's CKA_ID is empty (it would name
        # nothing on this side of the wire; the server's audit log records it).
        cka_id=b"",
        certificate=certs[0] if certs else b"",
        chain=tuple(certs[1:]),
        kind=_known(CredentialKind, c.kind or CredentialKind.PERSON),
        status_reason=c.status_reason,
        not_after=float(c.not_after),
    )


class RemoteAdmin:
    def __init__(self, client: RsignClient) -> None:
        self._c = client
        self._admin = client.admin

    def _md(self) -> list[tuple[str, str]]:
        return self._c.md()

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
        req = pb.EnrolUserRequest(user_id=user_id, name=name, pin=pin, agency=agency, role=role, scope=scope)
        r: pb.EnrolUserResponse = self._admin.EnrolUser(req, metadata=self._md())
        return _enrolment(r)

    def unlock(self, who: Principal, user_id: str) -> UserView:
        r: pb.User = self._admin.UnlockUser(pb.UserActionRequest(user_id=user_id), metadata=self._md())
        return _user(r)

    def suspend(self, who: Principal, user_id: str, reason: str) -> UserView:
        req = pb.UserActionRequest(user_id=user_id, reason=reason)
        r: pb.User = self._admin.SuspendUser(req, metadata=self._md())
        return _user(r)

    def reactivate(self, who: Principal, user_id: str) -> UserView:
        r: pb.User = self._admin.ReactivateUser(pb.UserActionRequest(user_id=user_id), metadata=self._md())
        return _user(r)

    def reset_totp(self, who: Principal, user_id: str) -> Enrolment:
        r: pb.EnrolUserResponse = self._admin.ResetTotp(pb.UserActionRequest(user_id=user_id), metadata=self._md())
        return _enrolment(r)

    def move(self, who: Principal, user_id: str, new_agency: str) -> MoveResult:
        req = pb.MoveUserRequest(user_id=user_id, new_agency=new_agency)
        r: pb.MoveUserResponse = self._admin.MoveUser(req, metadata=self._md())
        return _move(r)

    def retire(self, who: Principal, user_id: str) -> MoveResult:
        r: pb.MoveUserResponse = self._admin.RetireUser(pb.UserActionRequest(user_id=user_id), metadata=self._md())
        return _move(r)

    def search_users(
        self, who: Principal, agency: str = "", name: str = "", status: str = "", limit: int = 100
    ) -> list[UserView]:
        req = pb.SearchUsersRequest(agency=agency, name=name, status=status, limit=limit)
        r: pb.SearchUsersResponse = self._admin.SearchUsers(req, metadata=self._md())
        return [_user(u) for u in r.users]

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
        req = pb.GenerateKeyRequest(
            credential_id=credential_id,
            algorithm=algorithm,
            holder_user_id=holder,
            multisign=multisign or 0,
            seal_agency=seal_agency,
            seal_user_ids=list(seal_users),
        )
        r: pb.Credential = self._admin.GenerateKey(req, metadata=self._md())
        return _credential(r)

    def csr(self, who: Principal, credential_id: str) -> bytes:
        r: pb.CsrResponse = self._admin.CreateCsr(
            pb.CredentialRequest(credential_id=credential_id), metadata=self._md()
        )
        return r.pem.encode("ascii")

    def import_certificate(self, who: Principal, credential_id: str, chain: bytes) -> CredentialView:
        req = pb.ImportCertificateRequest(credential_id=credential_id, certificate_chain=chain)
        r: pb.Credential = self._admin.ImportCertificate(req, metadata=self._md())
        return _credential(r)

    def rotate(self, who: Principal, credential_id: str) -> CredentialView:
        r: pb.Credential = self._admin.RotateKey(pb.CredentialRequest(credential_id=credential_id), metadata=self._md())
        return _credential(r)

    def set_enabled(self, who: Principal, credential_id: str, enabled: bool, reason: str = "") -> CredentialView:
        rpc = self._admin.EnableCredential if enabled else self._admin.DisableCredential
        r: pb.Credential = rpc(pb.CredentialRequest(credential_id=credential_id, reason=reason), metadata=self._md())
        return _credential(r)

    def revoke(self, who: Principal, credential_id: str, reason: str) -> CredentialView:
        req = pb.RevokeCredentialRequest(credential_id=credential_id, reason=reason)
        r: pb.Credential = self._admin.RevokeCredential(req, metadata=self._md())
        return _credential(r)

    def destroy(self, who: Principal, credential_id: str) -> str:
        req = pb.CredentialRequest(credential_id=credential_id)
        r: pb.DestroyCredentialResponse = self._admin.DestroyCredential(req, metadata=self._md())
        return r.state

    def set_seal_users(self, who: Principal, credential_id: str, users: Sequence[str]) -> CredentialView:
        req = pb.SetSealUsersRequest(credential_id=credential_id, user_ids=list(users))
        r: pb.Credential = self._admin.SetSealUsers(req, metadata=self._md())
        return _credential(r)

    def history(self, who: Principal, credential_id: str) -> list[KeyVersionView]:
        req = pb.CredentialRequest(credential_id=credential_id)
        r: pb.KeyHistoryResponse = self._admin.GetKeyHistory(req, metadata=self._md())
        return [
            KeyVersionView(
                credential_id=credential_id,
                version=v.version,
                cka_id=b"",  # not disclosed by the API (see _credential)
                certificate=v.certificates[0] if v.certificates else b"",  # none imported yet (real HSM)
                chain=tuple(v.certificates[1:]),
                status=_known(KeyVersionStatus, v.status),
            )
            for v in r.versions
        ]

    def search_credentials(
        self,
        who: Principal,
        agency: str = "",
        holder_name: str = "",
        status: str = "",
        expires_within_days: int = 0,
        limit: int = 100,
    ) -> list[CredentialView]:
        req = pb.SearchCredentialsRequest(
            agency=agency, holder_name=holder_name, status=status, expires_within_days=expires_within_days, limit=limit
        )
        r: pb.SearchCredentialsResponse = self._admin.SearchCredentials(req, metadata=self._md())
        return [_credential(c) for c in r.credentials]

    def expiring(self, who: Principal, days: int, agency: str = "") -> list[CredentialView]:
        found = self.search_credentials(
            who, agency=agency, status=CredentialStatus.ACTIVE, expires_within_days=days, limit=1000
        )
        return sorted(found, key=lambda c: c.not_after)
