"""Audit event types and the event value object."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from rsign import context


class Action(enum.StrEnum):
    LOGIN = "auth.login"
    LOCKOUT = "auth.lockout"
    UNLOCK = "auth.unlock"
    LOGOUT = "auth.logout"
    SESSION_EXPIRED = "auth.session_expired"
    USER_ENROL = "user.enrol"
    SAD_ISSUE = "sad.issue"
    SAD_CONSUME = "sad.consume"
    SAD_REFUSE = "sad.refuse"
    SIGN = "sign.hash"
    BATCH_START = "batch.start"
    BATCH_END = "batch.end"
    KEY_GENERATE = "key.generate"
    AUDIT_VERIFY = "audit.verify"


class Result(enum.StrEnum):
    SUCCESS = "success"
    FAILURE = "failure"


@dataclass(frozen=True)
class AuditEvent:
    action: Action
    result: Result = Result.SUCCESS
    actor: str = ""
    credential_id: str = ""
    key_version: int = 0
    digest: str = ""  # hex digest signed or authorised (never a secret)
    reason: str = ""
    details: dict[str, Any] = field(default_factory=dict)
    request_id: str = ""
    client: str = ""


def event(action: Action, result: Result = Result.SUCCESS, **kw: Any) -> AuditEvent:
    """Build an event stamped with the current request's id, client and (default) actor."""
    ctx = context.current()
    kw.setdefault("actor", ctx.actor)
    return AuditEvent(action, result, request_id=ctx.request_id, client=ctx.client, **kw)
