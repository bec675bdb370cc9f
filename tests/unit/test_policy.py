"""rsign.domain.policy, table-driven: every role (and the local operator) x every operation x own,
other or no agency; enrolment limits; credentials and seals; audit scopes.

The expectations are written out here, not derived from the policy's own tables, so that a change
to a rule fails a test."""

from __future__ import annotations

from dataclasses import replace

import pytest

from rsign.domain.errors import PermissionDenied
from rsign.domain.events import EventFilter
from rsign.domain.policy import (
    Op,
    audit_filter,
    audit_scope,
    authorize,
    check_enrol,
    check_use_credential,
    scope_agency,
)
from rsign.domain.principal import (
    LOCAL_OPERATOR,
    CredentialKind,
    CredentialStatus,
    Principal,
    Role,
    Scope,
)
from rsign.domain.records import CredentialView

OWN, OTHER = "Sở Y tế", "Sở Tài chính"


def who(role: Role, scope: Scope = Scope.AGENCY, user_id: str = "") -> Principal:
    return Principal(user_id or f"{role}.1", 7, role, OWN, scope)


CALLERS: dict[str, Principal] = {
    "signer": who(Role.SIGNER),
    "agency_admin": who(Role.AGENCY_ADMIN),
    "key_officer": who(Role.KEY_OFFICER),
    "auditor": who(Role.AUDITOR),
    "province_auditor": who(Role.AUDITOR, Scope.PROVINCE),
    "admin": who(Role.ADMIN),
    "local_operator": LOCAL_OPERATOR,
}

# Which operations each caller may perform at all (on their own agency, or on nothing agency-specific).
MAY: dict[str, set[Op]] = {
    "signer": set(),
    "agency_admin": {Op.MANAGE_USERS, Op.REVOKE_CREDENTIALS, Op.SEARCH_USERS, Op.SEARCH_CREDENTIALS},
    "key_officer": {Op.MANAGE_KEYS, Op.REVOKE_CREDENTIALS, Op.SEARCH_USERS, Op.SEARCH_CREDENTIALS},
    "auditor": {Op.READ_AUDIT},
    "province_auditor": {Op.READ_AUDIT},
    "admin": set(Op),
    "local_operator": set(Op),
}
# Callers whose reach stops at their own agency.
AGENCY_BOUND = {"agency_admin"}


@pytest.mark.parametrize("target", [OWN, OTHER, None], ids=["own-agency", "other-agency", "no-agency"])
@pytest.mark.parametrize("op", list(Op), ids=[op.name for op in Op])
@pytest.mark.parametrize("caller", list(CALLERS))
def test_authorize(caller: str, op: Op, target: str | None) -> None:
    allowed = op in MAY[caller] and not (caller in AGENCY_BOUND and target == OTHER)
    if allowed:
        authorize(CALLERS[caller], op, target)
    else:
        with pytest.raises(PermissionDenied) as e:
            authorize(CALLERS[caller], op, target)
        # The refusal says why: the role, or the agency it does not reach.
        why = OTHER if op in MAY[caller] else CALLERS[caller].role
        assert why in e.value.message


@pytest.mark.parametrize(
    ("caller", "requested", "expected"),
    [
        ("agency_admin", "", OWN),  # an agency admin's search is always their own agency
        ("agency_admin", OWN, OWN),
        ("agency_admin", OTHER, None),  # refused, not silently narrowed
        ("key_officer", "", ""),
        ("key_officer", OTHER, OTHER),
        ("admin", "", ""),
        ("admin", OTHER, OTHER),
        ("local_operator", OTHER, OTHER),
    ],
)
def test_scope_agency(caller: str, requested: str, expected: str | None) -> None:
    if expected is None:
        with pytest.raises(PermissionDenied):
            scope_agency(CALLERS[caller], requested)
    else:
        assert scope_agency(CALLERS[caller], requested) == expected


ENROLMENT_CASES = [(role, scope, agency) for role in Role for scope in Scope for agency in (OWN, OTHER)]


@pytest.mark.parametrize(("role", "scope", "agency"), ENROLMENT_CASES)
@pytest.mark.parametrize("caller", list(CALLERS))
def test_check_enrol(caller: str, role: Role, scope: Scope, agency: str) -> None:
    if caller in ("admin", "local_operator"):
        allowed = True
    elif caller == "agency_admin":
        # Their own agency only, and no one with more reach than themselves.
        allowed = agency == OWN and role in (Role.SIGNER, Role.AUDITOR) and scope == Scope.AGENCY
    else:
        allowed = False
    if allowed:
        check_enrol(CALLERS[caller], agency, role, scope)
    else:
        with pytest.raises(PermissionDenied):
            check_enrol(CALLERS[caller], agency, role, scope)


def cred(kind: CredentialKind, holder: str = "") -> CredentialView:
    return CredentialView("C-1", holder, OWN, "ec-p256", CredentialStatus.ACTIVE, 1, 10, b"\x01", b"", (), kind)


PERSON = cred(CredentialKind.PERSON, holder="holder.1")
SEAL = cred(CredentialKind.SEAL)
SEAL_USERS = ["clerk.1", "clerk.2"]


CREDENTIAL_CASES: list[tuple[str, Principal, CredentialView, list[str], bool]] = [
    ("holder", who(Role.SIGNER, user_id="holder.1"), PERSON, [], True),
    ("another signer", who(Role.SIGNER, user_id="other.1"), PERSON, [], False),
    # No role reaches another person's credential, however high.
    ("admin, not the holder", who(Role.ADMIN, user_id="admin.1"), PERSON, [], False),
    ("key officer, not the holder", who(Role.KEY_OFFICER, user_id="ko.1"), PERSON, [], False),
    ("holder listed as a seal user is irrelevant", who(Role.SIGNER, user_id="other.1"), PERSON, ["other.1"], False),
    ("local operator", LOCAL_OPERATOR, replace(PERSON, holder_user_id=LOCAL_OPERATOR.user_id), [], False),
    ("authorized seal user", who(Role.SIGNER, user_id="clerk.2"), SEAL, SEAL_USERS, True),
    ("seal user with another role", who(Role.AGENCY_ADMIN, user_id="clerk.1"), SEAL, SEAL_USERS, True),
    ("not a seal user", who(Role.SIGNER, user_id="clerk.3"), SEAL, SEAL_USERS, False),
    ("admin, not a seal user", who(Role.ADMIN, user_id="admin.1"), SEAL, SEAL_USERS, False),
    ("seal without users", who(Role.SIGNER, user_id="clerk.1"), SEAL, [], False),
    ("local operator on a seal", LOCAL_OPERATOR, SEAL, [LOCAL_OPERATOR.user_id], False),
    # A seal has no holder: an empty user id must not match its empty holder field.
    ("empty user id on a seal", Principal("", 1, Role.SIGNER, OWN), SEAL, [], False),
    (
        "empty user id, holderless record",
        Principal("", 1, Role.SIGNER, OWN),
        cred(CredentialKind.PERSON),
        [],
        False,
    ),
]


@pytest.mark.parametrize(
    ("case", "principal", "credential", "seal_users", "allowed"), CREDENTIAL_CASES, ids=[c[0] for c in CREDENTIAL_CASES]
)
def test_check_use_credential(
    case: str, principal: Principal, credential: CredentialView, seal_users: list[str], allowed: bool
) -> None:
    if allowed:
        check_use_credential(principal, credential, seal_users)
    else:
        with pytest.raises(PermissionDenied):
            check_use_credential(principal, credential, seal_users)


@pytest.mark.parametrize(
    ("caller", "asked", "expected"),
    [
        # An agency-scope auditor: their own agency's records, whatever the filter says, and a
        # clear refusal when they ask for another agency's.
        ("auditor", "", OWN),
        ("auditor", OWN, OWN),
        ("auditor", OTHER, None),
        # Province-wide: everything, as asked.
        ("province_auditor", "", ""),
        ("province_auditor", OTHER, OTHER),
        ("admin", "", ""),
        ("admin", OTHER, OTHER),
        ("local_operator", "", ""),
        ("local_operator", OTHER, OTHER),
        # No audit role: refused, with or without an agency.
        ("signer", "", None),
        ("signer", OWN, None),
        ("agency_admin", OWN, None),
        ("key_officer", "", None),
    ],
)
def test_audit_filter(caller: str, asked: str, expected: str | None) -> None:
    flt = EventFilter(agency=asked, action="sign.hash", actor="someone")
    if expected is None:
        with pytest.raises(PermissionDenied):
            audit_filter(CALLERS[caller], flt)
        return
    got = audit_filter(CALLERS[caller], flt)
    assert got == replace(flt, agency=expected)  # only the agency is ever changed


def test_a_province_scope_gives_no_audit_access_without_the_role() -> None:
    with pytest.raises(PermissionDenied):
        audit_filter(who(Role.SIGNER, Scope.PROVINCE), EventFilter())
    with pytest.raises(PermissionDenied):
        audit_filter(who(Role.AGENCY_ADMIN, Scope.PROVINCE), EventFilter(agency=OTHER))


@pytest.mark.parametrize(
    ("caller", "scope"),
    [
        ("auditor", Scope.AGENCY),
        ("province_auditor", Scope.PROVINCE),
        ("admin", Scope.PROVINCE),
        ("local_operator", Scope.PROVINCE),
    ],
)
def test_audit_scope(caller: str, scope: Scope) -> None:
    assert audit_scope(CALLERS[caller]) == scope


def test_local_operator_is_an_explicit_province_admin() -> None:
    assert LOCAL_OPERATOR.local and LOCAL_OPERATOR.role == Role.ADMIN and LOCAL_OPERATOR.scope == Scope.PROVINCE
    # A session principal is never local, even an admin's.
    assert not who(Role.ADMIN).local
