"""Reading the audit log: pages of records, the latest records, and the signed export file (its
format and the offline verifier are ``rsign.audit.offline``'s)."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rsign.audit import chain
from rsign.audit.anchoring import AnchorKeeper
from rsign.audit.checkpoints import Checkpoints
from rsign.audit.export_format import FORMAT, FORMAT_3, export_signature_message
from rsign.audit.journal import AuditedStore
from rsign.audit.keys import AuditKeys
from rsign.audit.verification import ROW_COLUMNS
from rsign.domain.anchor import Anchor
from rsign.domain.clock import Clock, iso_utc
from rsign.domain.errors import (
    AuditHalted,
    AuditIntegrityError,
    FailedPrecondition,
    InvalidRequest,
    PermissionDenied,
    RsignError,
)
from rsign.domain.events import Action, EventFilter, Result, event, matches
from rsign.domain.policy import audit_filter, audit_scope
from rsign.domain.principal import Principal, Scope

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Page:
    events: list[dict[str, Any]]
    next_token: str


def permitted(store: AuditedStore, who: Principal, flt: EventFilter, action: Action) -> EventFilter:
    """``audit_filter``, with a refusal recorded: a caller refused the audit log (a signer, an
    agency auditor asking for another agency) leaves a failure record naming what was asked."""
    try:
        return audit_filter(who, flt)
    except PermissionDenied as exc:
        with store.tx() as t:
            t.append(event(action, Result.FAILURE, reason=exc.message, details={"filter": _flt_dict(flt)}))
        raise


class AuditQueries:
    def __init__(
        self, store: AuditedStore, keys: AuditKeys, clock: Clock, anchor: AnchorKeeper, checkpoints: Checkpoints
    ) -> None:
        self._store = store
        self._keys = keys
        self._clock = clock
        self._anchor = anchor
        self._checkpoints = checkpoints

    def list_events(self, who: Principal, flt: EventFilter, page_size: int, page_token: str) -> Page:
        flt = permitted(self._store, who, flt, Action.AUDIT_QUERY)
        size = max(1, min(page_size or 100, 1000))
        after = _decode_token(page_token)
        with self._store.read() as t:
            rows = t.find_events(flt, after, size + 1)
        more = len(rows) > size
        rows = rows[:size]
        with self._store.tx() as t:
            t.append(event(Action.AUDIT_QUERY, details={"filter": _flt_dict(flt), "returned": len(rows)}))
        return Page(rows, _encode_token(int(rows[-1]["seq"])) if more else "")

    def tail(self, flt: EventFilter, limit: int) -> list[dict[str, Any]]:
        with self._store.read() as t:
            return t.last_events(flt, limit)

    def export(self, who: Principal, flt: EventFilter) -> Iterator[bytes]:
        """The export file, line by line (see ``rsign.audit.offline`` for the format). A fresh
        checkpoint is signed first so that every exported record is covered; if the log fails
        verification none is signed, and the export says so. The export is audited."""
        flt = permitted(self._store, who, flt, Action.AUDIT_EXPORT)
        try:
            self._keys.require_certificate()
        except FailedPrecondition as exc:
            # Refused, and audited as such: an export carries the audit certificate, so that
            # anyone can verify it offline; without one it would prove nothing.
            with self._store.tx() as t:
                t.append(
                    event(Action.AUDIT_EXPORT, Result.FAILURE, reason=exc.message, details={"filter": _flt_dict(flt)})
                )
            raise
        # Read afresh, before the records: an export of a log behind its anchor shows it.
        warning = ""
        try:
            anchor = self._anchor.known(rescan=True)
            rolled_back = self._anchor.rollback_problem(anchor)
        except RsignError as exc:
            anchor, rolled_back, warning = None, None, exc.message
        if rolled_back is not None:
            # Exported as it is, flagged, and nothing appended: the export's record or a
            # checkpoint would extend the history the administrator made.
            return self._export_lines(who, flt, f"the audit log was rolled back: {rolled_back[1]}", anchor)
        # Recorded first, so that the checkpoint signed next covers the export's own record.
        try:
            with self._store.tx() as t:
                t.append(event(Action.AUDIT_EXPORT, details={"filter": _flt_dict(flt)}))
        except (AuditIntegrityError, AuditHalted) as exc:
            # Auditors need the export most when the log is broken: export what is there, flagged.
            warning = warning or exc.message
        try:
            self._checkpoints.checkpoint()
        except RsignError as exc:
            warning = warning or exc.message
            log.error("audit export without a fresh checkpoint: %s", exc.message)
        try:
            anchor = self._anchor.known()  # the checkpoint just signed moved it
        except RsignError:
            anchor = None  # unreadable: the warning says so
        return self._export_lines(who, flt, warning, anchor)

    def _export_lines(self, who: Principal, flt: EventFilter, warning: str, anchor: Anchor | None) -> Iterator[bytes]:
        digest = hashlib.sha256()

        def emit(obj: dict[str, Any]) -> bytes:
            line = (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
            digest.update(line)
            return line

        self._keys.reload()
        # One key for the header and the closing signature, whatever a rotation does meanwhile.
        key, eras = self._keys.signing_key, self._keys.signing_eras
        fmt = FORMAT_3 if eras else FORMAT
        with self._store.read() as t:
            head_seq, head_hash = t.audit_head() or (0, chain.GENESIS)
            certs = [key.certificate, *key.chain]
            yield emit(
                {
                    "type": "header",
                    "format": fmt,
                    "exported_at": iso_utc(self._clock.now()),
                    "exported_by": "local operator" if who.local else who.user_id,
                    "scope": Scope.PROVINCE if audit_scope(who) == Scope.PROVINCE else who.agency,
                    "filter": _flt_dict(flt),
                    "head": {"seq": head_seq, "hash": head_hash},
                    "anchor": None
                    if anchor is None
                    else {
                        "epoch": anchor.epoch,
                        "seq": anchor.seq,
                        "head_hash": anchor.head_hash,
                        "ts": anchor.ts,
                        "signature": base64.b64encode(anchor.signature).decode("ascii"),
                    },
                    "audit_certificate": base64.b64encode(certs[0]).decode("ascii"),
                    "issuer_certificates": [base64.b64encode(c).decode("ascii") for c in certs[1:]],
                    **(
                        {
                            "previous_audit_certificates": [
                                {
                                    "certificate": base64.b64encode(e.key.certificate).decode("ascii"),
                                    "issuer_certificates": [base64.b64encode(c).decode("ascii") for c in e.key.chain],
                                    "last_seq": e.last_seq,
                                }
                                for e in eras
                            ]
                        }
                        if eras
                        else {}
                    ),
                    "warning": warning,
                }
            )
            for cp in t.checkpoints():  # all of them: one beyond the head reveals a truncation
                yield emit(
                    {
                        "type": "checkpoint",
                        "seq": cp.seq,
                        "head_hash": cp.head_hash,
                        "ts": cp.ts,
                        "signature": base64.b64encode(cp.signature).decode("ascii"),
                    }
                )
            for r in t.audit_rows(ROW_COLUMNS, 0, head_seq):
                # Key rotations always in full: each names the next audit certificate, which is
                # how a verifier pinning an older one comes to trust the current one.
                if matches(flt, r) or r["action"] == Action.AUDIT_KEY_ROTATE:
                    yield emit(
                        {
                            "type": "record",
                            **{k: r[k] for k in chain.CONTENT_FIELDS},
                            "prev_hash": r["prev_hash"],
                            "hash": r["hash"],
                        }
                    )
                else:
                    yield emit(
                        {"type": "link", "seq": r["seq"], "content_hash": chain.content_hash(r), "hash": r["hash"]}
                    )
        hexd = digest.hexdigest()
        sig = self._keys.sign(export_signature_message(hexd, fmt), key)
        yield (
            json.dumps({"type": "signature", "sha256": hexd, "signature": base64.b64encode(sig).decode("ascii")}) + "\n"
        ).encode("utf-8")


def _flt_dict(flt: EventFilter) -> dict[str, str]:
    return {k: v for k, v in flt.__dict__.items() if v}


def _encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"after:{seq}".encode()).decode("ascii")


def _decode_token(token: str) -> int:
    if not token:
        return 0
    try:
        text = base64.urlsafe_b64decode(token.encode("ascii")).decode("ascii")
        if not text.startswith("after:"):
            raise ValueError
        return int(text[6:])
    except (ValueError, UnicodeError):
        raise InvalidRequest("page_token is not one this service issued") from None
