"""Schema migrations (Alembic), on SQLite and PostgreSQL: a database of rsign 0.1's schema, holding
users, credentials, signatures, checkpoints and audit records, is refused until `rsign db upgrade`,
then migrated to head; the same users sign with the same keys and the audit chain verifies across
the migration. The baseline revision produces exactly the schema 0.1's ``create_all`` made."""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path

import psycopg
import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils
from sqlalchemy import create_engine, insert, text

from rsign.auth import totp
from rsign.dev import EMBEDDED
from rsign.domain import context
from rsign.domain.algorithms import HashAlg, Scheme
from rsign.domain.clock import FakeClock
from rsign.domain.errors import ConfigurationError
from rsign.domain.events import EventFilter
from rsign.domain.principal import LOCAL_OPERATOR
from rsign.domain.settings import Settings
from rsign.runtime import database
from rsign.runtime.app import App, build_app
from rsign.runtime.config import load_settings
from rsign.store import migrate
from rsign.store import models as m
from rsign.store._core import META

# Tables the revisions after the baseline add (0002: the audit key eras of key rotation).
AFTER_BASELINE = {"audit_key_eras", "passkeys", "passkey_challenges", "signing_approvals"}
PG = os.environ.get("RSIGN_TEST_PG", "host=127.0.0.1 port=5432 user=postgres dbname=postgres")
PIN = "24681357"


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'state' / 'rsign.db'}"
        return
    name = f"rsign_mig_{secrets.token_hex(4)}"
    admin = psycopg.connect(PG, autocommit=True)
    admin.execute(f"CREATE DATABASE {name}")
    params = dict(p.split("=", 1) for p in PG.split())
    try:
        yield f"postgresql+psycopg://{params['user']}@{params['host']}:{params['port']}/{name}"
    finally:
        admin.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")
        admin.close()


def settings_for(tmp_path: Path, url: str) -> Settings:
    return replace(load_settings(tmp_path / "state", embedded=EMBEDDED), database_url=url)


@dataclass
class Signer:
    seed: bytes
    certificate: bytes


def sign_one(app: App, clock: FakeClock, who: Signer, payload: bytes) -> None:
    """Log in, authorise and sign one hash as 'mig.signer' with 'MIG-1'; check the signature."""
    clock.advance(90)  # fresh TOTP steps: each code is accepted once
    step = totp.step_of(clock.now())
    with context.request(client="test"):
        token, _ = app.auth.login("mig.signer", PIN, totp.code_for_step(who.seed, step))
        principal = app.auth.authenticate(token)
        digest = hashlib.sha256(payload).digest()
        sad = app.signing.authorize(
            principal, "MIG-1", HashAlg.SHA256, [digest], totp.code_for_step(who.seed, step + 1)
        ).sad
        signed = app.signing.sign_hash(principal, "MIG-1", sad, HashAlg.SHA256, Scheme.ECDSA, [digest])
    public = x509.load_der_x509_certificate(who.certificate).public_key()
    assert isinstance(public, ec.EllipticCurvePublicKey)
    public.verify(signed.signatures[0], digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))


def schema_differences(url: str) -> list[object]:
    """What separates the database's schema from the models' (empty: the same tables, columns,
    types, nullability, keys and indexes)."""
    engine = create_engine(url)
    try:
        with engine.connect() as c:
            return list(compare_metadata(MigrationContext.configure(c), m.Base.metadata))
    finally:
        engine.dispose()


def test_release_database_with_data_migrates_to_head_and_signs(tmp_path: Path, db_url: str) -> None:
    settings = settings_for(tmp_path, db_url)
    clock = FakeClock(float(totp.step_of(time.time()) * 30))

    # Users, a credential, signatures, a signed checkpoint and their audit records.
    app = build_app(settings, pool=False, clock=clock)
    with context.request(client="test", actor="setup"):
        enr = app.auth.enrol("mig.signer", "Nguyễn Văn Minh", PIN, agency="Sở Tư pháp")
        app.auth.enrol("mig.other", "Lò Thị Hoa", PIN, agency="Sở Tư pháp")
        cred = app.keys.generate("MIG-1", "ec-p256", "mig.signer")
    who = Signer(enr.seed, cred.certificate)
    sign_one(app, clock, who, b"decision 1 before the migration")
    sign_one(app, clock, who, b"decision 2 before the migration")
    assert app.audit.checkpoint() is not None
    before_report = app.audit.verify_log(LOCAL_OPERATOR)
    assert before_report.ok and before_report.records > 5
    app.close()

    # Make it the database rsign 0.1 left: back to the baseline (the revisions after it only add
    # what 0.1 did not have), without Alembic's table.
    engine = create_engine(db_url)
    with engine.begin() as c:
        command.downgrade(migrate.alembic_config(c), migrate.BASELINE)
        c.execute(text("DROP TABLE alembic_version"))
    engine.dispose()
    missing = schema_differences(db_url)
    # Only whole tables (and their indexes) are missing: the revisions after the baseline add them.
    assert {d[1].name for d in missing if d[0] == "add_table"} == AFTER_BASELINE  # type: ignore[index]
    assert all(d[0] in ("add_table", "add_index") for d in missing), missing  # type: ignore[index]
    assert database.schema_state(db_url).legacy

    # The server (and every command) refuses it, names the command, and changes nothing.
    with pytest.raises(ConfigurationError, match=r"run `rsign db upgrade`"):
        build_app(settings, pool=False, clock=clock)
    assert database.schema_state(db_url).legacy

    before, after = database.upgrade(settings)
    assert before.legacy and after.at_head and after.revision == migrate.head()
    assert schema_differences(db_url) == []
    # Again: nothing to do.
    again_before, again_after = database.upgrade(settings)
    assert again_before.at_head and again_after.at_head

    app = build_app(settings, pool=False, clock=clock)
    try:
        sign_one(app, clock, who, b"decision 3 after the migration")
        assert app.audit.checkpoint() is not None
        report = app.audit.verify_log(LOCAL_OPERATOR)
        assert report.ok, report.problem
        assert report.records > before_report.records
        assert report.checkpoints >= 2
        with context.request(client="test"):
            migrated = [r for r in app.audit.tail(EventFilter(), 1000) if r["action"] == "db.upgrade"]
            signed = [
                r
                for r in app.audit.tail(EventFilter(), 1000)
                if r["action"] == "sign.hash" and r["result"] == "success"
            ]
        assert len(migrated) == 1 and json.loads(migrated[0]["details"])["to"] == migrate.head()
        assert len(signed) == 3  # the two signatures before the migration are still on record
    finally:
        app.close()


def test_baseline_is_exactly_the_release_schema(tmp_path: Path) -> None:
    """0.1 built its database with ``create_all`` plus a version marker; the baseline revision
    builds the same tables, constraints and indexes (SQLite keeps each object's DDL text, so it is
    compared word for word), and such a database is stamped, not rebuilt, by `rsign db upgrade`."""
    release, migrated = tmp_path / "release.db", tmp_path / "migrated.db"
    engine = create_engine(f"sqlite:///{release}")
    # 0.1's code path (rsign.store.engine before migrations), on 0.1's tables.
    m.Base.metadata.create_all(
        engine, tables=[t for t in m.Base.metadata.sorted_tables if t.name not in AFTER_BASELINE]
    )
    with engine.begin() as c:
        c.execute(insert(META).values(key="schema_version", value="1"))
    engine.dispose()
    fresh = create_engine(f"sqlite:///{migrated}")
    migrate.upgrade(fresh, str(migrated), target=migrate.BASELINE)
    fresh.dispose()

    def ddl(path: Path) -> list[tuple[str, str, str | None]]:
        with sqlite3.connect(path) as c:
            rows = c.execute("SELECT type, name, sql FROM sqlite_master WHERE name NOT LIKE '%alembic%'")
            return sorted(rows)

    assert ddl(release) == ddl(migrated)
    with sqlite3.connect(release) as a, sqlite3.connect(migrated) as b:
        assert a.execute("SELECT * FROM rsign_meta").fetchall() == b.execute("SELECT * FROM rsign_meta").fetchall()


def test_db_commands_on_a_state_directory(tmp_path: Path) -> None:
    """`rsign db current` names both revisions and fails while behind; `db upgrade` migrates once
    and records it; a database of unknown revision (a newer rsign's) is refused by both."""
    import subprocess
    import sys

    def rsign(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "rsign.cli", *args], capture_output=True, text=True, timeout=120)

    sd = tmp_path / "state"
    missing = rsign("db", "current", "--state-dir", str(sd))
    assert missing.returncode != 0 and "no rsign database" in missing.stderr and not sd.exists()

    assert rsign("init", "--state-dir", str(sd)).returncode == 0  # creates the state at head
    current = rsign("db", "current", "--state-dir", str(sd))
    assert current.returncode == 0 and f"database: {migrate.head()} (head)" in current.stdout

    db = sd / "rsign.db"
    engine = create_engine(f"sqlite:///{db}")
    with engine.begin() as conn:  # back to 0.1's database, as in the test above
        command.downgrade(migrate.alembic_config(conn), migrate.BASELINE)
        conn.execute(text("DROP TABLE alembic_version"))
    engine.dispose()
    behind = rsign("db", "current", "--state-dir", str(sd))
    assert behind.returncode == 1 and "rsign 0.1 schema" in behind.stdout
    refused = rsign("audit", "verify", "--state-dir", str(sd))
    assert refused.returncode != 0 and "run `rsign db upgrade`" in refused.stderr
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1

    up = rsign("db", "upgrade", "--state-dir", str(sd))
    assert up.returncode == 0 and "database migrated" in up.stderr, up.stderr
    assert "nothing to do" in rsign("db", "upgrade", "--state-dir", str(sd)).stderr
    verify = rsign("audit", "verify", "--state-dir", str(sd))
    assert verify.returncode == 0 and "audit log intact" in verify.stdout

    with sqlite3.connect(db) as c:
        c.execute("UPDATE alembic_version SET version_num = '9999_from_the_future'")
    for args in (("db", "upgrade"), ("audit", "verify")):
        out = rsign(*args, "--state-dir", str(sd))
        assert out.returncode != 0 and "migrated by a newer rsign" in out.stderr, out.stderr
