"""Audit for auditors: verification, signed checkpoints, queries and exports.

``AuditService`` is the one face the transports and the composition root see; the work lives in
its parts: ``verification`` (chain, MACs, checkpoints, truncation), ``anchoring`` (the HSM anchor
as this process knows it), ``checkpoints`` (signing, watching, accept-rollback, the
``Checkpointer`` thread) and ``queries`` (pages, tail, export).

Authorization (``rsign.domain.policy.audit_filter``): the audit API is for the ``auditor`` role
(and ``admin``). An auditor's scope is either their agency (they see and export only records of
that agency; other records appear in an export as content-free links, so the chain still
verifies) or the whole province.

Rollback (``rsign.domain.anchor``): the MACs and the chain cannot tell a log cut back to an earlier
checkpoint (records, newer checkpoints and head deleted together) from a shorter honest one. The
latest checkpoint is therefore also kept in the HSM, where the database administrator cannot write,
and the database is checked against it: by ``rsign audit verify``, before serving, every second
while serving (``Checkpointer`` -> ``watch``: a log behind it halts the journal, health goes
NOT_SERVING) and before signing a checkpoint. ``accept_rollback`` is the operator's audited way out.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from rsign.audit.anchoring import AnchorKeeper
from rsign.audit.checkpoints import AnchorReset, Checkpoints
from rsign.audit.journal import AuditedStore
from rsign.audit.keys import AuditKeys
from rsign.audit.queries import AuditQueries, Page, permitted
from rsign.audit.verification import LogReport, LogVerifier
from rsign.domain.clock import Clock
from rsign.domain.errors import AuditHalted, AuditIntegrityError
from rsign.domain.events import Action, EventFilter, Result, event
from rsign.domain.principal import Principal
from rsign.domain.records import CheckpointView
from rsign.hsm.ports import Hsm


class AuditService:
    def __init__(self, store: AuditedStore, keys: AuditKeys, clock: Clock, anchors: Hsm | None = None) -> None:
        """``anchors``: the HSM the anchor is read and written through. The server passes its
        signing pool: on SoftHSMv2 an anchor write costs a token scan, and the audit worker must
        stay free for the MACs that appends wait for while they hold the chain head."""
        self._store = store
        self._keys = keys
        self._verifier = LogVerifier(store, keys)
        self._anchor = AnchorKeeper(store, self._verifier, anchors if anchors is not None else keys.hsm)
        self.checkpoints = Checkpoints(store, keys, clock, self._verifier, self._anchor)
        self.queries = AuditQueries(store, keys, clock, self._anchor, self.checkpoints)

    def verify_log(self, who: Principal) -> LogReport:
        """Verify the stored log: chain, MACs (HSM key), checkpoints, truncation, HSM anchor. Audited."""
        permitted(self._store, who, EventFilter(), Action.AUDIT_VERIFY)
        report = self._anchor.with_anchor(self._verifier.verify())
        if report.rolled_back:
            # Not even the verification's own record goes onto a rolled-back log: it would extend
            # the history the administrator made (and move the end the report names).
            return report
        try:
            with self._store.tx() as t:
                t.append(
                    event(
                        Action.AUDIT_VERIFY,
                        Result.SUCCESS if report.ok else Result.FAILURE,
                        reason=report.problem,
                        details={
                            "records": report.records,
                            "head_seq": report.head_seq,
                            "checkpoints": report.checkpoints,
                        },
                    )
                )
        except (AuditIntegrityError, AuditHalted):
            # The log refuses appends because it was tampered with; the report says why. Reporting
            # beats failing closed here: this is the auditor's tool for finding out.
            if report.ok:
                raise
        return report

    # The rest is the parts', named here for the transports and the CLI.

    def checkpoint(self) -> CheckpointView | None:
        return self.checkpoints.checkpoint()

    def kept_checkpoint(self) -> bytes:
        return self.checkpoints.kept_checkpoint()

    def watch(self) -> str:
        return self.checkpoints.watch()

    def check_before_serving(self) -> None:
        self.checkpoints.check_before_serving()

    def accept_rollback(self, reason: str) -> AnchorReset:
        return self.checkpoints.accept_rollback(reason)

    def list_events(self, who: Principal, flt: EventFilter, page_size: int, page_token: str) -> Page:
        return self.queries.list_events(who, flt, page_size, page_token)

    def tail(self, flt: EventFilter, limit: int) -> list[dict[str, Any]]:
        return self.queries.tail(flt, limit)

    def export(self, who: Principal, flt: EventFilter) -> Iterator[bytes]:
        return self.queries.export(who, flt)

    def certificate_chain(self) -> list[bytes]:
        """The audit certificate (DER), then its issuers; empty while it has none. Exports carry
        the same certificate: its SHA-256 is what ``verify-export --audit-cert`` pins."""
        self._keys.reload()
        return self._keys.certificates
