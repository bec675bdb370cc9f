"""Audit for auditors: verification, signed checkpoints, queries and exports.

Authorization (``rsign.domain.policy.audit_filter``): the audit API is for the ``auditor`` role
(and ``admin``). An auditor's scope is either their agency (they see and export only records of
that agency; other records appear in an export as content-free links, so the chain still
verifies) or the whole province.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

from rsign.audit import chain
from rsign.audit.journal import AuditedStore
from rsign.audit.keys import AuditKeys
from rsign.audit.offline import FORMAT, export_signature_message
from rsign.domain.clock import Clock, iso_utc
from rsign.domain.errors import AuditIntegrityError, FailedPrecondition, InvalidRequest, RsignError
from rsign.domain.events import Action, EventFilter, Result, event, matches
from rsign.domain.policy import audit_filter, audit_scope
from rsign.domain.principal import Principal, Scope
from rsign.domain.records import CheckpointView

log = logging.getLogger(__name__)

_MAC_BATCH = 2000


@dataclass(frozen=True)
class LogReport:
    ok: bool
    records: int
    head_seq: int
    bad_seq: int | None
    problem: str
    checkpoints: int
    last_checkpoint_seq: int
    head_hash: str = ""


@dataclass(frozen=True)
class Page:
    events: list[dict[str, Any]]
    next_token: str


# What verification and export read of each record: its content, then the chain and MAC columns.
_ROW_COLUMNS = (*chain.CONTENT_FIELDS, "prev_hash", "hash", "mac")


class AuditService:
    def __init__(self, store: AuditedStore, keys: AuditKeys, clock: Clock) -> None:
        self._store = store
        self._keys = keys
        self._clock = clock
        # One checkpoint at a time in this process; the database arbitrates between replicas.
        self._cp_lock = threading.Lock()

    # -- verification ------------------------------------------------------------------------

    def verify_log(self, who: Principal) -> LogReport:
        """Verify the stored log: chain, MACs (HSM key), checkpoints, truncation. Audited."""
        audit_filter(who, EventFilter())
        report = self._verify()
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
        except AuditIntegrityError:
            # The log refuses appends because it was tampered with; the report says why. Reporting
            # beats failing closed here: this is the auditor's tool for finding out.
            if report.ok:
                raise
        return report

    def _verify(self, after: int = 0, start_hash: str = chain.GENESIS) -> LogReport:
        with self._store.read() as t:
            head = (t.audit_head() or (0, chain.GENESIS))
            cps = t.checkpoints()
            macs: list[tuple[int, str, str]] = []
            cp_hash = {cp.seq: cp.head_hash for cp in cps}
            seen_cp: dict[int, str] = {}

            def rows() -> Iterator[dict[str, Any]]:
                for r in t.audit_rows(_ROW_COLUMNS, after):
                    if r["mac"]:
                        macs.append((int(r["seq"]), r["hash"], r["mac"]))
                    if r["seq"] in cp_hash:
                        seen_cp[int(r["seq"])] = r["hash"]
                    yield r

            rep = chain.verify(rows(), start=(after, start_hash))
        problems: list[tuple[int, str]] = []
        if not rep.ok:
            problems.append((rep.bad_seq or 0, rep.problem))
        # Keyed integrity: recompute the MACs in the HSM, in batches.
        for i in range(0, len(macs), _MAC_BATCH):
            part = macs[i : i + _MAC_BATCH]
            want = self._keys.macs([chain.mac_message(seq, h) for seq, h, _ in part])
            for (seq, _, got), w in zip(part, want, strict=True):
                if not hmac.compare_digest(got, w):
                    problems.append((seq, f"record {seq} fails its MAC (forged, or the chain was recomputed)"))
                    break
        truncated = any(cp.seq > rep.head_seq for cp in cps)  # reported below, more precisely
        if rep.ok and not truncated and rep.head_seq > after and (not macs or macs[-1][0] != rep.head_seq):
            problems.append(
                (
                    rep.head_seq,
                    f"record {rep.head_seq} ends the log without a MAC (records were removed after it,"
                    " or it was forged)",
                )
            )
        if rep.ok and (rep.head_seq, rep.head_hash) != head:
            problems.append((rep.head_seq, f"the records end at {rep.head_seq}, the log head says {head[0]}"))
        # Checkpoints: signed, consistent with the records, and none beyond the last record.
        # (Read only when there are some: with a real HSM the key may have no certificate yet.)
        cert = self._checkpoint_public_key() if cps else None
        for cp in cps:
            if cert is None:
                problems.append(
                    (cp.seq, f"checkpoint {cp.seq}: the audit checkpoint key has no certificate to check it")
                )
            elif not _ecdsa_ok(cert, cp.signature, chain.checkpoint_message(cp.seq, cp.head_hash, cp.ts)):
                problems.append((cp.seq, f"checkpoint {cp.seq}: signature invalid"))
            elif cp.seq > rep.head_seq and rep.ok:
                problems.append(
                    (
                        rep.head_seq + 1,
                        f"records {rep.head_seq + 1}..{cp.seq} are missing: checkpoint"
                        f" {cp.seq} was signed over them (the log was truncated)",
                    )
                )
            elif cp.seq in seen_cp and seen_cp[cp.seq] != cp.head_hash:
                problems.append(
                    (
                        cp.seq,
                        f"checkpoint {cp.seq} does not match the log: the records up to {cp.seq}"
                        " differ from what was signed",
                    )
                )
        problems.sort(key=lambda p: p[0])
        bad_seq, problem = problems[0] if problems else (None, "")
        return LogReport(
            not problems,
            rep.records,
            rep.head_seq,
            bad_seq,
            problem,
            len(cps),
            cps[-1].seq if cps else 0,
            rep.head_hash,
        )

    def _checkpoint_public_key(self) -> Any:
        from cryptography import x509

        self._keys.reload()
        cert = self._keys.signing_key.certificate
        # Checkpoints are only signed once the key is certified: none here means the record was altered.
        return x509.load_der_x509_certificate(cert).public_key() if cert else None

    # -- checkpoints -------------------------------------------------------------------------

    def checkpoint(self) -> CheckpointView | None:
        """Sign (head seq, head hash, now) if the log grew since the last checkpoint.

        Never signs a state inconsistent with an earlier checkpoint: the records since the last
        checkpoint must chain from its head and carry valid MACs, or nothing is signed.
        """
        with self._cp_lock:
            with self._store.read() as t:
                last = t.last_checkpoint()
                head = (t.audit_head() or (0, chain.GENESIS))
                if last is not None:
                    at_last = t.audit_record(last.seq)
            if head[0] == 0 or (last is not None and head[0] <= last.seq):
                return None
            self._keys.require_certificate()
            after, start_hash = 0, chain.GENESIS
            if last is not None:
                if at_last is None or at_last["hash"] != last.head_hash:
                    raise AuditIntegrityError(
                        f"refusing to sign a checkpoint: the log no longer matches checkpoint {last.seq}"
                    )
                after, start_hash = last.seq, last.head_hash
            rep = self._verify(after, start_hash)
            if not rep.ok:
                raise AuditIntegrityError(f"refusing to sign a checkpoint: {rep.problem}")
            ts = iso_utc(self._clock.now())
            # Sign what was verified (one snapshot), not the head read earlier: appends go on meanwhile.
            sig = self._keys.sign(chain.checkpoint_message(rep.head_seq, rep.head_hash, ts))
            cp = CheckpointView(rep.head_seq, rep.head_hash, ts, sig)
            with self._store.tx() as t:
                added = t.add_checkpoint(cp)
            return cp if added else None

    # -- queries -----------------------------------------------------------------------------

    def list_events(self, who: Principal, flt: EventFilter, page_size: int, page_token: str) -> Page:
        flt = audit_filter(who, flt)
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

    # -- export ------------------------------------------------------------------------------

    def export(self, who: Principal, flt: EventFilter) -> Iterator[bytes]:
        """The export file, line by line (see ``rsign.audit.offline`` for the format). A fresh
        checkpoint is signed first so that every exported record is covered; if the log fails
        verification none is signed, and the export says so. The export is audited."""
        flt = audit_filter(who, flt)
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
        # Recorded first, so that the checkpoint signed next covers the export's own record.
        warning = ""
        try:
            with self._store.tx() as t:
                t.append(event(Action.AUDIT_EXPORT, details={"filter": _flt_dict(flt)}))
        except AuditIntegrityError as exc:
            # Auditors need the export most when the log is broken: export what is there, flagged.
            warning = exc.message
        try:
            self.checkpoint()
        except RsignError as exc:
            warning = warning or exc.message
            log.error("audit export without a fresh checkpoint: %s", exc.message)
        return self._export_lines(who, flt, warning)

    def _export_lines(self, who: Principal, flt: EventFilter, warning: str) -> Iterator[bytes]:
        digest = hashlib.sha256()

        def emit(obj: dict[str, Any]) -> bytes:
            line = (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
            digest.update(line)
            return line

        with self._store.read() as t:
            head_seq, head_hash = (t.audit_head() or (0, chain.GENESIS))
            certs = self._keys.certificates
            yield emit(
                {
                    "type": "header",
                    "format": FORMAT,
                    "exported_at": iso_utc(self._clock.now()),
                    "exported_by": "local operator" if who.local else who.user_id,
                    "scope": Scope.PROVINCE if audit_scope(who) == Scope.PROVINCE else who.agency,
                    "filter": _flt_dict(flt),
                    "head": {"seq": head_seq, "hash": head_hash},
                    "audit_certificate": base64.b64encode(certs[0]).decode("ascii"),
                    "issuer_certificates": [base64.b64encode(c).decode("ascii") for c in certs[1:]],
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
            for r in t.audit_rows(_ROW_COLUMNS, 0, head_seq):
                if matches(flt, r):
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
        sig = self._keys.sign(export_signature_message(hexd))
        yield (
            json.dumps({"type": "signature", "sha256": hexd, "signature": base64.b64encode(sig).decode("ascii")}) + "\n"
        ).encode("utf-8")


class Checkpointer:
    """Signs a checkpoint every ``every_records`` records or ``interval`` seconds, and at stop."""

    def __init__(self, audit: AuditService, store: AuditedStore, every_records: int, interval: float) -> None:
        self._audit = audit
        self._store = store
        self._every = every_records
        self._interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True, name="rsign-checkpointer")

    def start(self) -> None:
        self._thread.start()

    def _run(self) -> None:
        waited, failing = 0.0, False
        while not self._stop.wait(1.0):
            waited += 1.0
            try:
                with self._store.read() as t:
                    head = (t.audit_head() or (0, chain.GENESIS))[0]
                    last = t.last_checkpoint()
                grown = head - (last.seq if last else 0)
                if grown > 0 and ((grown >= self._every and not failing) or waited >= self._interval):
                    self._audit.checkpoint()
                    waited, failing = 0.0, False
            except RsignError as exc:
                log.error("audit checkpoint not signed: %s", exc.message)
                failing = True  # retry once per interval, not every second
                waited = 0.0

    def stop(self) -> None:
        """Stop, then sign a last checkpoint over everything written."""
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=10)
        try:
            self._audit.checkpoint()
        except RsignError as exc:
            log.error("final audit checkpoint not signed: %s", exc.message)


def _ecdsa_ok(public_key: Any, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


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
