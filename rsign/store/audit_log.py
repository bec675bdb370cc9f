"""Audit log rows, the chain head, checkpoints and audit key records: storage primitives only.

The append rule (chain hashes, the MAC check of the previous head) is ``rsign.audit.journal``'s."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from rsign.domain.events import EventFilter
from rsign.domain.records import AuditKeyEra, AuditKeyView, CheckpointView
from rsign.store._core import (
    AUDIT,
    AUDIT_KEY_ERAS,
    AUDIT_KEYS,
    CHECKPOINTS,
    HEAD,
    insert_tuples,
    pack_certs,
    unpack_certs,
)
from rsign.store.fast import FastStatement

# The append path's statements, built once and run on the driver (rsign.store.fast): every audited
# transaction runs them.
_LOCK_HEAD = FastStatement(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == 1).with_for_update())
_HASH_AND_MAC = FastStatement(select(AUDIT.c.hash, AUDIT.c.mac).where(AUDIT.c.seq == bindparam("seq")))
# A record's columns, in the order ``insert_audit_rows`` takes them.
AUDIT_ROW_COLUMNS = (
    "seq", "ts", "actor", "agency", "action", "result", "credential_id", "key_version", "digest", "reason",
    "request_id", "client", "details", "prev_hash", "hash", "mac",
)  # fmt: skip
# The checkpointer's walk over the records since the last checkpoint (links and MACs only).
_LINKS = FastStatement(
    select(AUDIT.c.seq, AUDIT.c.prev_hash, AUDIT.c.hash, AUDIT.c.mac)
    .where(AUDIT.c.seq > bindparam("after"))
    .order_by(AUDIT.c.seq)
    .limit(bindparam("n"))
)
# (A bind parameter may not share a name with a column its UPDATE sets.)
_MOVE_HEAD = FastStatement(
    update(HEAD).where(HEAD.c.id == 1).values(seq=bindparam("new_seq"), hash=bindparam("new_hash"))
)


class AuditLogRepo:
    c: Connection

    def init_head(self, genesis: str) -> None:
        if self.c.execute(select(HEAD.c.id).where(HEAD.c.id == 1)).first() is None:
            self.c.execute(insert(HEAD).values(id=1, seq=0, hash=genesis))

    def lock_head(self) -> tuple[int, str]:
        """The chain head, locked until this transaction ends (appends are serialised on it)."""
        head = _LOCK_HEAD.first(self.c)
        return int(head.seq), str(head.hash)

    def insert_audit_rows(self, rows: list[tuple[Any, ...]]) -> None:
        """Rows as tuples in ``AUDIT_ROW_COLUMNS`` order (the batch path builds hundreds per chunk)."""
        insert_tuples(self.c, AUDIT, AUDIT_ROW_COLUMNS, rows)

    def audit_hash_and_mac(self, seq: int) -> tuple[str, str] | None:
        r = _HASH_AND_MAC.first(self.c, {"seq": seq})
        return None if r is None else (str(r.hash), str(r.mac))

    def move_head(self, seq: int, head_hash: str) -> None:
        """Move the head to record ``seq`` (inserted in this transaction, with its MAC)."""
        _MOVE_HEAD.rowcount(self.c, {"new_seq": seq, "new_hash": head_hash})

    def audit_head(self) -> tuple[int, str] | None:
        h = self.c.execute(select(HEAD.c.seq, HEAD.c.hash).where(HEAD.c.id == 1)).first()
        return None if h is None else (int(h.seq), str(h.hash))

    def audit_rows(
        self, columns: Sequence[str] = (), after: int = 0, upto: int | None = None, batch: int = 5000
    ) -> Iterator[dict[str, Any]]:
        """``columns`` (default: all) of the records ``after`` < seq <= ``upto``, in order."""
        cols = [AUDIT.c[f] for f in columns] if columns else list(AUDIT.c)
        keys = [c.key for c in cols]
        at = keys.index("seq") if "seq" in keys else -1
        last = after
        while True:
            q = select(*cols, AUDIT.c.seq) if at < 0 else select(*cols)
            q = q.where(AUDIT.c.seq > last)
            if upto is not None:
                q = q.where(AUDIT.c.seq <= upto)
            rows = self.c.execute(q.order_by(AUDIT.c.seq).limit(batch)).all()
            if not rows:
                return
            # zip over the row's values: the checkpointer reads back every record this way, and a
            # row's mapping view cost more than hashing the record.
            for r in rows:
                yield dict(zip(keys, r, strict=False))
            last = int(rows[-1][at])

    def audit_links(self, after: int = 0, batch: int = 5000) -> Iterator[tuple[int, str, str, str]]:
        """``(seq, prev_hash, hash, mac)`` of the records after ``after``, in order, as the driver
        gives them (the checkpointer reads every record once: a row object each cost more than
        its walk)."""
        last = after
        while True:
            rows = _LINKS.tuples(self.c, {"after": last, "n": batch})
            if not rows:
                return
            yield from rows
            last = int(rows[-1][0])

    def audit_record(self, seq: int) -> dict[str, Any] | None:
        r = self.c.execute(select(AUDIT).where(AUDIT.c.seq == seq)).first()
        return None if r is None else dict(r._mapping)

    def find_events(self, flt: EventFilter, after: int, limit: int) -> list[dict[str, Any]]:
        """Records matching ``flt`` with seq > ``after``, oldest first (stable pagination by seq)."""
        q = select(AUDIT).where(AUDIT.c.seq > after)
        for clause in _filter_clauses(flt):
            q = q.where(clause)
        return [dict(r._mapping) for r in self.c.execute(q.order_by(AUDIT.c.seq).limit(limit)).all()]

    def last_events(self, flt: EventFilter, limit: int) -> list[dict[str, Any]]:
        q = select(AUDIT)
        for clause in _filter_clauses(flt):
            q = q.where(clause)
        rows = self.c.execute(q.order_by(AUDIT.c.seq.desc()).limit(limit)).all()
        return [dict(r._mapping) for r in reversed(rows)]

    def checkpoints(self) -> list[CheckpointView]:
        rows = self.c.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.seq)).all()
        return [CheckpointView(int(r.seq), r.head_hash, r.ts, bytes(r.signature)) for r in rows]

    def last_checkpoint(self) -> CheckpointView | None:
        r = self.c.execute(select(CHECKPOINTS).order_by(CHECKPOINTS.c.seq.desc()).limit(1)).first()
        return None if r is None else CheckpointView(int(r.seq), r.head_hash, r.ts, bytes(r.signature))

    def checkpoint_at(self, seq: int) -> CheckpointView | None:
        r = self.c.execute(select(CHECKPOINTS).where(CHECKPOINTS.c.seq == seq)).first()
        return None if r is None else CheckpointView(int(r.seq), r.head_hash, r.ts, bytes(r.signature))

    def add_checkpoint(self, cp: CheckpointView) -> bool:
        """Insert unless a checkpoint at or beyond this sequence exists (another replica won)."""
        newer = self.c.execute(select(CHECKPOINTS.c.seq).where(CHECKPOINTS.c.seq >= cp.seq).limit(1)).first()
        if newer is not None:
            return False
        self.c.execute(insert(CHECKPOINTS).values(seq=cp.seq, head_hash=cp.head_hash, ts=cp.ts, signature=cp.signature))
        return True

    def audit_key(self, purpose: str, lock: bool = False) -> AuditKeyView | None:
        """The current key for ``purpose``; ``lock``: row-locked until this transaction ends (a
        rotation and a checkpoint signed with the key it replaces are serialised on it)."""
        q = select(AUDIT_KEYS).where(AUDIT_KEYS.c.purpose == purpose)
        r = self.c.execute(q.with_for_update() if lock else q).first()
        if r is None:
            return None
        return AuditKeyView(r.purpose, bytes(r.cka_id), bytes(r.certificate), unpack_certs(bytes(r.chain)))

    def add_audit_key(
        self, purpose: str, cka_id: bytes, certificate: bytes, chain_certs: Sequence[bytes], now: float
    ) -> None:
        self.c.execute(
            insert(AUDIT_KEYS).values(
                purpose=purpose, cka_id=cka_id, certificate=certificate, chain=pack_certs(chain_certs), created_at=now
            )
        )

    def audit_key_eras(self, purpose: str) -> list[AuditKeyEra]:
        """The keys of ``purpose`` rotated out, oldest first."""
        rows = self.c.execute(
            select(AUDIT_KEY_ERAS).where(AUDIT_KEY_ERAS.c.purpose == purpose).order_by(AUDIT_KEY_ERAS.c.last_seq)
        )
        return [
            AuditKeyEra(
                AuditKeyView(r.purpose, bytes(r.cka_id), bytes(r.certificate), unpack_certs(bytes(r.chain))),
                int(r.last_seq),
            )
            for r in rows
        ]

    def rotate_audit_key(
        self, purpose: str, last_seq: int, cka_id: bytes, certificate: bytes, chain_certs: Sequence[bytes], now: float
    ) -> None:
        """Move the current key of ``purpose`` to the eras (it covered up to ``last_seq``) and make
        ``cka_id`` the current one."""
        old = self.c.execute(select(AUDIT_KEYS).where(AUDIT_KEYS.c.purpose == purpose)).one()
        self.c.execute(
            insert(AUDIT_KEY_ERAS).values(
                purpose=purpose,
                last_seq=last_seq,
                cka_id=old.cka_id,
                certificate=old.certificate,
                chain=old.chain,
                created_at=old.created_at,
                retired_at=now,
            )
        )
        self.c.execute(
            update(AUDIT_KEYS)
            .where(AUDIT_KEYS.c.purpose == purpose)
            .values(cka_id=cka_id, certificate=certificate, chain=pack_certs(chain_certs), created_at=now)
        )

    def set_audit_key_certificate(self, purpose: str, certificate: bytes, chain_certs: Sequence[bytes]) -> None:
        self.c.execute(
            update(AUDIT_KEYS)
            .where(AUDIT_KEYS.c.purpose == purpose)
            .values(certificate=certificate, chain=pack_certs(chain_certs))
        )


def _filter_clauses(flt: EventFilter) -> list[Any]:
    out: list[Any] = []
    if flt.from_ts:
        out.append(AUDIT.c.ts >= flt.from_ts)
    if flt.to_ts:
        out.append(AUDIT.c.ts < flt.to_ts)
    for col, value in (
        ("actor", flt.actor),
        ("credential_id", flt.credential_id),
        ("agency", flt.agency),
        ("action", flt.action),
        ("result", flt.result),
    ):
        if value:
            out.append(AUDIT.c[col] == value)
    return out
