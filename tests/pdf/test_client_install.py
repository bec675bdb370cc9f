"""The client installs on its own: a fresh virtualenv with ``rsign[pdf]`` (no server extra) has
neither python-pkcs11 nor SQLAlchemy, and its ``rsign client sign-pdf`` signs against a real server."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rsign.client.verify import verify_pdf
from tests.conftest import Env, Signer
from tests.pdf.tools import make_pdf, nss_db, pdfsig

REPO = Path(__file__).resolve().parents[2]


def _run(cmd: list[str], cwd: Path, stdin: str | None = None, timeout: float = 900) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=cwd, input=stdin, capture_output=True, text=True, timeout=timeout, check=False)


@pytest.mark.slow
def test_client_only_install_signs_a_pdf(env: Env, signer: Signer, tmp_path: Path) -> None:
    # A copy of the source (pip would otherwise write build/ and *.egg-info into the worktree).
    src = tmp_path / "src"
    src.mkdir()
    shutil.copytree(REPO / "rsign", src / "rsign", ignore=shutil.ignore_patterns("__pycache__"))
    for f in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / f, src / f)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    py, rsign = venv / "bin" / "python", venv / "bin" / "rsign"
    res = _run([str(py), "-m", "pip", "install", "-q", f"{src}[pdf]"], tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]

    # What a client-only install does NOT have: the HSM binding, the database layer, the server's
    # other libraries.
    probe = (
        "import importlib.metadata as m, importlib.util as u\n"
        "for d in ('python-pkcs11', 'SQLAlchemy', 'pyotp', 'argon2-cffi', 'segno'):\n"
        "    try: m.version(d); print('installed', d)\n"
        "    except m.PackageNotFoundError: pass\n"
        "for mod in ('pkcs11', 'sqlalchemy'):\n"
        "    print('importable', mod) if u.find_spec(mod) else None\n"
        "import rsign.client, rsign.client.pdf\n"
        "print('ok')\n"
    )
    res = _run([str(py), "-c", probe], tmp_path)
    assert res.stdout.split() == ["ok"], res.stdout + res.stderr

    # A server command says what it needs instead of a traceback.
    res = _run([str(rsign), "serve"], tmp_path)
    assert res.returncode == 1 and "pip install 'rsign[server]'" in res.stderr, res.stderr

    cid = signer.add_key("ec-p256")
    docs = [make_pdf(tmp_path / f"doc{i}.pdf") for i in range(2)]
    res = _run(
        [
            str(rsign),
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
            signer.code(),
            "--otp",
            signer.code(),
            "--stamp",
        ],
        tmp_path,
        stdin=signer.pin + "\n",
        timeout=120,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    c = signer.client()
    root = c.get_credential(cid).certificates[-1]
    c.close()
    for d in docs:
        signed = tmp_path / "out" / d.name
        assert f"{d} -> {signed}" in res.stdout
        (rep,) = verify_pdf(signed, [root])
        assert rep.intact and rep.trusted, rep.summary
        assert "Certificate is Trusted." in pdfsig(signed, nss_db(tmp_path / f"nss-{d.stem}", [root]))
