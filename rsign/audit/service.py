"""Audit log verification."""

from __future__ import annotations

from rsign.audit import chain
from rsign.audit.events import Action, Result, event
from rsign.store.db import Store


class AuditService:
    def __init__(self, store: Store) -> None:
        self._store = store

    def verify(self) -> chain.ChainReport:
        """Walk the whole chain against the recorded head; the verification itself is audited."""
        with self._store.read() as t:
            head = t.audit_head()
            report = chain.verify(t.audit_rows(), expect_head=head)
        with self._store.tx() as t:
            t.append(
                event(
                    Action.AUDIT_VERIFY,
                    Result.SUCCESS if report.ok else Result.FAILURE,
                    reason=report.problem,
                    details={"records": report.records, "head_seq": report.head_seq},
                )
            )
        return report
