"""Baseline: exactly the schema rsign 0.1 created with ``create_all``, and its version marker.

A database rsign 0.1 created is stamped at this revision by ``rsign db upgrade`` (nothing to run);
a new database runs it. Written out table by table, never from the models: later revisions change
the models, and this revision must keep producing what 0.1 produced.

Revision ID: 0001_baseline
Revises:

"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

# revision identifiers, used by Alembic.
revision: str = "0001_baseline"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "audit_checkpoints",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("head_hash", sa.String(length=64), nullable=False),
        sa.Column("ts", sa.String(length=32), nullable=False),
        sa.Column("signature", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_table(
        "audit_head",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "audit_keys",
        sa.Column("purpose", sa.String(length=16), nullable=False),
        sa.Column("cka_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("certificate", sa.LargeBinary(), nullable=False),
        sa.Column("chain", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("purpose"),
    )
    op.create_table(
        "audit_log",
        sa.Column("seq", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("ts", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("agency", sa.String(length=256), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("credential_id", sa.String(length=128), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("digest", sa.String(length=160), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("client", sa.String(length=128), nullable=False),
        sa.Column("details", sa.Text(), nullable=False),
        sa.Column("prev_hash", sa.String(length=64), nullable=False),
        sa.Column("hash", sa.String(length=64), nullable=False),
        sa.Column("mac", sa.String(length=64), nullable=False),
        sa.PrimaryKeyConstraint("seq"),
    )
    op.create_index("ix_audit_action", "audit_log", ["action"])
    op.create_index("ix_audit_actor", "audit_log", ["actor"])
    op.create_index("ix_audit_agency", "audit_log", ["agency"])
    op.create_index("ix_audit_credential", "audit_log", ["credential_id"])
    op.create_index("ix_audit_ts", "audit_log", ["ts"])

    op.create_table(
        "consumed_hashes",
        sa.Column("credential_id", sa.String(length=128), nullable=False),
        sa.Column("digest", sa.LargeBinary(length=64), nullable=False),
        sa.Column("occurrence", sa.Integer(), nullable=False),
        sa.Column("sad_id", sa.Integer(), nullable=False),
        sa.Column("position", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("credential_id", "digest", "occurrence"),
    )
    op.create_table(
        "replicas",
        sa.Column("replica_id", sa.String(length=32), nullable=False),
        sa.Column("host", sa.String(length=256), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("lease_until", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("replica_id"),
    )
    op.create_table(
        "rsign_meta",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("value", sa.String(length=256), nullable=False),
        sa.PrimaryKeyConstraint("key"),
    )
    op.create_table(
        "sads",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("sad_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("session_id", sa.Integer(), nullable=False),
        sa.Column("credential_id", sa.String(length=128), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("hash_alg", sa.String(length=16), nullable=False),
        sa.Column("hashes", sa.LargeBinary(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("issued_at", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("consumed_at", sa.Float(), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        sa.UniqueConstraint("sad_hash"),
    )
    op.create_table(
        "signing_inflight",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("replica_id", sa.String(length=32), nullable=False),
        sa.Column("stream_id", sa.Integer(), nullable=True),
        sa.Column("sad_id", sa.Integer(), nullable=False),
        sa.Column("credential_id", sa.String(length=128), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("hash_alg", sa.String(length=16), nullable=False),
        sa.Column("start", sa.Integer(), nullable=False),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("agency", sa.String(length=256), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("client", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "signing_streams",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("replica_id", sa.String(length=32), nullable=False),
        sa.Column("sad_id", sa.Integer(), nullable=False),
        sa.Column("credential_id", sa.String(length=128), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(length=64), nullable=False),
        sa.Column("authorized", sa.Integer(), nullable=False),
        sa.Column("received", sa.Integer(), nullable=False),
        sa.Column("signed", sa.Integer(), nullable=False),
        sa.Column("failed", sa.Integer(), nullable=False),
        sa.Column("actor", sa.String(length=128), nullable=False),
        sa.Column("agency", sa.String(length=256), nullable=False),
        sa.Column("request_id", sa.String(length=64), nullable=False),
        sa.Column("client", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_table(
        "users",
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("name", sa.String(length=256), nullable=False),
        sa.Column("name_folded", sa.String(length=256), nullable=False),
        sa.Column("agency", sa.String(length=256), nullable=False),
        sa.Column("role", sa.String(length=32), nullable=False),
        sa.Column("scope", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("pin_hash", sa.String(length=256), nullable=False),
        sa.Column("totp_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("last_otp_step", sa.BigInteger(), nullable=False),
        sa.Column("failed_attempts", sa.Integer(), nullable=False),
        sa.Column("locked", sa.Boolean(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("user_id"),
    )
    op.create_index("ix_users_agency", "users", ["agency"])
    op.create_index("ix_users_name_folded", "users", ["name_folded"])

    op.create_table(
        "credentials",
        sa.Column("credential_id", sa.String(length=128), nullable=False),
        sa.Column("holder_user_id", sa.String(length=128), nullable=True),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("agency", sa.String(length=256), nullable=False),
        sa.Column("key_algorithm", sa.String(length=16), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("status_reason", sa.String(length=256), nullable=False),
        sa.Column("key_version", sa.Integer(), nullable=False),
        sa.Column("multisign", sa.Integer(), nullable=False),
        sa.Column("not_after", sa.Float(), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["holder_user_id"],
            ["users.user_id"],
        ),
        sa.PrimaryKeyConstraint("credential_id"),
    )
    op.create_index("ix_credentials_agency", "credentials", ["agency"])
    op.create_index("ix_credentials_holder_user_id", "credentials", ["holder_user_id"])
    op.create_index("ix_credentials_not_after", "credentials", ["not_after"])
    op.create_index("ix_credentials_status", "credentials", ["status"])

    op.create_table(
        "sessions",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("token_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.Column("last_seen", sa.Float(), nullable=False),
        sa.Column("expires_at", sa.Float(), nullable=False),
        sa.Column("ended_at", sa.Float(), nullable=True),
        sa.Column("end_reason", sa.String(length=32), nullable=True),
        sa.PrimaryKeyConstraint("id"),
        # 0.1 created this table with its constraints in this order (SQLite keeps the DDL text).
        sa.UniqueConstraint("token_hash"),
        sa.ForeignKeyConstraint(["user_id"], ["users.user_id"]),
    )
    op.create_index("ix_sessions_user_id", "sessions", ["user_id"])

    op.create_table(
        "destroy_approvals",
        sa.Column("credential_id", sa.String(length=128), nullable=False),
        sa.Column("officer_user_id", sa.String(length=128), nullable=False),
        sa.Column("requested_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["credential_id"],
            ["credentials.credential_id"],
        ),
        sa.PrimaryKeyConstraint("credential_id", "officer_user_id"),
    )
    op.create_table(
        "key_versions",
        sa.Column("credential_id", sa.String(length=128), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("cka_id", sa.LargeBinary(length=32), nullable=False),
        sa.Column("certificate", sa.LargeBinary(), nullable=False),
        sa.Column("chain", sa.LargeBinary(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("created_at", sa.Float(), nullable=False),
        sa.ForeignKeyConstraint(
            ["credential_id"],
            ["credentials.credential_id"],
        ),
        sa.PrimaryKeyConstraint("credential_id", "version"),
        sa.UniqueConstraint("cka_id"),
    )
    op.create_table(
        "seal_users",
        sa.Column("credential_id", sa.String(length=128), nullable=False),
        sa.Column("user_id", sa.String(length=128), nullable=False),
        sa.ForeignKeyConstraint(
            ["credential_id"],
            ["credentials.credential_id"],
        ),
        sa.ForeignKeyConstraint(
            ["user_id"],
            ["users.user_id"],
        ),
        sa.PrimaryKeyConstraint("credential_id", "user_id"),
    )
    # rsign 0.1 refused any database without this marker; kept so that the two are one schema.
    op.bulk_insert(
        sa.table("rsign_meta", sa.column("key", sa.String), sa.column("value", sa.String)),
        [{"key": "schema_version", "value": "1"}],
    )


def downgrade() -> None:
    op.drop_table("seal_users")
    op.drop_table("key_versions")
    op.drop_table("destroy_approvals")
    op.drop_index("ix_sessions_user_id", table_name="sessions")

    op.drop_table("sessions")
    op.drop_index("ix_credentials_status", table_name="credentials")
    op.drop_index("ix_credentials_not_after", table_name="credentials")
    op.drop_index("ix_credentials_holder_user_id", table_name="credentials")
    op.drop_index("ix_credentials_agency", table_name="credentials")

    op.drop_table("credentials")
    op.drop_index("ix_users_name_folded", table_name="users")
    op.drop_index("ix_users_agency", table_name="users")

    op.drop_table("users")
    op.drop_table("signing_streams")
    op.drop_table("signing_inflight")
    op.drop_table("sads")
    op.drop_table("rsign_meta")
    op.drop_table("replicas")
    op.drop_table("consumed_hashes")
    op.drop_index("ix_audit_ts", table_name="audit_log")
    op.drop_index("ix_audit_credential", table_name="audit_log")
    op.drop_index("ix_audit_agency", table_name="audit_log")
    op.drop_index("ix_audit_actor", table_name="audit_log")
    op.drop_index("ix_audit_action", table_name="audit_log")

    op.drop_table("audit_log")
    op.drop_table("audit_keys")
    op.drop_table("audit_head")
    op.drop_table("audit_checkpoints")
