"""The administration operations as one typed interface, ``AdminOps``.

Two implementations: ``rsign.admin.service.AdminService`` (on a state directory, and behind the
gRPC AdminService) and ``rsign.api.admin_client.RemoteAdmin`` (through a server's AdminService).
The CLI is written against ``AdminOps`` only, so mypy checks both implementations against this one
list of methods, and both answer with the same domain records.

``who`` is the acting principal. ``AdminService`` authorizes it (``rsign.domain.policy``); a remote
implementation sends nothing of it: the server acts for the user its session was opened by.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from rsign.domain.principal import Principal
from rsign.domain.records import CredentialView, Enrolment, KeyVersionView, UserView


@dataclass(frozen=True)
class MoveResult:
    """A user moved to another agency or retired, and the credentials revoked with it."""

    user: UserView
    revoked: list[str]


class AdminOps(Protocol):
    # -- users -------------------------------------------------------------------------------

    def enrol(
        self,
        who: Principal,
        user_id: str,
        name: str,
        pin: str,
        agency: str,
        role: str = ...,
        scope: str = ...,
    ) -> Enrolment: ...

    def unlock(self, who: Principal, user_id: str) -> UserView: ...

    def suspend(self, who: Principal, user_id: str, reason: str) -> UserView: ...

    def reactivate(self, who: Principal, user_id: str) -> UserView: ...

    def reset_totp(self, who: Principal, user_id: str) -> Enrolment: ...

    def move(self, who: Principal, user_id: str, new_agency: str) -> MoveResult: ...

    def retire(self, who: Principal, user_id: str) -> MoveResult: ...

    def search_users(
        self, who: Principal, agency: str = ..., name: str = ..., status: str = ..., limit: int = ...
    ) -> list[UserView]: ...

    # -- keys and certificates ---------------------------------------------------------------

    def generate(
        self,
        who: Principal,
        credential_id: str,
        algorithm: str,
        holder: str = ...,
        multisign: int | None = ...,
        seal_agency: str = ...,
        seal_users: Sequence[str] = ...,
    ) -> CredentialView: ...

    def csr(self, who: Principal, credential_id: str) -> bytes: ...

    def import_certificate(self, who: Principal, credential_id: str, chain: bytes) -> CredentialView: ...

    def rotate(self, who: Principal, credential_id: str) -> CredentialView: ...

    def set_enabled(self, who: Principal, credential_id: str, enabled: bool, reason: str = ...) -> CredentialView: ...

    def revoke(self, who: Principal, credential_id: str, reason: str) -> CredentialView: ...

    def destroy(self, who: Principal, credential_id: str) -> str: ...

    def set_seal_users(self, who: Principal, credential_id: str, users: Sequence[str]) -> CredentialView: ...

    def history(self, who: Principal, credential_id: str) -> list[KeyVersionView]: ...

    def search_credentials(
        self,
        who: Principal,
        agency: str = ...,
        holder_name: str = ...,
        status: str = ...,
        expires_within_days: int = ...,
        limit: int = ...,
    ) -> list[CredentialView]: ...

    def expiring(self, who: Principal, days: int, agency: str = ...) -> list[CredentialView]: ...
