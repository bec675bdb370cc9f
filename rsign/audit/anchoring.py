"""The audit anchor as this process knows it (``rsign.domain.anchor``): the latest checkpoint, kept
in the HSM where the database administrator cannot write, and the database checked against it.

The MACs and the chain cannot tell a log cut back to an earlier checkpoint (records, newer
checkpoints and head deleted together) from a shorter honest one: the anchor can."""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import replace

from rsign.audit import chain
from rsign.audit.journal import AuditedStore
from rsign.audit.verification import LogReport, LogVerifier, ecdsa_ok
from rsign.domain.anchor import Anchor
from rsign.domain.errors import AuditIntegrityError, RsignError
from rsign.domain.records import CheckpointView
from rsign.hsm.ports import Hsm

log = logging.getLogger(__name__)

# A running server compares the database, every second, with the anchor it last read or wrote, and
# re-reads the HSM (a token scan: about 10 ms on the demo token, linear in its objects on SoftHSMv2)
# this often, to see other replicas' anchors, and whenever that comparison fails.
ANCHOR_RESCAN_SECONDS = 60.0


class AnchorKeeper:
    def __init__(self, store: AuditedStore, verifier: LogVerifier, anchors: Hsm) -> None:
        """``anchors``: the HSM the anchor is read and written through (see ``AuditService``)."""
        self._store = store
        self._verifier = verifier
        self._anchors = anchors
        self._lock = threading.Lock()
        self._anchor: Anchor | None = None  # the highest anchor this process read or wrote
        self._scanned = -math.inf  # time.monotonic() of the last HSM read
        self._signature_ok: bytes = b""  # the anchor encoding whose signature was checked last
        # Signed, but its anchor write failed. Set and cleared under the caller's checkpoint lock.
        self.unanchored: CheckpointView | None = None

    def known(self, rescan: bool = False) -> Anchor | None:
        """The highest anchor this process knows, re-read from the HSM when asked or when the last
        read is ``ANCHOR_RESCAN_SECONDS`` old. Raises ``AuditIntegrityError`` for an anchor object
        this version cannot read."""
        if not rescan and time.monotonic() - self._scanned < ANCHOR_RESCAN_SECONDS:
            return self._anchor
        raw = self._anchors.read_anchor()
        try:
            read = Anchor.decode(raw) if raw is not None else None
        except ValueError as exc:
            raise AuditIntegrityError(str(exc)) from None
        with self._lock:
            self._scanned = time.monotonic()
            known = self._anchor
            if read is not None and known is not None and read.epoch > known.epoch:
                # An operator re-anchored (accept-rollback, perhaps from another process): the
                # head this process saw before no longer binds it.
                self._store.reset_high_water()
            if read is not None and (known is None or read.order > known.order):
                self._anchor = read
            return self._anchor

    def rollback_problem(self, anchor: Anchor | None) -> tuple[int, str] | None:
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
        if not self._signed(anchor):
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

    def current_problem(self) -> tuple[int, str] | None:
        """``rollback_problem`` against the anchor this process knows, confirmed against the HSM
        as it is now when there is one (an operator may have reset the anchor meanwhile)."""
        problem = self.rollback_problem(self.known())
        if problem is not None:
            problem = self.rollback_problem(self.known(rescan=True))
        return problem

    def with_anchor(self, report: LogReport) -> LogReport:
        """The report, with the database checked against the HSM anchor (read afresh)."""
        try:
            anchor = self.known(rescan=True)
            problem = self.rollback_problem(anchor)
        except AuditIntegrityError as exc:  # an anchor object this version cannot read
            anchor, problem = None, (0, exc.message)
        report = replace(report, anchor=anchor)
        if problem is None or (not report.ok and (report.bad_seq or 0) <= problem[0]):
            return report
        return replace(report, ok=False, bad_seq=problem[0], problem=problem[1], rolled_back=True)

    def _signed(self, anchor: Anchor) -> bool:
        encoded = anchor.encode()
        if encoded == self._signature_ok:
            return True
        cert = self._verifier.checkpoint_public_key(anchor.seq)  # the key of its era (rotation)
        ok = cert is not None and ecdsa_ok(
            cert, anchor.signature, chain.checkpoint_message(anchor.seq, anchor.head_hash, anchor.ts)
        )
        if ok:
            self._signature_ok = encoded
        return ok

    def move_to(self, cp: CheckpointView) -> None:
        """Move the HSM anchor to ``cp`` (committed, verified). A failure leaves the checkpoint
        unanchored until the next try (``watch``); the anchor then lags, it never lies."""
        with self._lock:
            known = self._anchor
        if known is not None and cp.seq <= known.seq:
            self.unanchored = None
            return
        anchor = Anchor(known.epoch if known else 0, cp.seq, cp.head_hash, cp.ts, cp.signature)
        try:
            self._anchors.write_anchor(anchor.encode())
        except RsignError as exc:
            log.error("checkpoint %d signed but not anchored in the HSM: %s", cp.seq, exc.message)
            self.unanchored = cp
            return
        self.unanchored = None
        with self._lock:
            if self._anchor is None or anchor.order > self._anchor.order:
                self._anchor = anchor

    def reset(self, cp: CheckpointView) -> Anchor:
        """Re-anchor the HSM at ``cp`` in a new epoch (accept-rollback), whatever it held."""
        stored = self._anchors.reset_anchor(Anchor(0, cp.seq, cp.head_hash, cp.ts, cp.signature).encode())
        new = Anchor.decode(stored)
        with self._lock:
            self._anchor = new
            self._scanned = time.monotonic()
        self.unanchored = None
        return new
