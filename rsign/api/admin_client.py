"""AdminService over gRPC with the same method names as ``rsign.admin.service.AdminService``, so
the CLI drives a running server or a local state directory with one code path. Results are the
protobuf messages, whose field names match the domain views'.

Each method takes the caller (``who``) like AdminService's, and ignores it: the server knows the
caller from the session this client logged in with, and its policy decides."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from rsign.api.client import RsignClient
from rsign.domain.principal import CredentialStatus, Principal, Role, Scope
from rsign.v1 import rsign_pb2 as pb


@dataclass(frozen=True)
class RemoteEnrolment:
    user_id: str
    otpauth_uri: str


@dataclass(frozen=True)
class RemoteMove:
    user: Any
    revoked: list[str]


class RemoteAdmin:
    def __init__(self, client: RsignClient) -> None:
        self._c = client

    def _call(self, rpc: str, req: Any) -> Any:
        return getattr(self._c.admin, rpc)(req, metadata=self._c.md())

    def enrol(
        self,
        who: Principal,
        user_id: str,
        name: str,
        pin: str,
        agency: str,
        role: str = Role.SIGNER,
        scope: str = Scope.AGENCY,
    ) -> RemoteEnrolment:
        r = self._call(
            "EnrolUser", pb.EnrolUserRequest(user_id=user_id, name=name, pin=pin, agency=agency, role=role, scope=scope)
        )
        return RemoteEnrolment(r.user_id, r.otpauth_uri)

    def suspend(self, who: Principal, user_id: str, reason: str) -> Any:
        return self._call("SuspendUser", pb.UserActionRequest(user_id=user_id, reason=reason))

    def reactivate(self, who: Principal, user_id: str) -> Any:
        return self._call("ReactivateUser", pb.UserActionRequest(user_id=user_id))

    def unlock(self, who: Principal, user_id: str) -> Any:
        return self._call("UnlockUser", pb.UserActionRequest(user_id=user_id))

    def reset_totp(self, who: Principal, user_id: str) -> RemoteEnrolment:
        r = self._call("ResetTotp", pb.UserActionRequest(user_id=user_id))
        return RemoteEnrolment(r.user_id, r.otpauth_uri)

    def move(self, who: Principal, user_id: str, agency: str) -> RemoteMove:
        r = self._call("MoveUser", pb.MoveUserRequest(user_id=user_id, new_agency=agency))
        return RemoteMove(r.user, list(r.revoked_credentials))

    def retire(self, who: Principal, user_id: str) -> RemoteMove:
        r = self._call("RetireUser", pb.UserActionRequest(user_id=user_id))
        return RemoteMove(r.user, list(r.revoked_credentials))

    def search_users(self, who: Principal, agency: str = "", name: str = "", status: str = "", limit: int = 100) -> Any:
        req = pb.SearchUsersRequest(agency=agency, name=name, status=status, limit=limit)
        return list(self._call("SearchUsers", req).users)

    def generate(
        self,
        who: Principal,
        credential_id: str,
        algorithm: str,
        holder: str = "",
        multisign: int | None = None,
        seal_agency: str = "",
        seal_users: Sequence[str] = (),
    ) -> Any:
        return self._call(
            "GenerateKey",
            pb.GenerateKeyRequest(
                credential_id=credential_id,
                algorithm=algorithm,
                holder_user_id=holder,
                multisign=multisign or 0,
                seal_agency=seal_agency,
                seal_user_ids=list(seal_users),
            ),
        )

    def csr(self, who: Principal, credential_id: str) -> bytes:
        return str(self._call("CreateCsr", pb.CredentialRequest(credential_id=credential_id)).pem).encode("ascii")

    def import_certificate(self, who: Principal, credential_id: str, chain: bytes) -> Any:
        req = pb.ImportCertificateRequest(credential_id=credential_id, certificate_chain=chain)
        return self._call("ImportCertificate", req)

    def rotate(self, who: Principal, credential_id: str) -> Any:
        return self._call("RotateKey", pb.CredentialRequest(credential_id=credential_id))

    def set_enabled(self, who: Principal, credential_id: str, enabled: bool, reason: str = "") -> Any:
        rpc = "EnableCredential" if enabled else "DisableCredential"
        return self._call(rpc, pb.CredentialRequest(credential_id=credential_id, reason=reason))

    def revoke(self, who: Principal, credential_id: str, reason: str) -> Any:
        return self._call("RevokeCredential", pb.RevokeCredentialRequest(credential_id=credential_id, reason=reason))

    def destroy(self, who: Principal, credential_id: str) -> str:
        return str(self._call("DestroyCredential", pb.CredentialRequest(credential_id=credential_id)).state)

    def history(self, who: Principal, credential_id: str) -> list[Any]:
        versions = self._call("GetKeyHistory", pb.CredentialRequest(credential_id=credential_id)).versions
        return [_Version(v.version, v.status, v.certificates[0]) for v in versions]

    def search_credentials(
        self,
        who: Principal,
        agency: str = "",
        holder_name: str = "",
        status: str = "",
        expires_within_days: int = 0,
        limit: int = 100,
    ) -> list[Any]:
        req = pb.SearchCredentialsRequest(
            agency=agency, holder_name=holder_name, status=status, expires_within_days=expires_within_days, limit=limit
        )
        return list(self._call("SearchCredentials", req).credentials)

    def expiring(self, who: Principal, days: int, agency: str = "") -> list[Any]:
        found = self.search_credentials(
            who, agency=agency, status=CredentialStatus.ACTIVE, expires_within_days=days, limit=1000
        )
        return sorted(found, key=lambda c: c.not_after)


@dataclass(frozen=True)
class _Version:
    version: int
    status: str
    certificate: bytes
