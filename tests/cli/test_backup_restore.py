"""A state directory is relocatable (a copy serves from its own token and database, the original
untouched), and `rsign backup` taken while the server signs restores into a state that serves and
whose audit log verifies."""

from __future__ import annotations

import hashlib
import shutil
import threading
from pathlib import Path

from rsign.dev.democlient import verify_signature
from rsign.domain.events import EventFilter
from rsign.domain.principal import LOCAL_OPERATOR
from tests.cli.operator import assert_one_line_error, listing, rsign
from tests.conftest import Signer, digests, make_signer, running_env


def fingerprint(sd: Path) -> dict[str, str]:
    """SHA-256 of every file of the token and the database (WAL included)."""
    files = [p for p in (sd / "tokens").rglob("*") if p.is_file()] + sorted(sd.glob("rsign.db*"))
    return {str(p.relative_to(sd)): hashlib.sha256(p.read_bytes()).hexdigest() for p in files if p.is_file()}


def sign_once(s: Signer, cid: str) -> None:
    c = s.client()
    try:
        cred = c.get_credential(cid)
        hs = digests(2)
        sad = c.authorize(cid, hs, s.code()).sad
        resp = c.sign_hash(cid, sad, hs, "ECDSA")
        for d, sig in zip(hs, resp.signatures, strict=True):
            verify_signature(cred.certificates[0], d, sig, "ECDSA")
    finally:
        c.close()


def test_a_copied_state_directory_serves_from_its_own_token(tmp_path: Path) -> None:
    original, copy = tmp_path / "original", tmp_path / "elsewhere" / "copy"
    with running_env(original) as env:
        holder = make_signer(env, "reloc")
        old_cid = holder.add_key("ec-p256")
        sign_once(holder, old_cid)
    before = fingerprint(original)
    shutil.copytree(original, copy)
    with running_env(copy) as env:
        # SoftHSMv2's configuration in the copy names the copy's token directory.
        conf = (copy / "softhsm2.conf").read_text(encoding="utf-8")
        assert f"directories.tokendir = {copy / 'tokens'}\n" in conf and str(original) not in conf
        holder.env = env
        sign_once(holder, old_cid)  # the copied key, from the copied token
        new_cid = holder.add_key("ec-p256")  # a new key lands in the copy's token...
        sign_once(holder, new_cid)
        assert env.app.audit.verify_log(LOCAL_OPERATOR).ok
    # ... and the original's token and database are exactly as they were.
    assert fingerprint(original) == before
    assert len(fingerprint(copy)) > len(before)


def test_backup_while_signing_then_restore_serves_and_verifies(tmp_path: Path) -> None:
    live, dest, restored = tmp_path / "live", tmp_path / "backups" / "monday", tmp_path / "restored"
    signed = 0
    errors: list[BaseException] = []
    stop = threading.Event()
    with running_env(live) as env:
        holder = make_signer(env, "bak")
        cid = holder.add_key("ec-p256")

        def keep_signing() -> None:
            nonlocal signed
            while not stop.is_set():
                try:
                    sign_once(holder, cid)
                    signed += 1
                except BaseException as exc:
                    errors.append(exc)
                    return

        signing = threading.Thread(target=keep_signing)
        signing.start()
        while signed == 0 and not errors:
            stop.wait(0.05)
        try:
            # Keys are generated meanwhile too: they write to the token the backup copies.
            more = threading.Thread(target=lambda: [holder.add_key("ec-p256") for _ in range(3)])
            more.start()
            at_start = signed
            out = rsign("backup", str(dest), "--state-dir", str(live))
            at_end = signed
            more.join()
        finally:
            stop.set()
            signing.join()
        assert errors == [] and out.returncode == 0, (errors, out.stderr)
        assert "backup written to" in out.stdout
        assert at_end > at_start > 0  # the server signed all along the backup
        # No transient files in a backup: locks, WAL, enrolment letters.
        assert not {"token.lock", ".init.lock", "rsign.db-wal", "enrolment"} & {p.name for p in dest.iterdir()}
    # Backing up over something that exists is refused; so is restoring over a state directory.
    assert_one_line_error(rsign("backup", str(dest), "--state-dir", str(live)), "already exists and is not empty")
    before = listing(tmp_path)
    assert_one_line_error(rsign("restore", str(dest), "--state-dir", str(live)), "already exists and is not empty")
    assert listing(tmp_path) == before
    out = rsign("restore", str(dest), "--state-dir", str(restored))
    assert out.returncode == 0 and "audit log intact" in out.stdout, out.stderr
    with running_env(restored) as env:
        holder.env = env
        sign_once(holder, cid)
        assert env.app.audit.verify_log(LOCAL_OPERATOR).ok
        records = env.app.audit.tail(EventFilter(action="sign.hash", credential_id=cid), 10_000)
        assert len(records) >= 1
