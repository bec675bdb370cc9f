"""Signed checkpoints and their HSM anchor over time: signing one (never over a log that fails
verification or is behind its anchor), the file an auditor keeps, the every-second watch while
serving, the check before serving, and ``accept_rollback``, the operator's audited way out."""

from __future__ import annotations

import hashlib
import logging
import threading
from dataclasses import dataclass
from typing import Protocol

from rsign.audit import chain
from rsign.audit.anchoring import AnchorKeeper
from rsign.audit.journal import AuditedStore
from rsign.audit.keys import AuditKeys
from rsign.audit.offline import checkpoint_file
from rsign.audit.verification import LogVerifier, ecdsa_ok
from rsign.domain.anchor import Anchor
from rsign.domain.clock import Clock, iso_utc
from rsign.domain.errors import AuditIntegrityError, AuditRollback, FailedPrecondition, InvalidRequest, RsignError
from rsign.domain.events import Action, event
from rsign.domain.records import CheckpointView

log = logging.getLogger(__name__)

RECOVERY = "see `rsign audit verify`; after investigating, `rsign audit accept-rollback --reason ...` resumes"


@dataclass(frozen=True)
class AnchorReset:
    """What ``accept_rollback`` did: the anchor before (None: none, or unreadable) and after."""

    old: Anchor | None
    new: Anchor
    found: str  # what was wrong (or that nothing was visibly wrong)
    record_seq: int  # the audit.anchor_reset record


class Checkpoints:
    def __init__(
        self, store: AuditedStore, keys: AuditKeys, clock: Clock, verifier: LogVerifier, anchor: AnchorKeeper
    ) -> None:
        self._store = store
        self._keys = keys
        self._clock = clock
        self._verifier = verifier
        self._anchor = anchor
        # One checkpoint at a time in this process; the database arbitrates between replicas.
        self._lock = threading.Lock()

    def checkpoint(self) -> CheckpointView | None:
        """Sign (head seq, head hash, now) if the log grew since the last checkpoint.

        Never signs a state inconsistent with an earlier checkpoint: the records since the last
        checkpoint must chain from its head and carry valid MACs, or nothing is signed.

        Security trade-off: the walk checks the stored links and every MAC (in the HSM), not
        each record's content against its hash. Re-hashing every record once more cost a third
        of the serving process's CPU on the batch path, and adds nothing to what the checkpoint
        attests: it signs a head hash whose MAC shows rsign computed it, at append time, from the
        content it was given (each append checks the previous head's MAC before chaining on), so
        a record edited in the database afterwards is not covered but contradicted: it fails
        ``rsign audit verify`` and every export against this very checkpoint. A chain rewritten
        to match an edit fails its MACs here, and nothing is signed. What is given up is the
        alarm for an edit that leaves the hashes alone *within the window* between a record's
        write and the next checkpoint (10 s or 10,000 records): this refusal logged an error,
        let ``rsign_audit_seconds_since_checkpoint`` grow and put a warning in export headers.
        Records older than the last checkpoint were never re-read here, so an edit of history
        had no such alarm before either; ``rsign audit verify`` (contents included), run on a
        schedule, raises it for any record.
        """
        with self._lock:
            problem = self._anchor.current_problem()
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
            rep = self._verifier.verify(after, start_hash, contents=False)
            if not rep.ok:
                raise AuditIntegrityError(f"refusing to sign a checkpoint: {rep.problem}")
            ts = iso_utc(self._clock.now())
            # Sign what was verified (one snapshot), not the head read earlier: appends go on meanwhile.
            key = self._keys.signing_key
            sig = self._keys.sign(chain.checkpoint_message(rep.head_seq, rep.head_hash, ts), key)
            cp = CheckpointView(rep.head_seq, rep.head_hash, ts, sig)
            with self._store.tx() as t:
                # Still the current key (row-locked against a rotation): a checkpoint signed by a
                # key rotated out meanwhile would fall in its successor's era and fail to verify.
                current = t.audit_key("checkpoint", lock=True)
                added = current is not None and current.cka_id == key.cka_id and t.add_checkpoint(cp)
            if not added:
                self._keys.reload()
                return None  # another replica signed one at or beyond it (that one is anchored), or a rotation
            # Anchored only once committed: the anchor never names a checkpoint the database lacks.
            self._anchor.move_to(cp)
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
        cert = self._verifier.checkpoint_public_key(cp.seq)
        if not ecdsa_ok(cert, cp.signature, chain.checkpoint_message(cp.seq, cp.head_hash, cp.ts)):
            raise AuditIntegrityError(f"checkpoint {cp.seq}: signature invalid (run `rsign audit verify`)")
        if at is None or at[0] != cp.head_hash:
            raise AuditIntegrityError(f"checkpoint {cp.seq} does not match the log (run `rsign audit verify`)")
        # The certificate of the key that signed it (the previous one, just after a rotation).
        cert_sha256 = hashlib.sha256(self._keys.signing_key_for(cp.seq).certificate).hexdigest()
        return checkpoint_file(cp.seq, cp.head_hash, cp.ts, cp.signature, cert_sha256)

    def watch(self) -> str:
        """Every second while serving: halt the journal (every operation refused, health
        NOT_SERVING) while the database is behind the HSM anchor or its head went back; resume
        once an operator re-anchored. Returns the problem, "" when there is none."""
        try:
            problem = self._anchor.current_problem()
        except AuditIntegrityError as exc:
            problem = (0, exc.message)
        if problem is not None:
            self._store.halt(problem[1])
            return problem[1]
        self._store.resume()
        if self._anchor.unanchored is not None:
            with self._lock:
                if self._anchor.unanchored is not None:
                    self._anchor.move_to(self._anchor.unanchored)
        return ""

    def check_before_serving(self) -> None:
        """Refuse to serve (``AuditRollback``, one line) a log behind its HSM anchor. Otherwise
        anchor the latest checkpoint if the HSM holds an older one or none (the first start after
        an upgrade, or an anchor write that failed), once its signature and record check out."""
        try:
            anchor = self._anchor.known(rescan=True)
            problem = self._anchor.rollback_problem(anchor)
        except AuditIntegrityError as exc:
            raise AuditRollback(f"refusing to serve: {exc.message}; {RECOVERY}") from None
        if problem is not None:
            raise AuditRollback(f"refusing to serve: the audit log was rolled back: {problem[1]}; {RECOVERY}")
        with self._store.read() as t:
            last = t.last_checkpoint()
            at = t.audit_hash_and_mac(last.seq) if last is not None else None
        if last is None or at is None or at[0] != last.head_hash or (anchor is not None and last.seq <= anchor.seq):
            return
        cert = self._verifier.checkpoint_public_key(last.seq)
        if cert is not None and ecdsa_ok(
            cert, last.signature, chain.checkpoint_message(last.seq, last.head_hash, last.ts)
        ):
            with self._lock:
                self._anchor.move_to(last)

    def accept_rollback(self, reason: str) -> AnchorReset:
        """The operator's explicit, audited recovery: re-anchor the HSM at the database's current
        head, which must verify on its own (chain, MACs, checkpoints), and record
        ``audit.anchor_reset`` with the old and new anchors; then checkpoint over that record.
        Servers halted on this log resume by themselves (they see the anchor's epoch go up)."""
        reason = reason.strip()
        if not reason:
            raise InvalidRequest("give the reason for accepting the rollback (--reason): it goes into the audit record")
        self._keys.require_certificate()
        with self._lock:
            try:
                old = self._anchor.known(rescan=True)
                found = self._anchor.rollback_problem(old)
                what = found[1] if found else "the database matched the HSM anchor (no rollback visible here)"
            except AuditIntegrityError as exc:
                old, what = None, exc.message
            rep = self._verifier.verify()
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
            new = self._anchor.reset(cp)
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


class _Checkpointing(Protocol):
    def watch(self) -> str: ...

    def checkpoint(self) -> CheckpointView | None: ...


class Checkpointer:
    """Signs a checkpoint every ``every_records`` records or ``interval`` seconds, and at stop;
    every second, checks the log against its HSM anchor (``watch``)."""

    def __init__(self, audit: _Checkpointing, store: AuditedStore, every_records: int, interval: float) -> None:
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
