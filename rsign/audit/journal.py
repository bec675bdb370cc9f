"""The audit append rule, on top of the store's primitives.

Every state change in rsign is written through ``AuditedStore.tx()``: the transaction it yields is
the store's ``Tx`` plus ``append(*events)``, so a change and its audit records commit together or
not at all. Appending:

1. locks the chain head (one writer at a time, across threads, processes and replicas);
2. builds each record's hash over its content and the previous hash (``chain.record_hash``);
3. inserts the rows, then, in one HSM call, checks the MAC of the record it builds on (the previous
   transaction's last record must carry rsign's MAC: nothing was slipped in or cut off since) and
   MACs the new last record, which covers every record before it through the chain;
4. moves the head.

The MAC comes after the insert succeeded, so a store that refuses writes never causes an HSM call.
Without its MAC key the journal cannot be built, so there is no path that appends unkeyed.

Halting (fail closed on a rolled-back log): the journal remembers the highest sequence number this
process has seen committed, and a head below it means records were deleted under it; the audit
service halts it too when the database is behind the HSM anchor (``AuditService.watch``). A halted
journal refuses every append with ``AuditHalted`` (UNAVAILABLE), so nothing that must be audited,
a signature above all, happens until an operator accepts the rollback.
"""

from __future__ import annotations

import contextlib
import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterator
from typing import Any

from rsign.audit import chain
from rsign.audit.keys import AuditKeys
from rsign.domain.clock import Clock, iso_utc
from rsign.domain.errors import AuditHalted, AuditIntegrityError
from rsign.domain.events import AuditEvent
from rsign.store import Store, Tx

log = logging.getLogger(__name__)

HALTED = (
    "operations are suspended: the audit log failed its rollback check and an operator must resolve it"
    " (`rsign audit verify`); nothing was performed"
)


class AuditedTx(Tx):
    """A store transaction that can append audit records."""

    def __init__(self, inner: Tx, journal: AuditedStore) -> None:
        super().__init__(inner.c, inner.clock)
        self._journal = journal
        self.last_seq = 0

    def append(self, *events: AuditEvent) -> int:
        """Append events to the chain in this transaction; returns the last sequence number."""
        self.last_seq = self._journal.append(self, events)
        return self.last_seq


class AuditedStore:
    """The store as the domain services use it: reads, and write transactions that append audit
    records under the rule above."""

    def __init__(self, store: Store, keys: AuditKeys, clock: Clock) -> None:
        self.store = store
        self.keys = keys
        self._clock = clock
        self._guard = threading.Lock()
        self._high_water = 0  # the highest sequence number this process saw committed
        self._halted = ""  # why appends are refused; "" while they are not
        self._listeners: list[Callable[[bool], None]] = []
        with store.tx() as t:
            t.init_head(chain.GENESIS)

    @contextlib.contextmanager
    def tx(self) -> Iterator[AuditedTx]:
        with self.store.tx() as t:
            at = AuditedTx(t, self)
            yield at
        self.saw_head(at.last_seq)  # committed: the head can never legitimately go below it

    # -- halting -----------------------------------------------------------------------------

    @property
    def high_water(self) -> int:
        return self._high_water

    def saw_head(self, seq: int) -> None:
        """Record a committed head (an append of this process, or the head another one left)."""
        with self._guard:
            self._high_water = max(self._high_water, seq)

    def reset_high_water(self) -> None:
        """An operator re-anchored the log (accept-rollback): its current head is the reference."""
        with self._guard:
            self._high_water = 0

    @property
    def halted(self) -> str:
        return self._halted

    def on_halt_change(self, listener: Callable[[bool], None]) -> None:
        """``listener(serving)`` on every change (the server's health follows it)."""
        self._listeners.append(listener)

    def halt(self, problem: str) -> None:
        with self._guard:
            changed, self._halted = not self._halted, problem
        if changed:
            log.critical(
                "audit log ROLLED BACK: %s. Every operation is refused until an operator runs"
                " `rsign audit accept-rollback --reason ...` (README, Audit).",
                problem,
            )
            for fn in list(self._listeners):
                fn(False)

    def resume(self) -> None:
        with self._guard:
            changed, self._halted = bool(self._halted), ""
        if changed:
            log.warning("audit log consistent with its HSM anchor again: operations resume")
            for fn in list(self._listeners):
                fn(True)

    def read(self) -> contextlib.AbstractContextManager[Tx]:
        return self.store.read()

    @property
    def healthy(self) -> bool:
        return self.store.healthy

    def append(self, t: Tx, events: tuple[AuditEvent, ...]) -> int:
        if self._halted:
            raise AuditHalted(HALTED)
        old_seq, old_hash = t.lock_head()
        high = self._high_water
        if old_seq < high:
            self.halt(
                f"the log head went back from record {high} to {old_seq} while this process ran (records were deleted)"
            )
            raise AuditHalted(HALTED)
        if not events:
            return old_seq
        ts = iso_utc(self._clock.now())
        rows: list[dict[str, Any]] = []
        seq, prev = old_seq, old_hash
        for ev in events:
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
                "details": json.dumps(ev.details, sort_keys=True, ensure_ascii=False, separators=(",", ":")),
                "prev_hash": prev,
            }
            fields["hash"] = prev = chain.record_hash(fields)
            fields["mac"] = ""
            rows.append(fields)
        t.insert_audit_rows(rows)
        if old_seq > 0:
            stored = t.audit_hash_and_mac(old_seq)
            want, mac = self.keys.macs([chain.mac_message(old_seq, old_hash), chain.mac_message(seq, prev)])
            if stored is None or stored[0] != old_hash or not hmac.compare_digest(stored[1], want):
                raise AuditIntegrityError(
                    f"audit record {old_seq}, the last one written, does not carry rsign's MAC: the log was"
                    " altered outside rsign; refusing to append (run 'rsign audit verify')"
                )
        else:
            (mac,) = self.keys.macs([chain.mac_message(seq, prev)])
        t.seal_head(seq, prev, mac)
        return seq
