"""Who may do what, and where: every permission decision of rsign, in one place.

Pure: each function decides from the principal and the plain records its caller passes in (the
target's agency, a credential, a seal's authorized users) and does no I/O. The services fetch what
a decision needs, ask here, and act; a refusal is always ``PermissionDenied``.

| role          | may                                                                        | where             |
|---------------|----------------------------------------------------------------------------|-------------------|
| admin         | everything administrative; the audit API                                   | province          |
| key_officer   | key and certificate lifecycle, seals, expiry report, search users and      | province          |
|               | credentials                                                                |                   |
| agency_admin  | enrol (signers and agency auditors), suspend, unlock, reset TOTP, move,    | their own agency  |
|               | retire users; revoke credentials; search users and credentials             |                   |
| auditor       | the audit API                                                              | agency / province |
| signer        | sign with their own credentials and the seals they are authorized for      |                   |

Nobody signs with another person's credential, whatever their role: signing needs the holder's (or
an authorized seal user's) own session and fresh one-time code.

``LOCAL_OPERATOR`` (a CLI command run on the state directory) is an admin of the whole province:
whoever runs it already holds the HSM PIN and the database. It has no session, so it signs nothing.
"""

from __future__ import annotations

import enum
from collections.abc import Collection
from dataclasses import replace

from rsign.domain.errors import PermissionDenied
from rsign.domain.events import EventFilter
from rsign.domain.principal import CredentialKind, Principal, Role, Scope
from rsign.domain.records import CredentialView


class Op(enum.Enum):
    MANAGE_USERS = "manage users"
    MANAGE_KEYS = "manage keys and certificates"
    REVOKE_CREDENTIALS = "revoke credentials"
    SEARCH_USERS = "search users"
    SEARCH_CREDENTIALS = "search credentials"
    READ_AUDIT = "read the audit log"


ALLOWED: dict[Op, frozenset[Role]] = {
    Op.MANAGE_USERS: frozenset({Role.ADMIN, Role.AGENCY_ADMIN}),
    Op.MANAGE_KEYS: frozenset({Role.ADMIN, Role.KEY_OFFICER}),
    # Decree 68: a credential is revoked at its agency's request, so agency admins may too.
    Op.REVOKE_CREDENTIALS: frozenset({Role.ADMIN, Role.KEY_OFFICER, Role.AGENCY_ADMIN}),
    Op.SEARCH_USERS: frozenset({Role.ADMIN, Role.AGENCY_ADMIN, Role.KEY_OFFICER}),
    Op.SEARCH_CREDENTIALS: frozenset({Role.ADMIN, Role.AGENCY_ADMIN, Role.KEY_OFFICER}),
    Op.READ_AUDIT: frozenset({Role.ADMIN, Role.AUDITOR}),
}

# Roles whose administrative reach stops at their own agency.
AGENCY_BOUND = frozenset({Role.AGENCY_ADMIN})

# What an agency admin may create: no one with more reach than themselves.
AGENCY_ADMIN_ENROLS = frozenset({Role.SIGNER, Role.AUDITOR})


def authorize(who: Principal, op: Op, agency: str | None = None) -> None:
    """Raise ``PermissionDenied`` unless ``who`` may perform ``op`` on something of ``agency``
    (``None``: on nothing agency-specific, e.g. a search that ``scope_agency`` then narrows)."""
    if who.role not in ALLOWED[op]:
        raise PermissionDenied(f"your role ({who.role}) may not {op.value}")
    if who.role in AGENCY_BOUND and agency is not None and agency != who.agency:
        raise PermissionDenied(f"you administer {who.agency!r}, not {agency!r}")


def scope_agency(who: Principal, requested: str) -> str:
    """The agency a search is limited to: an agency admin's own, whatever they asked for; others
    get what they asked for ("" = every agency)."""
    if who.role in AGENCY_BOUND:
        if requested and requested != who.agency:
            raise PermissionDenied(f"you administer {who.agency!r}, not {requested!r}")
        return who.agency
    return requested


def check_enrol(who: Principal, agency: str, role: Role, scope: Scope) -> None:
    """May ``who`` create a user of ``role`` and ``scope`` in ``agency``?"""
    authorize(who, Op.MANAGE_USERS, agency)
    if who.role in AGENCY_BOUND:
        if role not in AGENCY_ADMIN_ENROLS:
            raise PermissionDenied("an agency admin enrols signers and auditors; ask an admin for other roles")
        if scope == Scope.PROVINCE:
            raise PermissionDenied("an agency admin cannot create a province-wide auditor")


def check_use_credential(who: Principal, cred: CredentialView, seal_users: Collection[str] = ()) -> None:
    """May ``who`` see and activate ``cred``? Its holder, for a personal credential; one of the
    seal's authorized users (``seal_users``, from the store), for an organisation seal. Each
    activation still needs that user's own fresh one-time code, and the audit names them."""
    if who.local:
        raise PermissionDenied("the local operator signs nothing; a signer signs in their own session")
    if cred.kind == CredentialKind.SEAL:
        allowed = who.user_id in seal_users
    else:
        allowed = bool(cred.holder_user_id) and cred.holder_user_id == who.user_id
    if not allowed:
        raise PermissionDenied(f"credential {cred.credential_id} is not yours")


def audit_filter(who: Principal, flt: EventFilter) -> EventFilter:
    """``flt`` narrowed to what ``who`` may read of the audit log: an agency-scope auditor sees only
    their agency's records (asking for another agency is refused, not silently emptied); a
    province-scope auditor and an admin see everything."""
    authorize(who, Op.READ_AUDIT)
    if audit_scope(who) == Scope.PROVINCE:
        return flt
    if flt.agency and flt.agency != who.agency:
        raise PermissionDenied(f"your audit scope is {who.agency!r}; you cannot see {flt.agency!r}")
    return replace(flt, agency=who.agency)


def audit_scope(who: Principal) -> Scope:
    """How far ``who`` reads the audit log (assuming ``audit_filter`` let them read it at all)."""
    return Scope.PROVINCE if who.role == Role.ADMIN or who.scope == Scope.PROVINCE else Scope.AGENCY
