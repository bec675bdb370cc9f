"""The demo client (``rsign client sign``) signs a PDF as a PDF and any other file as a detached CMS
signature, and counts down while it waits for the next one-time code instead of going silent."""

from __future__ import annotations

import base64
import itertools
import json
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from rsign.dev.democlient import sign_file
from tests.conftest import Env, make_signer, running_env
from tests.pdf.tools import make_pdf


@pytest.fixture(scope="module")
def real_time_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """A service whose clock follows the real time: the demo client computes its codes from it."""
    with running_env(tmp_path_factory.mktemp("demo-state")) as env:
        stop = threading.Event()

        def follow() -> None:
            while not stop.is_set():
                env.clock.set(max(env.clock.now(), time.time()))
                stop.wait(0.05)

        env.clock.set(max(env.clock.now(), time.time()))
        t = threading.Thread(target=follow, daemon=True)
        t.start()
        try:
            yield env
        finally:
            stop.set()
            t.join()


def _demo_state(env: Env, tmp_path: Path) -> tuple[Path, str]:
    signer = make_signer(env, "demo")
    cid = signer.add_key("ec-p256")
    state = tmp_path / "demo"
    state.mkdir()
    secrets = {
        "users": {signer.user_id: {"pin": signer.pin, "seed_b32": base64.b32encode(signer.seed).decode()}},
        "credentials": {cid: signer.user_id},
    }
    (state / "demo-secrets.json").write_text(json.dumps(secrets))
    return state, cid


@pytest.mark.slow
def test_demo_client_signs_pdf_and_other_files_and_counts_down(real_time_env: Env, tmp_path: Path) -> None:
    env = real_time_env
    state, cid = _demo_state(env, tmp_path)
    pdf = make_pdf(tmp_path / "decision.pdf")
    res = sign_file(env.server.address, state, cid, pdf)
    assert res.form == "PAdES" and res.verified
    assert Path(res.signed) == state / "signed" / "decision.pdf"

    # The second signature within the minute needs later codes: the wait is counted down.
    ticks: list[int] = []
    text = tmp_path / "note.txt"
    text.write_text("Công văn số 12/SNV\n", encoding="utf-8")
    res = sign_file(env.server.address, state, cid, text, wait=ticks.append)
    assert res.form == "CMS detached" and res.verified
    assert ticks and ticks[0] > 0 and ticks[-1] == 0
    # One countdown per wait for the clock (the demo needs two fresh steps), each second by second.
    assert all(b == a - 1 for a, b in itertools.pairwise(ticks) if a != 0)
    cms_path = Path(res.signed)
    assert cms_path == state / "signed" / "note.txt.p7s"
    # openssl agrees: a valid detached CMS signature over the file, chained to the credential's root
    # (the same chain GetCredential returns).
    with env.app.store.read() as t:
        cred = t.get_credential(cid)
    assert cred is not None and cred.chain
    root = tmp_path / "root.pem"
    root.write_text(x509.load_der_x509_certificate(cred.chain[-1]).public_bytes(Encoding.PEM).decode())
    out = subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(cms_path),
            "-content",
            str(text),
            "-CAfile",
            str(root),
            "-purpose",
            "any",
            "-out",
            "/dev/null",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert "Verification successful" in out.stderr, out.stderr
    text.write_text("Công văn số 13/SNV\n", encoding="utf-8")  # altered after signing
    out = subprocess.run(
        [
            "openssl",
            "cms",
            "-verify",
            "-binary",
            "-inform",
            "DER",
            "-in",
            str(cms_path),
            "-content",
            str(text),
            "-CAfile",
            str(root),
            "-purpose",
            "any",
            "-out",
            "/dev/null",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode != 0 and "Verification successful" not in out.stderr
