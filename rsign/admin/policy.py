"""Who may do what, and where.

| role          | may                                                                        | where             |
|---------------|----------------------------------------------------------------------------|-------------------|
| admin         | everything                                                                 | province          |
| key_officer   | key and certificate lifecycle, seals, expiry report, search credentials    | province          |
| agency_admin  | enrol, suspend, unlock, reset TOTP, move, retire users; search users and   | their own agency  |
|               | credentials                                                                |                   |
| auditor       | the audit API (rsign.audit.service)                                        | agency / province |
| signer        | sign with their own credentials (and seals they are authorized for)        |                   |

``None`` as the principal is the local operator: a CLI command run on the state directory, who
already holds the HSM PIN and the database, and so is treated as admin.
"""

from __future__ import annotations

import enum

from rsign.domain.errors import PermissionDenied
from rsign.domain.principal import Principal


class Op(enum.Enum):
    USERS = "manage users"
    KEYS = "manage keys and certificates"
    SEARCH_USERS = "search users"
    SEARCH_CREDENTIALS = "search credentials"


_ALLOWED: dict[Op, frozenset[str]] = {
    Op.USERS: frozenset({"admin", "agency_admin"}),
    Op.KEYS: frozenset({"admin", "key_officer"}),
    Op.SEARCH_USERS: frozenset({"admin", "agency_admin", "key_officer"}),
    Op.SEARCH_CREDENTIALS: frozenset({"admin", "agency_admin", "key_officer"}),
}


def authorize(who: Principal | None, op: Op, agency: str | None = None) -> None:
    """Raise ``PermissionDenied`` unless ``who`` may perform ``op`` on something of ``agency``."""
    if who is None:
        return
    if who.role not in _ALLOWED[op]:
        raise PermissionDenied(f"your role ({who.role}) may not {op.value}")
    if who.role == "agency_admin" and agency is not None and agency != who.agency:
        raise PermissionDenied(f"you administer {who.agency!r}, not {agency!r}")


def scope_agency(who: Principal | None, requested: str) -> str:
    """The agency a search is limited to: an agency admin's own, whatever they asked for."""
    if who is not None and who.role == "agency_admin":
        if requested and requested != who.agency:
            raise PermissionDenied(f"you administer {who.agency!r}, not {requested!r}")
        return who.agency
    return requested
