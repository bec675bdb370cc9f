"""Signature Activation Data and consumed hash occurrences."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import Connection, bindparam, delete, insert, select, update

from rsign.domain.records import SadView
from rsign.store._core import CONSUMED, SADS, insert_tuples, split_hashes
from rsign.store.fast import FastStatement

# Hot-path statements, built once (see rsign.store.sessions).
_SAD_FIELDS = (
    "sad_hash", "user_id", "session_id", "credential_id", "key_version", "hash_alg", "hashes", "count", "issued_at",
    "expires_at",
)  # fmt: skip
_ADD_SAD = FastStatement(insert(SADS).values({f: bindparam(f"v_{f}") for f in _SAD_FIELDS}).returning(SADS.c.id))
_GET_SAD = FastStatement(select(SADS).where(SADS.c.sad_hash == bindparam("sad_hash")))
_CONSUME_SAD = FastStatement(
    update(SADS)
    .where(SADS.c.id == bindparam("sid"), SADS.c.consumed_at.is_(None), SADS.c.expires_at > bindparam("now"))
    .values(consumed_at=bindparam("now"))
)
_CONSUMED_ONE = FastStatement(  # one digest (every unary Authorize): on the driver's cursor
    select(CONSUMED.c.digest, CONSUMED.c.occurrence).where(
        CONSUMED.c.credential_id == bindparam("cid"), CONSUMED.c.digest == bindparam("digest")
    )
)
_CONSUMED = select(CONSUMED.c.digest, CONSUMED.c.occurrence).where(
    CONSUMED.c.credential_id == bindparam("cid"), CONSUMED.c.digest.in_(bindparam("digests", expanding=True))
)


class SadRepo:
    c: Connection

    def add_sad(
        self,
        sad_hash: bytes,
        user_id: str,
        session_id: int,
        credential_id: str,
        key_version: int,
        hash_alg: str,
        hashes: Sequence[bytes],
        issued_at: float,
        expires_at: float,
    ) -> int:
        values = (
            sad_hash, user_id, session_id, credential_id, key_version, hash_alg, b"".join(hashes), len(hashes),
            issued_at, expires_at,
        )  # fmt: skip
        row = _ADD_SAD.first(self.c, {f"v_{f}": v for f, v in zip(_SAD_FIELDS, values, strict=True)})
        return int(row.id)

    def get_sad(self, sad_hash: bytes, digest_size: int) -> SadView | None:
        r = _GET_SAD.first(self.c, {"sad_hash": sad_hash})
        if r is None:
            return None
        blob = bytes(r.hashes)
        count = int(r.count)
        size = len(blob) // count if count else digest_size
        return SadView(
            r.id,
            r.user_id,
            r.session_id,
            r.credential_id,
            r.key_version,
            r.hash_alg,
            split_hashes(blob, size),
            r.issued_at,
            r.expires_at,
            r.consumed_at,
        )

    def sad_hashes(self, sad_id: int) -> tuple[bytes, ...]:
        """The ordered digests a SAD was issued for (empty if there is no such SAD)."""
        r = self.c.execute(select(SADS.c.hashes, SADS.c["count"]).where(SADS.c.id == sad_id)).first()
        if r is None or not r[1]:
            return ()
        blob = bytes(r[0])
        return split_hashes(blob, len(blob) // int(r[1]))

    def consume_sad(self, sad_id: int, now: float) -> bool:
        """Exactly-once consumption: a conditional UPDATE, so two replicas cannot both win."""
        return _CONSUME_SAD.rowcount(self.c, {"sid": sad_id, "now": now}) == 1

    def consumed(self, credential_id: str, keys: Sequence[tuple[bytes, int]]) -> set[tuple[bytes, int]]:
        """Which (digest, occurrence) pairs of ``keys`` were already consumed for the credential."""
        found: set[tuple[bytes, int]] = set()
        digests = sorted({d for d, _ in keys})
        if len(digests) == 1:
            one = _CONSUMED_ONE.rows(self.c, {"cid": credential_id, "digest": digests[0]})
            return {(bytes(r[0]), int(r[1])) for r in one} & set(keys)
        for i in range(0, len(digests), 500):
            rows = self.c.execute(_CONSUMED, {"cid": credential_id, "digests": digests[i : i + 500]}).all()
            found.update((bytes(r[0]), int(r[1])) for r in rows)
        return found & set(keys)

    def consume_hashes(self, credential_id: str, sad_id: int, start: int, keys: Sequence[tuple[bytes, int]]) -> None:
        """Consume hash occurrences; a primary-key violation (already consumed, possibly by a
        concurrent request) aborts the transaction."""
        insert_tuples(
            self.c,
            CONSUMED,
            ("credential_id", "digest", "occurrence", "sad_id", "position"),
            [(credential_id, d, o, sad_id, at) for at, (d, o) in enumerate(keys, start)],
        )

    def release_hashes(self, credential_id: str, sad_id: int, positions: Sequence[int]) -> None:
        """Give back occurrences the HSM failed to sign (no signature exists), so that they can be
        authorized again."""
        for i in range(0, len(positions), 500):
            self.c.execute(
                delete(CONSUMED).where(
                    CONSUMED.c.credential_id == credential_id,
                    CONSUMED.c.sad_id == sad_id,
                    CONSUMED.c.position.in_(positions[i : i + 500]),
                )
            )
