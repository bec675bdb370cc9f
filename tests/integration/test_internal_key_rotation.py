"""rsign's own keys rotate while the server signs: the TOTP sealing key (every seed re-sealed in the
HSM adapter, in batches, resumably), the audit MAC key and the audit checkpoint key. Signing never
stops or fails; the server's processes pick the new keys up by themselves; the log verifies; exports
written before still verify, and one written after names which key covered which checkpoints (and
verifies whichever certificate the auditor pinned)."""

from __future__ import annotations

import base64
import hashlib
import json
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rsign.audit.offline import read_checkpoint_file, verify_export_bytes
from rsign.domain import context
from rsign.domain.events import EventFilter
from rsign.domain.principal import LOCAL_OPERATOR
from rsign.runtime.app import App, build_app
from tests.conftest import Env, Signer, digests, make_signer, running_env


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    # Its own service: rotating the audit keys of the session's shared one would touch other tests.
    with running_env(tmp_path_factory.mktemp("rotation")) as e:
        yield e


@pytest.fixture(scope="module")
def operator(env: Env) -> Iterator[App]:
    """What `rsign keys rotate-internal` runs on the state directory: an application of its own
    (its own HSM session and key caches), beside the server, on the server's clock."""
    app = build_app(env.settings, pool=False, clock=env.clock)
    yield app
    app.close()


def export(app: App) -> bytes:
    with context.request(client="test", actor="auditor"):
        return b"".join(app.audit.export(LOCAL_OPERATOR, EventFilter()))


class Signing:
    """Signs in a loop as the server's clients do (log in, authorize, sign) until stopped."""

    def __init__(self, signers: list[tuple[Signer, str]]) -> None:
        self.signers = signers
        self.signed = 0
        self.errors: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> Signing:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(60)

    def _run(self) -> None:
        i = 0
        while not self._stop.is_set():
            signer, cred = self.signers[i % len(self.signers)]
            i += 1
            try:
                c = signer.client()  # a fresh login: the seed is unsealed, whatever key sealed it
                ds = digests(3, tag=f"rotation {i}")
                sad = c.authorize(cred, ds, signer.code()).sad
                self.signed += len(c.sign_hash(cred, sad, ds, "ECDSA").signatures)
                c.close()
            except grpc.RpcError as exc:
                self.errors.append(f"{exc.code().name}: {exc.details()}")

    def wait_for(self, more: int) -> None:
        target = self.signed + more
        for _ in range(600):
            if self.signed >= target or self.errors:
                return
            self._stop.wait(0.05)


def test_rotate_rsigns_own_keys_while_signing(env: Env, operator: App, tmp_path: Path) -> None:
    signers = [make_signer(env, prefix="rot") for _ in range(4)]
    creds = [(s, s.add_key("ec-p256")) for s in signers]
    # Enough users for several re-seal batches.
    extra = [make_signer(env, prefix="rot.extra") for _ in range(25)]
    # Before: an export and the checkpoint file an auditor keeps.
    with Signing(creds) as run:
        run.wait_for(6)
    assert env.app.audit.checkpoint() is not None
    old_export = export(env.app)
    with context.request(client="test"):
        kept = read_checkpoint_file(env.app.audit.kept_checkpoint())
    old_header = json.loads(old_export.split(b"\n", 1)[0])
    old_cert = base64.b64decode(old_header["audit_certificate"])
    assert verify_export_bytes(old_export).ok

    with Signing(creds) as run:
        run.wait_for(6)
        with context.request(client="cli", actor="cli:operator"):
            sealed = operator.seal_rotation.rotate(batch=7)
            run.wait_for(6)
            mac = operator.audit_rotation.rotate_mac()
            run.wait_for(6)
            cp = operator.audit_rotation.rotate_checkpoint()
            run.wait_for(6)
        late = make_signer(env, prefix="rot.late")  # enrolled by the server after the rotation
        run.wait_for(6)
    assert run.errors == [], run.errors[:3]
    assert run.signed >= 30

    # The sealing key: every seed re-sealed (a resume finds nothing left), new enrolments sealed
    # under the new key, every user still signs in.
    assert len(sealed.retired) == 1 and sealed.key not in sealed.retired
    assert sealed.resealed == len(signers) + len(extra) and sealed.unsealable == []
    with context.request(client="cli"):
        again = operator.seal_rotation.reseal(batch=50)
    assert again.key == sealed.key and again.resealed == 0 and again.unsealable == []
    assert again.current == len(signers) + len(extra) + 1  # + the late enrolment
    for s in [*extra[:3], late]:
        s.client().close()  # logs in: PIN and a fresh code

    # The audit keys: the old ones cover what came before, the log verifies in both processes.
    assert mac.old_key != mac.new_key and mac.old_last_seq == mac.record_seq - 1
    assert cp.old_key != cp.new_key and cp.old_last_seq < cp.record_seq
    assert env.app.audit.checkpoint() is not None  # the server signs with the new key now
    for app in (env.app, operator):
        report = app.audit.verify_log(LOCAL_OPERATOR)
        assert report.ok, report.problem
        assert report.checkpoints >= 3

    # Exports: the old one still verifies (pinned to its certificate too); a new one names both
    # checkpoint keys and verifies pinned to either (the old key handed over in a record it signed).
    assert verify_export_bytes(old_export, pinned_certificate=old_cert).ok
    new_export = export(env.app)
    header = json.loads(new_export.split(b"\n", 1)[0])
    assert header["format"] == "rsign-audit-export/3"
    (previous,) = header["previous_audit_certificates"]
    assert base64.b64decode(previous["certificate"]) == old_cert and previous["last_seq"] == cp.old_last_seq
    new_cert = base64.b64decode(header["audit_certificate"])
    assert hashlib.sha256(new_cert).hexdigest() == cp.new_certificate_sha256
    for pin in (None, old_cert, new_cert):
        rep = verify_export_bytes(new_export, pinned_certificate=pin, after=kept)
        assert rep.ok, rep.problems
    assert rep.previous_certificates_sha256 == [hashlib.sha256(old_cert).hexdigest()]
    # A checkpoint signed by the old key is not accepted as the new key's: swap the header's
    # certificates and the export fails (the closing signature first of all).
    swapped = new_export.replace(header["audit_certificate"].encode(), b"X").replace(
        previous["certificate"].encode(), header["audit_certificate"].encode()
    )
    assert not verify_export_bytes(swapped).ok
    (tmp_path / "after.jsonl").write_bytes(new_export)


def test_rotate_internal_commands(tmp_path: Path) -> None:
    """The commands an operator types: each rotation in one line, then `audit verify` passes, an
    export written before verifies pinned to its certificate, one written after verifies pinned to
    the old certificate and extends the checkpoint kept before."""
    import subprocess
    import sys

    def rsign(*args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rsign.cli", *args], input=stdin, capture_output=True, text=True, timeout=120
        )

    sd = str(tmp_path / "state")
    for i in range(3):
        added = rsign(
            "users",
            "add",
            f"cli.rot.{i}",
            "--name",
            "Lò Văn Tuấn",
            "--pin-stdin",
            "--state-dir",
            sd,
            stdin="73915428\n",
        )
        assert added.returncode == 0, added.stderr
    before = tmp_path / "before.jsonl"
    assert rsign("audit", "export", "--out", str(before), "--state-dir", sd).returncode == 0
    kept = tmp_path / "kept.json"
    assert rsign("audit", "extract-checkpoint", str(before), "--out", str(kept)).returncode == 0
    old_cert = tmp_path / "old.der"
    old_cert.write_bytes(base64.b64decode(json.loads(before.read_text().split("\n", 1)[0])["audit_certificate"]))

    seal = rsign("keys", "rotate-internal", "totp-seal", "--batch", "2", "--state-dir", sd)
    assert seal.returncode == 0, seal.stderr
    assert "3 seeds re-sealed, 0 already under it" in seal.stdout
    resume = rsign("keys", "rotate-internal", "totp-seal", "--resume", "--state-dir", sd)
    assert resume.returncode == 0 and "0 seeds re-sealed, 3 already under it" in resume.stdout
    mac = rsign("keys", "rotate-internal", "audit-mac", "--state-dir", sd)
    assert mac.returncode == 0 and "the old key stays to verify records up to" in mac.stdout, mac.stderr
    cp = rsign("keys", "rotate-internal", "audit-checkpoint", "--state-dir", sd)
    assert cp.returncode == 0 and "new audit certificate SHA-256" in cp.stdout, cp.stderr

    verify = rsign("audit", "verify", "--state-dir", sd)
    assert verify.returncode == 0 and "audit log intact" in verify.stdout, verify.stderr
    old = rsign("audit", "verify-export", str(before), "--audit-cert", str(old_cert))
    assert old.returncode == 0 and "export intact" in old.stdout, old.stderr
    after = tmp_path / "after.jsonl"
    assert rsign("audit", "export", "--out", str(after), "--state-dir", sd).returncode == 0
    new = rsign("audit", "verify-export", str(after), "--audit-cert", str(old_cert), "--after", str(kept))
    assert new.returncode == 0 and "export intact" in new.stdout, new.stderr
    assert "earlier audit certificate 1 (rotated out) SHA-256" in new.stdout
    # On record: the MAC rotation, and the checkpoint key's announcement and switch.
    found = rsign("audit", "search", "--action", "audit.key_rotate", "--state-dir", sd)
    assert found.returncode == 0 and "3 matching records" in found.stdout


def test_a_process_that_cached_the_old_sealing_key_seals_under_the_new_one(env: Env, operator: App) -> None:
    """A worker process sealed (and cached the key) before another process rotated the sealing key:
    its next seal is under the new key all the same, with no unseal in between to refresh it."""
    from rsign.hsm.pool import HsmPool

    pool = HsmPool(env.settings.hsm, workers=1, warm=False)
    try:
        aad = b"rsign-totp-seed-v1:nobody"
        before = pool.seal(b"seed before", aad)
        new_key, _retired = operator.hsm.rotate_seal_key()
        after = pool.seal(b"seed after", aad)
        assert operator.hsm.seal_key_id() == new_key
        # reseal hands back the very blob when it is under the current key, a new one otherwise.
        assert operator.hsm.reseal([(after, aad)]) == [after]
        (resealed,) = operator.hsm.reseal([(before, aad)])
        assert resealed is not None and resealed != before
        assert pool.unseal(resealed, aad) == b"seed before" and pool.unseal(after, aad) == b"seed after"
    finally:
        pool.close()
