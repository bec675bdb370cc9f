"""The audit append rule, on top of the store's primitives.

Every state change in rsign is written through ``AuditedStore.tx()``: the transaction it yields is
the store's ``Tx`` plus ``append(*events)``, so a change and its audit records commit together or
not at all. Appending:

1. locks the chain head (one writer at a time, across threads, processes and replicas);
2. builds each record's hash over its content and the previous hash (``chain.record_hash``);
3. in one HSM call, checks the MAC of the record it builds on (the previous transaction's last
   record must carry rsign's MAC: nothing was slipped in or cut off since) and MACs the new last
   record, which covers every record before it through the chain;
4. inserts the rows (the last one with its MAC) and moves the head.

When the head is exactly the record this process committed last (same sequence number and hash,
nobody appended since), step 3 skips reading back that record's MAC: this process computed it and
saw it committed. Any other head, another replica's or one changed under rsign, is checked. The
check compares the head row with the record's stored hash and MAC; it never re-hashed the record's
content, which ``audit verify`` and exports do, so skipping it for our own head loses no
detection. The MAC is computed before the insert, so a store that then refuses the write has cost
one HSM call for a MAC that authenticates nothing stored (harmless), and the insert carries it
(one statement fewer per append). Without its MAC key the journal cannot be built, so there is no
path that appends unkeyed.

Group commit: concurrent callers share one database transaction, one append (one HSM MAC) and one
commit (one fsync). The first caller to find no open group becomes its leader and opens the write
transaction; callers already waiting for the connection run their changes in it one after another,
each inside a savepoint (a caller whose changes fail is undone alone: its records too), while the
leader waits for them (at most GROUP_MAX_MEMBERS callers or GROUP_MAX_WAIT); then the leader chains
every record of the group, member by member, MACs the last one and commits. Every caller returns
only once the group is durable, or raises what failed it: a record is never lost after its caller
was answered, and no caller is answered before its records are committed. A caller alone commits at
once: the leader waits only for callers that are already queued. Exactly-once rules (SAD
consumption, OTP steps, hash occurrences) are conditional UPDATEs and unique keys, which hold
within a group (its members run one after another on one connection) as across groups and replicas.

Halting (fail closed on a rolled-back log): the journal remembers the highest sequence number this
process has seen committed, and a head below it means records were deleted under it; the audit
service halts it too when the database is behind the HSM anchor (``AuditService.watch``). A halted
journal refuses every append with ``AuditHalted`` (UNAVAILABLE), so nothing that must be audited,
a signature above all, happens until an operator accepts the rollback.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from rsign.audit import chain
from rsign.audit.append_stats import AppendStats
from rsign.audit.keys import AuditKeys
from rsign.audit.rows import event_row, item_rows
from rsign.domain.clock import Clock, iso_utc
from rsign.domain.errors import AuditHalted, AuditIntegrityError
from rsign.domain.events import AuditEvent, ItemEvents, records
from rsign.domain.records import AuditKeyView
from rsign.store import Store, Tx, WriteTx

log = logging.getLogger(__name__)

# A group stops taking members at this size or after this wait, whichever comes first; a caller
# that finds nobody else waiting commits at once (a lone request is never delayed).
GROUP_MAX_MEMBERS = 128
GROUP_MAX_WAIT = 0.005  # seconds


Events = AuditEvent | ItemEvents  # one record, or a batch chunk's records built from one template
CommitListener = Callable[[Sequence[Events], int, float], None]

HALTED = (
    "operations are suspended: the audit log failed its rollback check and an operator must resolve it"
    " (`rsign audit verify`); nothing was performed"
)


class AuditedTx(Tx):
    """A store transaction that can append audit records.

    Inside a group commit the records are buffered and chained with the rest of the group when it
    commits; ``last_seq`` is the sequence number of this caller's last record once its ``with``
    block has returned (0 if it appended none)."""

    def __init__(self, inner: Tx, journal: AuditedStore, member: _Member | None = None) -> None:
        super().__init__(inner.c, inner.clock)
        self._journal = journal
        self._member = member
        self.last_seq = 0

    def append(self, *events: Events) -> int:
        """Append events to the chain in this transaction. Returns the last sequence number when
        the append is immediate, 0 when the group commit will assign it (see ``last_seq``)."""
        if self._member is not None:
            if self._journal.halted:
                raise AuditHalted(HALTED)
            self._member.events.extend(events)
            return 0
        self.last_seq = self._journal.append(self, events)
        return self.last_seq


@dataclass(frozen=True)
class _Appended:
    seq: int  # the new head
    head_hash: str
    locked_at: float  # perf_counter() when the head was locked


@dataclass
class _Member:
    events: list[Events] = field(default_factory=list)
    tx: AuditedTx | None = None


@dataclass
class _Group:
    """One write transaction shared by the callers that arrived together."""

    write: WriteTx
    members: list[_Member] = field(default_factory=list)
    running: int = 0  # members inside their body right now
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None


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
        self._commit_listeners: list[CommitListener] = []
        # Group commit (module docstring): the connection, the open group, who waits for it.
        self._mutex = threading.Lock()
        self._gc = threading.Condition()
        self._group: _Group | None = None
        self._queued = 0
        self._stats = AppendStats()
        # Appends run one at a time in this process (under the connection, ``_mutex``):
        # The head this process's last group commit left (groups commit one at a time, under
        # ``_mutex``): the next group need not read back its MAC (module docstring).
        self._own_head: tuple[int, str] | None = None
        with store.tx() as t:
            t.init_head(chain.GENESIS)

    @contextlib.contextmanager
    def tx(self) -> Iterator[AuditedTx]:
        """A write transaction, group-committed (module docstring): the caller's changes and
        records are durable, chained and MAC'd when its ``with`` block returns, or it raises."""
        with self._gc:
            self._queued += 1
        group, leader = self._join()
        member = _Member()
        at = AuditedTx(group.write.tx, self, member)
        member.tx = at
        own_error: BaseException | None = None
        try:
            with group.write.savepoint():
                yield at
        except BaseException as exc:
            own_error = exc  # this caller's changes are undone (savepoint); the group's stand
        with self._gc:
            group.running -= 1
            if own_error is None:
                group.members.append(member)
            self._gc.notify_all()
        if leader:
            self._lead(group)
        else:
            self._mutex.release()
            group.done.wait()
        if own_error is not None:
            raise own_error
        if group.error is not None:
            raise group.error
        self.saw_head(at.last_seq)  # committed: the head can never legitimately go below it

    def _join(self) -> tuple[_Group, bool]:
        """Take the connection, and the open group or a new one (then as its leader). A leader
        holds the connection from the moment it stops taking members until its group is gone, so
        whoever gets the connection finds an open group that still takes members, or none."""
        self._mutex.acquire()
        with self._gc:
            self._queued -= 1
            group = self._group
            if group is None:
                try:
                    group = self._group = _Group(self.store.begin_write())
                except BaseException:
                    self._mutex.release()
                    raise
                group.running += 1
                return group, True
            group.running += 1
            return group, False

    def _lead(self, group: _Group) -> None:
        """Let the callers already waiting run their changes in this transaction (bounded in
        members and time, with no wait at all for a caller that is alone), then chain and MAC
        every record of the group in one append and commit once."""
        deadline = time.monotonic() + GROUP_MAX_WAIT
        with self._gc:
            while (self._queued or group.running) and len(group.members) < GROUP_MAX_MEMBERS:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    break
                self._mutex.release()
                self._gc.wait(remaining)
                self._gc.release()
                try:
                    self._mutex.acquire()
                finally:
                    self._gc.acquire()
        started = time.monotonic()
        events: list[Events] = []
        try:
            events = [ev for m in group.members for ev in m.events]
            count = records(events)
            own_head, self._own_head = self._own_head, None
            # Nothing to chain, nothing appended: the head is then not this process's own (it was
            # read, not written and MAC-checked), so ``_own_head`` must not take it.
            done = self._append(group.write.tx, tuple(events), None, own_head) if count else None
            group.write.commit()
            last = 0
            if done is not None:
                self._own_head = (done.seq, done.head_hash)
                last = done.seq
                held = time.perf_counter() - done.locked_at
                with self._guard:
                    self._stats.add(len(group.members), count, held)
            seq = last - count
            for m in group.members:
                seq += records(m.events)
                if m.tx is not None and m.events:
                    m.tx.last_seq = seq
        except BaseException as exc:
            group.error = exc
            with contextlib.suppress(BaseException):
                group.write.rollback()
        finally:
            with self._gc:
                self._group = None
                group.done.set()
                self._gc.notify_all()
            self._mutex.release()
        if group.error is None and events:
            took = time.monotonic() - started
            for fn in self._commit_listeners:
                fn(events, len(group.members), took)

    def on_commit(self, listener: CommitListener) -> Callable[[], None]:
        """``listener(records, callers, seconds)`` after every committed group: the records just
        made durable, how many callers shared the commit, and how long the append (chain, MAC) and
        the commit took. Called by the group's leader after its callers were released; for
        metrics, so it must be quick and must not raise. Returns the call that removes it."""
        self._commit_listeners.append(listener)
        return lambda: self._commit_listeners.remove(listener)

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

    def append_stats(self) -> dict[str, float]:
        with self._guard:
            return self._stats.summary()

    def read(self) -> contextlib.AbstractContextManager[Tx]:
        return self.store.read()

    @property
    def healthy(self) -> bool:
        return self.store.healthy

    def append(self, t: Tx, events: tuple[Events, ...], next_mac: AuditKeyView | None = None) -> int:
        """Chain ``events`` onto the locked head and MAC the new last record (with ``next_mac``
        instead of the current key: a MAC key rotation). Returns the new head's sequence number."""
        return self._append(t, events, next_mac, None).seq

    def _append(
        self,
        t: Tx,
        events: tuple[Events, ...],
        next_mac: AuditKeyView | None,
        own_head: tuple[int, str] | None,
    ) -> _Appended:
        """``append``; ``own_head``: the head this process's previous commit left, whose MAC need
        not be read back if the head is still that one."""
        if self._halted:
            raise AuditHalted(HALTED)
        old_seq, old_hash = t.lock_head()
        locked_at = time.perf_counter()
        high = self._high_water
        if old_seq < high:
            self.halt(
                f"the log head went back from record {high} to {old_seq} while this process ran (records were deleted)"
            )
            raise AuditHalted(HALTED)
        if not events:
            return _Appended(old_seq, old_hash, locked_at)
        ts = iso_utc(self._clock.now())
        rows: list[tuple[Any, ...]] = []
        seq, prev = old_seq, old_hash
        for ev in events:
            if isinstance(ev, ItemEvents):
                seq, prev = item_rows(rows, ev, seq, prev, ts)
                continue
            seq, prev = event_row(rows, ev, seq, prev, ts)
        if not rows:
            return _Appended(old_seq, old_hash, locked_at)
        if old_seq > 0 and (old_seq, old_hash) != own_head:
            stored = t.audit_hash_and_mac(old_seq)
            key = self.keys.mac_key
            want, mac = self.keys.macs([chain.mac_message(old_seq, old_hash), chain.mac_message(seq, prev)], key)
            if stored is not None and stored[0] == old_hash and not hmac.compare_digest(stored[1], want):
                # Another process may have rotated the MAC key since this one read it: the head
                # row is locked, so the key record read now is the one that MAC'd the last record.
                current = t.audit_key("mac")
                if current is not None and current.cka_id != key.cka_id:
                    self.keys.mac_key = key = current
                    want, mac = self.keys.macs([chain.mac_message(old_seq, old_hash), chain.mac_message(seq, prev)])
            if stored is None or stored[0] != old_hash or not hmac.compare_digest(stored[1], want):
                raise AuditIntegrityError(
                    f"audit record {old_seq}, the last one written, does not carry rsign's MAC: the log was"
                    " altered outside rsign; refusing to append (run 'rsign audit verify')"
                )
            if next_mac is not None:
                (mac,) = self.keys.macs([chain.mac_message(seq, prev)], next_mac)
        else:
            (mac,) = self.keys.macs([chain.mac_message(seq, prev)], next_mac)
        rows[-1] = (*rows[-1][:-1], mac)
        t.insert_audit_rows(rows)
        t.move_head(seq, prev)
        return _Appended(seq, prev, locked_at)

    def rotate_mac_key(self, new_key: AuditKeyView, event: AuditEvent, now: float) -> int:
        """Append ``event`` (the rotation's record) as the first record MAC'd with ``new_key``, and
        make it the MAC key, in one transaction on the locked head: the previous record is checked
        with the old key, which is kept as an era covering every record up to it. Returns the
        record's sequence number."""
        with self.store.tx() as t:
            seq = self.append(t, (event,), next_mac=new_key)
            t.rotate_audit_key("mac", seq - 1, new_key.cka_id, b"", (), now)
        self.saw_head(seq)
        self.keys.reload()
        return seq

