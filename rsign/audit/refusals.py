"""The ``request.refuse`` record: an authenticated caller's request refused before anything ran
(a field over its limit, an unknown enum value, an undecodable body). One builder for both
transports, so a refusal reads the same whether it came over gRPC or the HTTP face."""

from __future__ import annotations

from rsign.audit.journal import AuditedStore
from rsign.domain.events import Action, Result, event
from rsign.domain.principal import Principal


def record_request_refusal(
    journal: AuditedStore, who: Principal, *, method: str, field: str, reason: str, credential_id: object
) -> None:
    """``credential_id`` is whatever the request carried: only a string is kept (a malformed body
    may put anything there)."""
    with journal.tx() as t:
        t.append(
            event(
                Action.REQUEST_REFUSE,
                Result.FAILURE,
                actor=who.user_id,
                agency=who.agency,
                credential_id=credential_id if isinstance(credential_id, str) else "",
                reason=reason,
                details={"method": method, "field": field},
            )
        )
