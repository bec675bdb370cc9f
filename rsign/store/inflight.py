"""The in-flight ledger (signing work consumed but not yet settled), open streams, and the
replicas' leases. What the rows mean, and who writes them when: ``rsign.signing.recovery``."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Float, bindparam, delete, exists, insert, literal_column, not_, select, text, update
from sqlalchemy.sql.elements import ColumnElement

from rsign.domain.records import InflightView, StreamView
from rsign.store._core import INFLIGHT, REPLICAS, STREAMS, rowcount
from rsign.store.fast import FastStatement

_CHUNK = 500  # ids per IN (...) list

# The statements every stream chunk's commit and every unary SignHash run, built once: building
# them as Core expressions per call cost 1.3 ms per chunk (in the single-writer commit). The ledger
# rows go on the driver's cursor (rsign/store/fast.py); the stream count as fixed text.
_INFLIGHT_FIELDS = (
    "replica_id", "stream_id", "sad_id", "credential_id", "key_version", "hash_alg", "start", "count", "actor",
    "agency", "request_id", "client", "created_at",
)  # fmt: skip
_ADD_INFLIGHT = FastStatement(
    insert(INFLIGHT).values({f: bindparam(f) for f in _INFLIGHT_FIELDS}).returning(INFLIGHT.c.id)
)
_END_INFLIGHT = FastStatement(delete(INFLIGHT).where(INFLIGHT.c.id == bindparam("id")))
_COUNT_STREAM = text(
    "UPDATE signing_streams SET received = received + :received, signed = signed + :signed,"
    " failed = failed + :failed WHERE id = :id"
)


def _db_now(c: Connection) -> ColumnElement[float]:
    """The database server's clock, in Unix seconds: leases are compared in one clock whatever the
    replicas' own clocks say (the service clock is also checked against it: time-sync health)."""
    if c.dialect.name == "sqlite":
        return literal_column("((julianday('now') - 2440587.5) * 86400.0)", Float)
    return literal_column("CAST(extract(epoch from clock_timestamp()) AS double precision)", Float)


def _inflight(r: Any) -> InflightView:
    return InflightView(
        r.id,
        r.replica_id,
        r.stream_id,
        r.sad_id,
        r.credential_id,
        r.key_version,
        r.hash_alg,
        r.start,
        r._mapping["count"],
        r.actor,
        r.agency,
        r.request_id,
        r.client,
    )


def _stream(r: Any) -> StreamView:
    return StreamView(
        r.id,
        r.replica_id,
        r.sad_id,
        r.credential_id,
        r.key_version,
        r.fingerprint,
        r.authorized,
        r.received,
        r.signed,
        r.failed,
        r.actor,
        r.agency,
        r.request_id,
        r.client,
    )


class InflightRepo:
    c: Connection

    # -- clock and leases ----------------------------------------------------------------------

    def database_time(self) -> float:
        return float(self.c.execute(select(_db_now(self.c))).scalar_one())

    def renew_lease(self, replica_id: str, host: str, pid: int, seconds: float) -> None:
        until = _db_now(self.c) + seconds
        res = self.c.execute(update(REPLICAS).where(REPLICAS.c.replica_id == replica_id).values(lease_until=until))
        if rowcount(res) == 0:
            self.c.execute(insert(REPLICAS).values(replica_id=replica_id, host=host, pid=pid, lease_until=until))

    def replicas_holding(self, me: str) -> dict[str, bool]:
        """Replicas other than ``me`` that hold in-flight rows or open streams, each with whether
        its lease has run out (True too when it has no lease row: a replica writes its lease in
        the transaction that inserts its first row, so a holder without one is long gone)."""
        holders = {
            str(r[0]) for r in self.c.execute(select(INFLIGHT.c.replica_id).union(select(STREAMS.c.replica_id))).all()
        } - {me}
        return self._expired(sorted(holders), default=True)

    def idle_replicas(self, me: str) -> dict[str, bool]:
        """Replicas other than ``me`` that hold nothing, each with whether its lease has run out."""
        rows = self.c.execute(
            select(REPLICAS.c.replica_id).where(
                REPLICAS.c.replica_id != me,
                not_(exists().where(INFLIGHT.c.replica_id == REPLICAS.c.replica_id)),
                not_(exists().where(STREAMS.c.replica_id == REPLICAS.c.replica_id)),
            )
        ).all()
        return self._expired(sorted(str(r[0]) for r in rows), default=True)

    def _expired(self, ids: list[str], default: bool) -> dict[str, bool]:
        out = dict.fromkeys(ids, default)
        for i in range(0, len(ids), _CHUNK):
            rows = self.c.execute(
                select(REPLICAS.c.replica_id, REPLICAS.c.lease_until < _db_now(self.c)).where(
                    REPLICAS.c.replica_id.in_(ids[i : i + _CHUNK])
                )
            ).all()
            out.update((str(r[0]), bool(r[1])) for r in rows)
        return out

    def drop_replica(self, replica_id: str) -> bool:
        """Forget a replica's lease, if it holds nothing (any more)."""
        res = self.c.execute(
            delete(REPLICAS).where(
                REPLICAS.c.replica_id == replica_id,
                not_(exists().where(INFLIGHT.c.replica_id == replica_id)),
                not_(exists().where(STREAMS.c.replica_id == replica_id)),
            )
        )
        return rowcount(res) == 1

    # -- in-flight rows ------------------------------------------------------------------------

    def add_inflight(
        self,
        replica_id: str,
        stream_id: int | None,
        sad_id: int,
        credential_id: str,
        key_version: int,
        hash_alg: str,
        start: int,
        count: int,
        who: tuple[str, str, str, str],  # actor, agency, request id, client
        now: float,
    ) -> int:
        actor, agency, request_id, client = who
        row = _ADD_INFLIGHT.first(
            self.c,
            {
                "replica_id": replica_id,
                "stream_id": stream_id,
                "sad_id": sad_id,
                "credential_id": credential_id,
                "key_version": key_version,
                "hash_alg": hash_alg,
                "start": start,
                "count": count,
                "actor": actor,
                "agency": agency,
                "request_id": request_id,
                "client": client,
                "created_at": now,
            },
        )
        return int(row[0])

    def end_inflight(self, ids: Sequence[int]) -> int:
        """Delete ledger rows; how many existed (fewer: another replica reconciled them already)."""
        return sum(_END_INFLIGHT.rowcount(self.c, {"id": i}) for i in ids)

    def inflight_rows(
        self, *, replica_id: str | None = None, ids: Sequence[int] = (), stream_id: int | None = None, limit: int = 100
    ) -> list[InflightView]:
        q = select(INFLIGHT)
        if replica_id is not None:
            q = q.where(INFLIGHT.c.replica_id == replica_id)
        if ids:
            q = q.where(INFLIGHT.c.id.in_(list(ids)))
        if stream_id is not None:
            q = q.where(INFLIGHT.c.stream_id == stream_id)
        return [_inflight(r) for r in self.c.execute(q.order_by(INFLIGHT.c.id).limit(limit)).all()]

    # -- open streams --------------------------------------------------------------------------

    def add_stream(
        self,
        replica_id: str,
        sad_id: int,
        credential_id: str,
        key_version: int,
        fingerprint: str,
        authorized: int,
        who: tuple[str, str, str, str],
        now: float,
    ) -> int:
        actor, agency, request_id, client = who
        res = self.c.execute(
            insert(STREAMS)
            .values(
                replica_id=replica_id,
                sad_id=sad_id,
                credential_id=credential_id,
                key_version=key_version,
                fingerprint=fingerprint,
                authorized=authorized,
                received=0,
                signed=0,
                failed=0,
                actor=actor,
                agency=agency,
                request_id=request_id,
                client=client,
                created_at=now,
            )
            .returning(STREAMS.c.id)
        )
        return int(res.scalar_one())

    def count_stream(self, stream_id: int, received: int = 0, signed: int = 0, failed: int = 0) -> bool:
        """Add to a stream's counts; False when the stream is no longer open (reconciled)."""
        res = self.c.execute(
            _COUNT_STREAM, {"received": received, "signed": signed, "failed": failed, "id": stream_id}
        )
        return rowcount(res) == 1

    def stream_rows(self, *, replica_id: str | None = None, ids: Sequence[int] = ()) -> list[StreamView]:
        q = select(STREAMS)
        if replica_id is not None:
            q = q.where(STREAMS.c.replica_id == replica_id)
        if ids:
            q = q.where(STREAMS.c.id.in_(list(ids)))
        return [_stream(r) for r in self.c.execute(q.order_by(STREAMS.c.id)).all()]

    def end_stream(self, stream_id: int) -> StreamView | None:
        """Close a stream: its final counts, or None when it was closed already (by another replica)."""
        r = self.c.execute(delete(STREAMS).where(STREAMS.c.id == stream_id).returning(*STREAMS.c)).first()
        return None if r is None else _stream(r)
