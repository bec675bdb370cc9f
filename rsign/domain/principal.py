"""Who is calling: the principal, and the closed sets of roles, scopes and statuses.

Each set is a ``StrEnum`` so that the database and the wire keep their plain strings while the code
cannot misspell one.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from rsign.domain.errors import InvalidRequest


class Role(enum.StrEnum):
    SIGNER = "signer"
    AGENCY_ADMIN = "agency_admin"
    KEY_OFFICER = "key_officer"
    AUDITOR = "auditor"
    ADMIN = "admin"


class Scope(enum.StrEnum):
    """How far an auditor sees: their own agency, or the whole province."""

    AGENCY = "agency"
    PROVINCE = "province"


class UserStatus(enum.StrEnum):
    ACTIVE = "active"
    SUSPENDED = "suspended"
    RETIRED = "retired"


class CredentialStatus(enum.StrEnum):
    ACTIVE = "active"
    DISABLED = "disabled"
    REVOKED = "revoked"
    DESTROYED = "destroyed"


class KeyVersionStatus(enum.StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"  # verifies older signatures, never signs again
    DESTROYED = "destroyed"


class CredentialKind(enum.StrEnum):
    PERSON = "person"
    SEAL = "seal"  # an organisation seal, owned by an agency, activated by its authorized users


def parse_role(text: str) -> Role:
    """A role named by a caller (API request, CLI option), or a clear refusal."""
    try:
        return Role(text)
    except ValueError:
        raise InvalidRequest(f"unknown role {text!r}; expected one of {', '.join(sorted(Role))}") from None


def parse_scope(text: str) -> Scope:
    try:
        return Scope(text)
    except ValueError:
        raise InvalidRequest(f"unknown scope {text!r}; expected one of {', '.join(sorted(Scope))}") from None


# One rule for user ids wherever a user is enrolled (CLI, AdminService, provisioning files): they
# appear in audit records, certificate subjects and otpauth URIs, so no spaces, no capitals.
_USER_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")


def user_id_problem(user_id: str) -> str | None:
    """Why ``user_id`` is not a valid user id (None: it is)."""
    if _USER_ID.fullmatch(user_id):
        return None
    return (
        f"user id {user_id!r} is not lower-case letters, digits, '.', '_' or '-'"
        " (starting with a letter or digit, at most 128 characters)"
    )


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. ``session_id`` 0 with ``local`` set is the local operator."""

    user_id: str
    session_id: int
    role: Role
    agency: str
    scope: Scope = Scope.AGENCY  # auditors: agency or province
    local: bool = False


# A CLI command run directly on a state directory: whoever runs it already holds the HSM PIN and
# the database, so the policy treats them as the province administrator. Explicit, so that no
# code path can reach "admin" by forgetting to pass a principal.
LOCAL_OPERATOR = Principal(
    user_id="local-operator", session_id=0, role=Role.ADMIN, agency="", scope=Scope.PROVINCE, local=True
)
