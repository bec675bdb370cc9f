"""Backup and restore of a state directory: the database and the embedded token, together.

A backup IS a state directory: ``rsign serve --state-dir BACKUP`` would serve it, and ``restore``
is a checked copy of one into a new place. What must be consistent is the pair (database, token):

- a credential in the database whose key is not in the token cannot sign; a key in the token that
  the database does not name is harmless (an orphan, as after a crash between the two writes);
- the audit anchor in the token must not be ahead of the database's log, or the restored state is
  taken for a rolled-back log and refused (``AuditRollback``).

Both hold when the token is copied first and the database after it, with nothing writing to the
token in between. rsign writes the token only under its file lock (``TokenFileLock``: exclusive
for key generation and destruction, anchor writes and logins), and the backup holds that lock,
exclusive, over both copies. A key is generated in the HSM before its row is committed, so every
key row in the database copy has its key in the token copy (made before the lock was taken); an
anchor is written only after its checkpoint is committed, so the anchor in the token copy names a
checkpoint that the later database copy holds. The alternative, quiescing the server, would stop
signing; this way servers keep signing (signing does not write the token), and only what waits
for the lock (a key generation, an anchor write, a new worker's login) waits, for one copy of the
token directory and one SQLite backup step.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from rsign.domain.errors import ConfigurationError
from rsign.domain.settings import Settings
from rsign.hsm.pkcs11_adapter.file_lock import TokenFileLock
from rsign.runtime.config import resolve_state_dir, state_problem
from rsign.store.backup import backup_sqlite, sqlite_path

# Not copied: locks and liveness files of the running processes, the SQLite WAL and shared memory
# (the database is copied through the backup API instead), and enrolment letters (initial PINs in
# the clear, to be destroyed once printed: a backup must not keep them alive).
_TRANSIENT = {".init.lock", "token.lock", "enrolment"}


@dataclass(frozen=True)
class BackupReport:
    dest: Path
    audit_records: int
    token_files: int  # 0 with a real HSM: its keys are backed up with the vendor's tools


def _fresh_target(dest: Path, what: str) -> Path:
    dest = dest.resolve()
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise ConfigurationError(f"{what} {dest} already exists and is not empty; give a new directory")
    return dest


def _skip(db: Path | None) -> set[str]:
    names = set(_TRANSIENT)
    if db is not None:
        names |= {db.name, db.name + "-wal", db.name + "-shm", db.name + "-journal", db.name + ".replicas"}
    return names


def backup(settings: Settings, dest: Path) -> BackupReport:
    """Write a consistent copy of ``settings``' state directory to the new directory ``dest``,
    while servers keep running on it. Written to a sibling first and renamed when complete: an
    interrupted backup never looks like one."""
    dest = _fresh_target(dest, "backup destination")
    sd = settings.state_dir
    db = sqlite_path(settings.database_url)
    if db is None:
        backup_sqlite(settings.database_url, dest / "rsign.db")  # refuses, naming the tools to use instead
    elif db.resolve() != (sd / "rsign.db").resolve():
        # The copy must be a state directory that uses its own database: one configured elsewhere
        # would still be named (by rsign.toml or the environment) after a restore.
        raise ConfigurationError(
            f"the database {db} is outside the state directory; rsign backup copies <state-dir>/rsign.db"
            " (back that database up with sqlite3's .backup, together with this directory)"
        )
    partial = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(mode=0o700, parents=True)
    try:
        skip = _skip(db) | {"tokens"}
        for entry in sd.iterdir():
            if entry.name in skip:
                continue
            if entry.is_dir():
                shutil.copytree(entry, partial / entry.name, symlinks=True)
            else:
                shutil.copy2(entry, partial / entry.name)
        token_files = 0
        # The token lock exists for the embedded token only (a real HSM keeps its own state).
        lock = TokenFileLock(settings.hsm)
        with lock.exclusive():
            tokens = sd / "tokens"
            if settings.hsm.softhsm_conf and tokens.is_dir():
                shutil.copytree(tokens, partial / "tokens")
                token_files = sum(len(files) for _, _, files in os.walk(partial / "tokens"))
            records = backup_sqlite(settings.database_url, partial / "rsign.db")
        if dest.exists():
            dest.rmdir()  # empty (checked above)
        os.replace(partial, dest)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return BackupReport(dest, records, token_files)


def restore(src: Path, state_dir: Path | str | None) -> Path:
    """Copy the backup ``src`` into a new state directory (never over an existing one). The copy
    uses its own token from its first start (``rsign.dev.softhsm`` re-points its configuration)."""
    src = src.resolve()
    if problem := state_problem(src):
        raise ConfigurationError(f"not a backup: {problem}")
    target = _fresh_target(resolve_state_dir(state_dir), "state directory")
    partial = target.with_name(f".{target.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    try:
        shutil.copytree(src, partial, symlinks=True, ignore=shutil.ignore_patterns(*_TRANSIENT))
        partial.chmod(0o700)
        if target.exists():
            target.rmdir()
        os.replace(partial, target)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return target
