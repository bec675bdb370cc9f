"""Audit for auditors: verification, signed checkpoints, queries and exports.

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

import base64
import hashlib
import hmac
import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from rsign.audit import chain
from rsign.audit.journal import AuditedStore
from rsign.audit.keys import AuditKeys
from rsign.audit.offline import FORMAT, checkpoint_file, export_signature_message
from rsign.domain.anchor import Anchor
from rsign.domain.clock import Clock, iso_utc
from rsign.domain.errors import (
    AuditHalted,
    AuditIntegrityError,
    AuditRollback,
    FailedPrecondition,
    InvalidRequest,
    RsignError,
)
from rsign.domain.events import Action, EventFilter, Result, event, matches
from rsign.domain.policy import audit_filter, audit_scope
from rsign.domain.principal import Principal, Scope
from rsign.domain.records import CheckpointView
from rsign.hsm.ports import Hsm

log = logging.getLogger(__name__)

_MAC_BATCH = 2000
# A running server compares the database, every second, with the anchor it last read or wrote, and
# re-reads the HSM (a token scan: about 10 ms on the demo token, linear in its objects on SoftHSMv2)
# this often, to see other replicas' anchors, and whenever that comparison fails.
ANCHOR_RESCAN_SECONDS = 60.0
RECOVERY = "see `rsign audit verify`; after investigating, `rsign audit accept-rollback --reason ...` resumes"


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
    anchor: Anchor | None = None  # the HSM anchor the database was checked against
    rolled_back: bool = False  # the problem is the HSM anchor's: the database is behind it


@dataclass(frozen=True)
class AnchorReset:
    """What ``accept_rollback`` did: the anchor before (None: none, or unreadable) and after."""

    old: Anchor | None
    new: Anchor
    found: str  # what was wrong (or that nothing was visibly wrong)
    record_seq: int  # the audit.anchor_reset record


@dataclass(frozen=True)
class Page:
    events: list[dict[str, Any]]
    next_token: str


# What verification and export read of each record: its content, then the chain and MAC columns.
_ROW_COLUMNS = (*chain.CONTENT_FIELDS, "prev_hash", "hash", "mac")


class AuditService:
    def __init__(self, store: AuditedStore, keys: AuditKeys, clock: Clock, anchors: Hsm | None = None) -> None:
        """``anchors``: the HSM the anchor is read and written through. The server passes its
        signing pool: on SoftHSMv2 an anchor write costs a token scan, and the audit worker must
        stay free for the MACs that appends wait for while they hold the chain head."""
        self._store = store
        self._keys = keys
        self._clock = clock
        self._anchors: Hsm = anchors if anchors is not None else keys.hsm
        # One checkpoint at a time in this process; the database arbitrates between replicas.
        self._cp_lock = threading.Lock()
        self._anchor_lock = threading.Lock()
        self._anchor: Anchor | None = None  # the highest anchor this process read or wrote
        self._anchor_scanned = -math.inf  # time.monotonic() of the last HSM read
        self._signature_ok: bytes = b""  # the anchor encoding whose signature was checked last
        self._unanchored: CheckpointView | None = None  # signed, but its anchor write failed

    # -- verification ------------------------------------------------------------------------

    def verify_log(self, who: Principal) -> LogReport:
        """Verify the stored log: chain, MACs (HSM key), checkpoints, truncation. Audited."""
        audit_filter(who, EventFilter())
        report = self._with_anchor(self._verify())
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

    def _with_anchor(self, report: LogReport) -> LogReport:
        """The report, with the database checked against the HSM anchor (read afresh)."""
        try:
            anchor = self._known_anchor(rescan=True)
            problem = self._rollback_problem(anchor)
        except AuditIntegrityError as exc:  # an anchor object this version cannot read
            anchor, problem = None, (0, exc.message)
        report = replace(report, anchor=anchor)
        if problem is None or (not report.ok and (report.bad_seq or 0) <= problem[0]):
            return report
        return replace(report, ok=False, bad_seq=problem[0], problem=problem[1], rolled_back=True)

    def _verify(self, after: int = 0, start_hash: str = chain.GENESIS) -> LogReport:
        with self._store.read() as t:
            head = t.audit_head() or (0, chain.GENESIS)
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
            problem = self._rollback_problem(self._known_anchor())
            if problem is not None:  # confirm against the HSM as it is now
                problem = self._rollback_problem(self._known_anchor(rescan=True))
            if problem is not None:
                raise AuditRollback(f"refusing to sign a checkpoint: {problem[1]}")
            with self._store.read() as t:
                last = t.last_checkpoint()
                head = t.audit_head() or (0, chain.GENESIS)
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
            if not added:
                return None  # another replica signed one at or beyond it: that one is anchored
            # Anchored only once committed: the anchor never names a checkpoint the database lacks.
            self._anchor_checkpoint(cp)
            return cp

    def kept_checkpoint(self) -> bytes:
        """The latest checkpoint as a file an auditor keeps (``rsign.audit.offline``), after
        checking its signature and that the log still holds it."""
        self._keys.require_certificate()
        with self._store.read() as t:
            cp = t.last_checkpoint()
            at = t.audit_hash_and_mac(cp.seq) if cp is not None else None
        if cp is None:
            raise FailedPrecondition("no checkpoint has been signed yet: the log is empty")
        cert = self._checkpoint_public_key()
        if not _ecdsa_ok(cert, cp.signature, chain.checkpoint_message(cp.seq, cp.head_hash, cp.ts)):
            raise AuditIntegrityError(f"checkpoint {cp.seq}: signature invalid (run `rsign audit verify`)")
        if at is None or at[0] != cp.head_hash:
            raise AuditIntegrityError(f"checkpoint {cp.seq} does not match the log (run `rsign audit verify`)")
        cert_sha256 = hashlib.sha256(self._keys.certificates[0]).hexdigest()
        return checkpoint_file(cp.seq, cp.head_hash, cp.ts, cp.signature, cert_sha256)

    # -- the HSM anchor ----------------------------------------------------------------------

    def _known_anchor(self, rescan: bool = False) -> Anchor | None:
        """The highest anchor this process knows, re-read from the HSM when asked or when the last
        read is ``ANCHOR_RESCAN_SECONDS`` old. Raises ``AuditIntegrityError`` for an anchor object
        this version cannot read."""
        if not rescan and time.monotonic() - self._anchor_scanned < ANCHOR_RESCAN_SECONDS:
            return self._anchor
        raw = self._anchors.read_anchor()
        try:
            read = Anchor.decode(raw) if raw is not None else None
        except ValueError as exc:
            raise AuditIntegrityError(str(exc)) from None
        with self._anchor_lock:
            self._anchor_scanned = time.monotonic()
            known = self._anchor
            if read is not None and known is not None and read.epoch > known.epoch:
                # An operator re-anchored (accept-rollback, perhaps from another process): the
                # head this process saw before no longer binds it.
                self._store.reset_high_water()
            if read is not None and (known is None or read.order > known.order):
                self._anchor = read
            return self._anchor

    def _rollback_problem(self, anchor: Anchor | None) -> tuple[int, str] | None:
        """What says the database was rolled back: ``(first affected record, one line)``, or None.

        The anchor is read before the database: an anchor names only committed checkpoints, so a
        database read after it can only be ahead of it, unless records were deleted."""
        high = self._store.high_water  # also before the read: it only ever lags the database
        with self._store.read() as t:
            head_seq = (t.audit_head() or (0, chain.GENESIS))[0]
            at = t.audit_hash_and_mac(anchor.seq) if anchor is not None else None
            cp = t.checkpoint_at(anchor.seq) if anchor is not None else None
        if head_seq < high:
            return (
                head_seq + 1,
                f"the log head went back from record {high} to {head_seq} while this server ran (records were deleted)",
            )
        self._store.saw_head(head_seq)
        if anchor is None:
            return None
        n = anchor.seq
        if not self._anchor_signed(anchor):
            return (n, f"the HSM anchor (checkpoint {n}) does not carry a valid signature of the audit key")
        if head_seq < n:
            return (
                head_seq + 1,
                f"the HSM anchor is at record {n}, the database ends at {head_seq} (the log was rolled back)",
            )
        if at is None:
            return (n, f"record {n} is missing, but the HSM anchor holds it (the log was rolled back)")
        if at[0] != anchor.head_hash:
            return (n, f"record {n}'s hash differs from the anchored one (the log was rolled back and rewritten)")
        if cp is None:
            return (n, f"checkpoint {n} is missing (the HSM anchor holds it: newer checkpoints were deleted)")
        if (cp.head_hash, cp.ts, cp.signature) != (anchor.head_hash, anchor.ts, anchor.signature):
            return (n, f"checkpoint {n} differs from the anchored one")
        return None

    def _anchor_signed(self, anchor: Anchor) -> bool:
        encoded = anchor.encode()
        if encoded == self._signature_ok:
            return True
        cert = self._checkpoint_public_key()
        ok = cert is not None and _ecdsa_ok(
            cert, anchor.signature, chain.checkpoint_message(anchor.seq, anchor.head_hash, anchor.ts)
        )
        if ok:
            self._signature_ok = encoded
        return ok

    def _anchor_checkpoint(self, cp: CheckpointView) -> None:
        """Move the HSM anchor to ``cp`` (committed, verified). A failure leaves the checkpoint
        unanchored until the next try (``watch``); the anchor then lags, it never lies."""
        with self._anchor_lock:
            known = self._anchor
        if known is not None and cp.seq <= known.seq:
            self._unanchored = None
            return
        anchor = Anchor(known.epoch if known else 0, cp.seq, cp.head_hash, cp.ts, cp.signature)
        try:
            self._anchors.write_anchor(anchor.encode())
        except RsignError as exc:
            log.error("checkpoint %d signed but not anchored in the HSM: %s", cp.seq, exc.message)
            self._unanchored = cp
            return
        self._unanchored = None
        with self._anchor_lock:
            if self._anchor is None or anchor.order > self._anchor.order:
                self._anchor = anchor

    def watch(self) -> str:
        """Every second while serving: halt the journal (every operation refused, health
        NOT_SERVING) while the database is behind the HSM anchor or its head went back; resume
        once an operator re-anchored. Returns the problem, "" when there is none."""
        try:
            problem = self._rollback_problem(self._known_anchor())
            if problem is not None:
                # Confirm against the HSM as it is now: an operator may have reset the anchor.
                problem = self._rollback_problem(self._known_anchor(rescan=True))
        except AuditIntegrityError as exc:
            problem = (0, exc.message)
        if problem is not None:
            self._store.halt(problem[1])
            return problem[1]
        self._store.resume()
        if self._unanchored is not None:
            with self._cp_lock:
                if self._unanchored is not None:
                    self._anchor_checkpoint(self._unanchored)
        return ""

    def check_before_serving(self) -> None:
        """Refuse to serve (``AuditRollback``, one line) a log behind its HSM anchor. Otherwise
        anchor the latest checkpoint if the HSM holds an older one or none (the first start after
        an upgrade, or an anchor write that failed), once its signature and record check out."""
        try:
            anchor = self._known_anchor(rescan=True)
            problem = self._rollback_problem(anchor)
        except AuditIntegrityError as exc:
            raise AuditRollback(f"refusing to serve: {exc.message}; {RECOVERY}") from None
        if problem is not None:
            raise AuditRollback(f"refusing to serve: the audit log was rolled back: {problem[1]}; {RECOVERY}")
        with self._store.read() as t:
            last = t.last_checkpoint()
            at = t.audit_hash_and_mac(last.seq) if last is not None else None
        if last is None or at is None or at[0] != last.head_hash or (anchor is not None and last.seq <= anchor.seq):
            return
        cert = self._checkpoint_public_key()
        if cert is not None and _ecdsa_ok(
            cert, last.signature, chain.checkpoint_message(last.seq, last.head_hash, last.ts)
        ):
            with self._cp_lock:
                self._anchor_checkpoint(last)

    def accept_rollback(self, reason: str) -> AnchorReset:
        """The operator's explicit, audited recovery: re-anchor the HSM at the database's current
        head, which must verify on its own (chain, MACs, checkpoints), and record
        ``audit.anchor_reset`` with the old and new anchors; then checkpoint over that record.
        Servers halted on this log resume by themselves (they see the anchor's epoch go up)."""
        reason = reason.strip()
        if not reason:
            raise InvalidRequest("give the reason for accepting the rollback (--reason): it goes into the audit record")
        self._keys.require_certificate()
        with self._cp_lock:
            try:
                old = self._known_anchor(rescan=True)
                found = self._rollback_problem(old)
                what = found[1] if found else "the database matched the HSM anchor (no rollback visible here)"
            except AuditIntegrityError as exc:
                old, what = None, exc.message
            rep = self._verify()
            if not rep.ok:
                raise AuditIntegrityError(
                    f"the database's audit log fails verification on its own (record {rep.bad_seq}: {rep.problem});"
                    " accept-rollback re-anchors only a log that verifies: restore it from a backup first"
                )
            with self._store.read() as t:
                last = t.last_checkpoint()
            if last is not None and (last.seq, last.head_hash) == (rep.head_seq, rep.head_hash):
                cp = last
            else:
                ts = iso_utc(self._clock.now())
                sig = self._keys.sign(chain.checkpoint_message(rep.head_seq, rep.head_hash, ts))
                cp = CheckpointView(rep.head_seq, rep.head_hash, ts, sig)
                with self._store.tx() as t:
                    if not t.add_checkpoint(cp):
                        raise AuditIntegrityError(
                            "another process signed a checkpoint meanwhile; run accept-rollback again"
                        )
            stored = self._anchors.reset_anchor(Anchor(0, cp.seq, cp.head_hash, cp.ts, cp.signature).encode())
            new = Anchor.decode(stored)
            with self._anchor_lock:
                self._anchor = new
                self._anchor_scanned = time.monotonic()
            self._unanchored = None
            self._store.reset_high_water()
            self._store.resume()
            with self._store.tx() as t:
                t.append(
                    event(
                        Action.AUDIT_ANCHOR_RESET,
                        reason=reason,
                        details={
                            "old_anchor": old.summary() if old is not None else None,
                            "new_anchor": new.summary(),
                            "found": what,
                        },
                    )
                )
            seq = t.last_seq
        try:
            self.checkpoint()  # covers the reset record and anchors it
        except RsignError as exc:
            log.error("checkpoint after accept-rollback not signed: %s", exc.message)
        return AnchorReset(old, new, what, seq)

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
        # Read afresh, before the records: an export of a log behind its anchor shows it.
        warning = ""
        try:
            anchor = self._known_anchor(rescan=True)
            rolled_back = self._rollback_problem(anchor)
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
            self.checkpoint()
        except RsignError as exc:
            warning = warning or exc.message
            log.error("audit export without a fresh checkpoint: %s", exc.message)
        try:
            anchor = self._known_anchor()  # the checkpoint just signed moved it
        except RsignError:
            anchor = None  # unreadable: the warning says so
        return self._export_lines(who, flt, warning, anchor)

    def _export_lines(self, who: Principal, flt: EventFilter, warning: str, anchor: Anchor | None) -> Iterator[bytes]:
        digest = hashlib.sha256()

        def emit(obj: dict[str, Any]) -> bytes:
            line = (json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n").encode("utf-8")
            digest.update(line)
            return line

        with self._store.read() as t:
            head_seq, head_hash = t.audit_head() or (0, chain.GENESIS)
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
        sig = self._keys.sign(export_signature_message(hexd, FORMAT))
        yield (
            json.dumps({"type": "signature", "sha256": hexd, "signature": base64.b64encode(sig).decode("ascii")}) + "\n"
        ).encode("utf-8")


class Checkpointer:
    """Signs a checkpoint every ``every_records`` records or ``interval`` seconds, and at stop;
    every second, checks the log against its HSM anchor (``AuditService.watch``)."""

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
                if self._audit.watch():
                    continue  # halted: nothing is signed over a rolled-back log
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
