"""Audit key eras: the audit MAC and checkpoint keys rotated out, and what each covered.

``audit_keys`` keeps the current key per purpose; a rotation moves the old one here with the last
record (MAC) or checkpoint (signature) it covered, so that older records, checkpoints and exports
still verify. New, empty table: nothing to convert.

Revision ID: 0002_audit_key_eras
Revises: 0001_baseline
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_audit_key_eras"
down_revision: str | Sequence[str] | None = "0001_baseline"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_key_eras",
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("last_seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("cka_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("certificate", sa.LargeBinary(), nullable=False),
        sa.Column("chain", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("retired_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("purpose", "last_seq"),
    )


def downgrade() -> None:
    # Refused while it holds a rotated key: dropping it would leave older records unverifiable.
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT COUNT(*) FROM audit_key_eras")).scalar():
        raise RuntimeError("audit keys were rotated: downgrading would lose what verifies older records")
    op.drop_table("audit_key_eras")
