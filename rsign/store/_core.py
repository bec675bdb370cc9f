"""Tables and helpers shared by the store's repository modules (SQLAlchemy Core)."""

from __future__ import annotations

import struct
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table, insert

from rsign.store import models as m
from rsign.store.fast import insert_values

# Core tables: the hot paths run on SQLAlchemy Core (a fraction of the ORM's per-statement cost);
# the ORM classes in models.py define the schema.
USERS: Table = m.User.__table__  # type: ignore[assignment]
SESSIONS: Table = m.SessionRow.__table__  # type: ignore[assignment]
CREDS: Table = m.Credential.__table__  # type: ignore[assignment]
KEYS: Table = m.KeyVersion.__table__  # type: ignore[assignment]
SADS: Table = m.Sad.__table__  # type: ignore[assignment]
CONSUMED: Table = m.ConsumedHash.__table__  # type: ignore[assignment]
AUDIT: Table = m.AuditRecord.__table__  # type: ignore[assignment]
HEAD: Table = m.AuditHead.__table__  # type: ignore[assignment]
CHECKPOINTS: Table = m.AuditCheckpoint.__table__  # type: ignore[assignment]
META: Table = m.Meta.__table__  # type: ignore[assignment]
AUDIT_KEYS: Table = m.AuditKey.__table__  # type: ignore[assignment]
AUDIT_KEY_ERAS: Table = m.AuditKeyEra.__table__  # type: ignore[assignment]
REPLICAS: Table = m.Replica.__table__  # type: ignore[assignment]
INFLIGHT: Table = m.SigningInflight.__table__  # type: ignore[assignment]
STREAMS: Table = m.SigningStream.__table__  # type: ignore[assignment]
SEAL_USERS: Table = m.SealUser.__table__  # type: ignore[assignment]
APPROVALS: Table = m.DestroyApproval.__table__  # type: ignore[assignment]


def rowcount(result: Any) -> int:
    return int(getattr(result, "rowcount", 0))


def pack_certs(certs: Sequence[bytes]) -> bytes:
    return b"".join(struct.pack(">I", len(c)) + c for c in certs)


def unpack_certs(blob: bytes) -> tuple[bytes, ...]:
    out, i = [], 0
    while i < len(blob):
        (n,) = struct.unpack_from(">I", blob, i)
        out.append(blob[i + 4 : i + 4 + n])
        i += 4 + n
    return tuple(out)


def split_hashes(blob: bytes, size: int) -> tuple[bytes, ...]:
    return tuple(blob[i : i + size] for i in range(0, len(blob), size))


# -- engine --------------------------------------------------------------------------------------


def insert_tuples(c: Connection, table: Table, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Bulk insert of rows given as tuples in ``columns`` order. On SQLite, straight to the driver
    as multi-row INSERTs (``fast.insert_values``): SQLAlchemy's per-row parameter processing was a
    third of the batch path's database time, and a dict per row cost more than the row's insert.
    Elsewhere, Core's insertmanyvalues (multi-row INSERTs) is already the fast path."""
    if not rows:
        return
    if c.dialect.name != "sqlite":
        c.execute(insert(table), [dict(zip(columns, r, strict=True)) for r in rows])
        return
    insert_values(c, table.name, columns, rows)
