"""Audit event types and the event value object."""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from operator import itemgetter
from typing import Any

from rsign.domain import context, limits


class Action(enum.StrEnum):
    LOGIN = "auth.login"
    LOCKOUT = "auth.lockout"
    UNLOCK = "auth.unlock"
    LOGOUT = "auth.logout"
    SESSION_EXPIRED = "auth.session_expired"
    # A call on a session that has ended (revoked, expired, its user suspended or moved), refused.
    AUTH_REFUSE = "auth.refuse"
    USER_ENROL = "user.enrol"
    SAD_ISSUE = "sad.issue"
    SAD_CONSUME = "sad.consume"
    SAD_REFUSE = "sad.refuse"
    SIGN = "sign.hash"
    BATCH_START = "batch.start"
    BATCH_END = "batch.end"
    KEY_GENERATE = "key.generate"
    KEY_CSR = "key.csr"
    KEY_IMPORT_CERT = "key.import_certificate"
    KEY_ROTATE = "key.rotate"
    KEY_DISABLE = "key.disable"
    KEY_ENABLE = "key.enable"
    KEY_REVOKE = "key.revoke"
    KEY_DESTROY_REQUEST = "key.destroy_request"
    KEY_DESTROY = "key.destroy"
    KEY_SEAL_USERS = "key.seal_users"
    USER_SUSPEND = "user.suspend"
    USER_REACTIVATE = "user.reactivate"
    USER_RESET_TOTP = "user.reset_totp"
    USER_MOVE = "user.move"
    USER_RETIRE = "user.retire"
    ADMIN_SEARCH = "admin.search"
    AUDIT_VERIFY = "audit.verify"
    AUDIT_EXPORT = "audit.export"
    AUDIT_QUERY = "audit.query"
    # An operator accepted a rolled-back log: the HSM anchor was moved to the database's head.
    AUDIT_ANCHOR_RESET = "audit.anchor_reset"
    # rsign's own keys rotated (rsign keys rotate-internal): the audit MAC or checkpoint key (details:
    # purpose, old and new CKA_ID, certificates' SHA-256), the TOTP sealing key, and each batch of
    # seeds re-sealed under the new sealing key.
    AUDIT_KEY_ROTATE = "audit.key_rotate"
    SEAL_KEY_ROTATE = "auth.seal_key_rotate"
    TOTP_RESEAL = "auth.totp_reseal"
    # The database schema was migrated (`rsign db upgrade`): from which revision to which.
    DB_UPGRADE = "db.upgrade"
    # A malformed request from an authenticated caller (over a limit, unknown enum value, out of
    # range, unparsable), refused before anything else ran.
    REQUEST_REFUSE = "request.refuse"
    # Passkeys: enrolment (after PIN + TOTP), a signing approval requested by the driving
    # software, and the official's assertion on it (verified, or refused and why).
    PASSKEY_CHALLENGE = "passkey.challenge"
    PASSKEY_ENROL = "passkey.enrol"
    APPROVAL_REQUEST = "approval.request"
    APPROVAL_PASSKEY = "approval.passkey"


class Result(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True)
class AuditEvent:
    action: Action
    result: Result = Result.SUCCESS
    actor: str = ""
    agency: str = ""
    credential_id: str = ""
    key_version: int = 0
    digest: str = ""  # hex digest signed or authorised (never a secret)
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""
    client: str = ""

    def __post_init__(self) -> None:
        # Every record is built here, so no path can write an unbounded one: a refused request's
        # 1 MiB user id or credential id is kept as a prefix plus its digest and length.
        for name, limit in limits.AUDIT_FIELD_MAX.items():
            value = getattr(self, name)
            if isinstance(value, str) and len(value) > limit:
                object.__setattr__(self, name, limits.bounded(value, limit))
        details = limits.bounded_details(self.details)
        if details is not self.details:
            object.__setattr__(self, "details", details)


@dataclass(frozen=True)
class ItemEvents:
    """The records of one batch chunk's signatures, one per item: ``template`` with, for each
    item, its digest, its position in the SAD's list (``details["position"]``), its result and
    reason. The journal chains them from the template (``rsign.audit.chain.ItemRecords``) instead
    of one ``AuditEvent`` each, which was most of the batch path's Python work per signature; the
    records are byte for byte those ``expand()`` gives (tests/unit/test_chain.py checks it)."""

    template: AuditEvent  # digest and reason empty; details without "position"
    items: list[tuple[str, int, Result, str]]  # (digest hex, position, result, reason)

    def __post_init__(self) -> None:
        if self.template.digest or self.template.reason or "position" in self.template.details:
            raise ValueError("an item template carries no digest, reason or position")
        if not self.items:
            raise ValueError("ItemEvents needs at least one item")
        limit = limits.AUDIT_FIELD_MAX["reason"]
        if max(map(len, map(itemgetter(3), self.items))) > limit:
            bounded = [(d, p, res, limits.bounded(r, limit)) for d, p, res, r in self.items]
            object.__setattr__(self, "items", bounded)

    def __len__(self) -> int:
        return len(self.items)

    def expand(self) -> list[AuditEvent]:
        """The same records as events (what the generic path would have written)."""
        t = self.template
        return [
            AuditEvent(
                t.action,
                result,
                actor=t.actor,
                agency=t.agency,
                credential_id=t.credential_id,
                key_version=t.key_version,
                digest=digest,
                reason=reason,
                details={**t.details, "position": position},
                request_id=t.request_id,
                client=t.client,
            )
            for digest, position, result, reason in self.items
        ]


def records(events: Sequence[AuditEvent | ItemEvents]) -> int:
    """How many audit records ``events`` make."""
    return sum(len(ev) if isinstance(ev, ItemEvents) else 1 for ev in events)


def event(action: Action, result: Result = Result.SUCCESS, **kw: Any) -> AuditEvent:
    """Build an event stamped with the current request's id, client and (default) actor."""
    ctx = context.current()
    kw.setdefault("actor", ctx.actor)
    kw.setdefault("agency", ctx.agency)
    return AuditEvent(action, result, request_id=ctx.request_id, client=ctx.client, **kw)


@dataclass(frozen=True)
class EventFilter:
    """Audit query filter; empty fields do not filter. Times are ISO 8601 UTC strings."""

    from_ts: str = ""
    to_ts: str = ""
    actor: str = ""
    credential_id: str = ""
    agency: str = ""
    action: str = ""
    result: str = ""


def matches(flt: EventFilter, rec: Mapping[str, Any]) -> bool:
    """The same filter, applied in Python (export decides record vs link per row)."""
    if flt.from_ts and rec["ts"] < flt.from_ts:
        return False
    if flt.to_ts and rec["ts"] >= flt.to_ts:
        return False
    return all(
        not want or rec[col] == want
        for col, want in (
            ("actor", flt.actor),
            ("credential_id", flt.credential_id),
            ("agency", flt.agency),
            ("action", flt.action),
            ("result", flt.result),
        )
    )
