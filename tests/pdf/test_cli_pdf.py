"""``rsign client sign-pdf`` and ``verify-pdf`` against a real server, through click's runner."""

from __future__ import annotations

import time
from pathlib import Path

from click.testing import CliRunner

from rsign.auth import totp
from rsign.cli.main import main
from rsign.client import Client
from rsign.domain.events import EventFilter
from tests.conftest import Env, Signer
from tests.pdf.tools import Tsa, make_pdf, nss_db, pdfsig


def _root_pem(env: Env, signer: Signer, cid: str, path: Path) -> Path:
    c = Client(env.server.address)
    c.login(signer.user_id, signer.pin, signer.code())
    der = c.credential(cid).certificates[-1]
    c.close()
    path.write_bytes(der)
    return path


def test_sign_pdf_many_files_then_verify(env: Env, signer: Signer, tsa: Tsa, tmp_path: Path) -> None:
    cid = signer.add_key("rsa-2048", multisign=5)
    docs = [make_pdf(tmp_path / f"qd{i}.pdf", f"Quyet dinh {i}") for i in range(5)]
    login, sign = signer.code(), signer.code()
    res = CliRunner().invoke(
        main,
        [
            "client",
            "sign-pdf",
            *map(str, docs),
            "--credential",
            cid,
            "--out",
            str(tmp_path / "out"),
            "--user",
            signer.user_id,
            "--server",
            env.server.address,
            "--pin-stdin",
            "--login-otp",
            login,
            "--otp",
            sign,
            "--tsa",
            tsa.url,
            "--stamp",
            "--reason",
            "Phê duyệt",
        ],
        input=signer.pin + "\n",
    )
    assert res.exit_code == 0, res.output
    lines = [ln for ln in res.stdout.splitlines() if " -> " in ln]
    assert lines == [f"{d} -> {tmp_path / 'out' / d.name}" for d in docs]
    with env.app.store.read() as t:
        assert len(t.last_events(EventFilter(action="sad.issue", credential_id=cid), 10)) == 1
    root = _root_pem(env, signer, cid, tmp_path / "root.der")
    tsa_root = tmp_path / "tsa.der"
    tsa_root.write_bytes(tsa.root_der)
    db = nss_db(tmp_path / "nss", [root.read_bytes(), tsa.root_der])
    assert "Signature is Valid." in pdfsig(tmp_path / "out" / "qd0.pdf", db)

    out = CliRunner().invoke(
        main,
        ["client", "verify-pdf", str(tmp_path / "out" / "qd3.pdf"), "--trust", str(root), "--trust", str(tsa_root)],
    )
    assert out.exit_code == 0, out.output
    assert "Signature1: OK" in out.stdout
    assert "signer:    Common Name: Lò Văn Tuấn" in out.stdout
    assert "(trusted)" in out.stdout  # the timestamp
    assert "intact:    yes  (sha256_rsa, entire_file)" in out.stdout
    assert "chain:     Common Name: Lò Văn Tuấn" in out.stdout and "rsign Development CA" in out.stdout

    # Without the root: reported, and the exit status says not OK.
    untrusted = CliRunner().invoke(main, ["client", "verify-pdf", str(tmp_path / "out" / "qd3.pdf")])
    assert untrusted.exit_code == 1
    assert "Signature1: NOT OK" in untrusted.stdout and "NOT trusted" in untrusted.stdout
    # An unsigned file is not OK either.
    assert CliRunner().invoke(main, ["client", "verify-pdf", str(docs[0])]).exit_code == 1


def test_used_code_shows_a_countdown_then_asks_again(env: Env, signer: Signer, tmp_path: Path) -> None:
    cid = signer.add_key("ec-p256")
    doc = make_pdf(tmp_path / "a.pdf")
    # Two seconds before a step boundary (the fake clock only moves forward): log in with this
    # step's code, then offer it again to authorize. The server answers "already used, next in
    # 2 s"; the CLI counts the 2 s down (real seconds) and asks for the next code on the terminal.
    step = totp.step_of(env.clock.now()) + 2
    env.clock.set(step * totp.STEP_SECONDS + 28)
    login = totp.code_for_step(signer.seed, step)
    fresh = totp.code_for_step(signer.seed, step + 1)  # within the +-1 window of the service clock
    signer.last_step = step + 1
    t0 = time.monotonic()
    res = CliRunner().invoke(
        main,
        [
            "client",
            "sign-pdf",
            str(doc),
            "--credential",
            cid,
            "--out",
            str(tmp_path / "out"),
            "--user",
            signer.user_id,
            "--server",
            env.server.address,
            "--pin-stdin",
            "--login-otp",
            login,
            "--otp",
            login,
        ],
        input=f"{signer.pin}\n{fresh}\n",
    )
    assert res.exit_code == 0, res.output
    assert time.monotonic() - t0 >= 2.0  # it did wait for the next code
    assert "this code was already used; the next one appears in 2 s" in res.stderr
    assert (tmp_path / "out" / "a.pdf").exists()


def test_wrong_pin_is_one_line(env: Env, signer: Signer, tmp_path: Path) -> None:
    cid = signer.add_key("ec-p256")
    doc = make_pdf(tmp_path / "a.pdf")
    res = CliRunner().invoke(
        main,
        [
            "client",
            "sign-pdf",
            str(doc),
            "--credential",
            cid,
            "--out",
            str(tmp_path / "out"),
            "--user",
            signer.user_id,
            "--server",
            env.server.address,
            "--pin-stdin",
            "--login-otp",
            signer.code(),
        ],
        input="not-the-pin\n",
    )
    assert res.exit_code == 2
    assert "error (UNAUTHENTICATED): login failed" in res.stderr
    assert "Traceback" not in res.output


def test_asks_for_the_user_pin_and_codes_on_the_terminal(env: Env, signer: Signer, tmp_path: Path) -> None:
    """The command as an official types it: no --user, no PIN or codes on the command line; the
    user id, the PIN, the login code and the signing code are each asked for on the terminal."""
    cid = signer.add_key("ec-p256")
    doc = make_pdf(tmp_path / "a.pdf")
    login, sign = signer.code(), signer.code()
    typed = ["client", "sign-pdf", str(doc), "--credential", cid, "--out", str(tmp_path / "out")]
    res = CliRunner().invoke(
        main,
        [*typed, "--server", env.server.address],
        input=f"{signer.user_id}\n{signer.pin}\n{login}\n{sign}\n",
        env={"RSIGN_USER": ""},
    )
    assert res.exit_code == 0, res.output
    assert "user id" in res.stderr
    assert (tmp_path / "out" / "a.pdf").exists()
    # --pin-stdin needs the user id given: standard input cannot answer both.
    refused = CliRunner().invoke(
        main,
        ["client", "sign-pdf", str(doc), "--credential", cid, "--out", str(tmp_path / "o2"), "--pin-stdin"],
        input=f"{signer.pin}\n",
        env={"RSIGN_USER": ""},
    )
    assert refused.exit_code == 2 and "with --pin-stdin, give --user" in refused.output
    assert not (tmp_path / "o2").exists()
