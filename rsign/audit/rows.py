"""Audit rows built from events, chained: each row's hash over its canonical content and the row
before (``rsign.audit.chain``), in ``AUDIT_ROW_COLUMNS`` order. The journal calls these under the
locked head; a batch chunk's records (``ItemEvents``) are hashed from one template."""

from __future__ import annotations

from typing import Any

from rsign.audit import chain
from rsign.domain.events import AuditEvent, ItemEvents, Result
from rsign.store import AUDIT_ROW_COLUMNS

__all__ = ["event_row", "item_rows"]


_RESULT_TEXT = {r: str(r) for r in Result}


def item_rows(rows: list[tuple[Any, ...]], ev: ItemEvents, seq: int, prev: str, ts: str) -> tuple[int, str]:
    """Append ``ev``'s records to ``rows`` (chained from ``prev`` after ``seq``); the new head."""
    if not ev.items:
        return seq, prev
    t = ev.template
    try:
        tpl = chain.ItemRecords(
            {
                "action": str(t.action),
                "actor": t.actor,
                "agency": t.agency,
                "client": t.client,
                "credential_id": t.credential_id,
                "key_version": t.key_version,
                "request_id": t.request_id,
            },
            t.details,
        )
    except ValueError:  # details that cannot be templated (``chain.ItemRecords``): one by one
        for one in ev.expand():
            seq, prev = event_row(rows, one, seq, prev, ts)
        return seq, prev
    text = _RESULT_TEXT  # str() of a StrEnum per item cost more than its record's hash
    items = [(d, p, text[r], reason) for d, p, r, reason in ev.items]
    hashes = tpl.hashes(prev, seq + 1, ts, items)
    action, actor, agency, cid, kv, rid, client = (
        str(t.action), t.actor, t.agency, t.credential_id, t.key_version, t.request_id, t.client
    )  # fmt: skip
    details_text = tpl.details_text
    for (digest, position, result, reason), h in zip(items, hashes, strict=True):
        seq += 1
        rows.append(
            (seq, ts, actor, agency, action, result, cid, kv, digest, reason, rid, client,
             details_text(position), prev, h, "")
        )  # fmt: skip
        prev = h
    return seq, prev


def event_row(rows: list[tuple[Any, ...]], ev: AuditEvent, seq: int, prev: str, ts: str) -> tuple[int, str]:
    """Append ``ev``'s record to ``rows`` (chained from ``prev`` after ``seq``); the new head."""
    seq += 1
    fields: dict[str, Any] = {
        "seq": seq,
        "ts": ts,
        "actor": ev.actor,
        "agency": ev.agency,
        "action": str(ev.action),
        "result": str(ev.result),
        "credential_id": ev.credential_id,
        "key_version": ev.key_version,
        "digest": ev.digest,
        "reason": ev.reason,
        "request_id": ev.request_id,
        "client": ev.client,
        "details": chain.details_json(ev.details),
        "prev_hash": prev,
        "mac": "",
    }
    fields["hash"] = h = chain.record_hash(fields)
    rows.append(tuple(fields[k] for k in AUDIT_ROW_COLUMNS))
    return seq, h
