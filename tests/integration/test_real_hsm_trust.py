"""A configured PKCS#11 module (a real HSM; here SoftHSMv2's module named explicitly, with a token
initialised in a temporary directory) gets no development CA: keys have no certificate until one
is imported, imports must chain to ``<state-dir>/trust-anchors/``, a development CA's chain is
refused, and the audit checkpoint key needs a certificate before checkpoints and exports work.

Everything runs in subprocesses (the CLI and ``rsign serve``) with the operator's environment: a
process loads a PKCS#11 module once, and this one already serves the embedded test token."""

from __future__ import annotations

import contextlib
import datetime as dt
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from rsign.audit.offline import verify_export
from rsign.auth.totp import code_for_step, step_of
from rsign.client.raw import RsignClient
from rsign.dev.democlient import verify_signature
from rsign.dev.devca import DevCA
from rsign.dev.softhsm import find_softhsm_module
from tests.integration.test_lifecycle import issue_from_csr


@dataclass
class RealHsm:
    state: Path
    env: dict[str, str]

    def rsign(self, *args: str, stdin: str = "") -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "rsign.cli", *args, "--state-dir", str(self.state)],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=120,
            env=self.env,
        )


@pytest.fixture(scope="module")
def real(tmp_path_factory: pytest.TempPathFactory) -> RealHsm:
    """A SoftHSMv2 token initialised by the operator outside the state directory, configured
    through RSIGN_PKCS11_MODULE and RSIGN_HSM_PIN_FILE, as a real HSM would be."""
    hsm_dir = tmp_path_factory.mktemp("operator-hsm")
    (hsm_dir / "tokens").mkdir()
    conf = hsm_dir / "softhsm2.conf"
    conf.write_text(f"directories.tokendir = {hsm_dir / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n")
    pin = secrets.token_hex(8)
    pin_file = hsm_dir / "pin"
    pin_file.write_text(pin)
    pin_file.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RSIGN_")}
    env.update(
        SOFTHSM2_CONF=str(conf),
        RSIGN_PKCS11_MODULE=find_softhsm_module(),
        RSIGN_HSM_PIN_FILE=str(pin_file),
        RSIGN_TOKEN_LABEL="operator-hsm",
    )
    util = shutil.which("softhsm2-util")
    assert util is not None
    subprocess.run(
        [util, "--init-token", "--free", "--label", "operator-hsm", "--so-pin", secrets.token_hex(8), "--pin", pin],
        env=env,
        check=True,
        capture_output=True,
    )
    state = tmp_path_factory.mktemp("real-hsm-state")
    (state / "rsign.toml").write_text("[service]\nhsm_workers = 1\n")
    return RealHsm(state, env)


def _root_ca(name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(days=1))
        .not_valid_after(now + dt.timedelta(days=365))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return key, cert


def _trust(real: RealHsm, name: str) -> tuple[ec.EllipticCurvePrivateKey, x509.Certificate]:
    key, cert = _root_ca(name)
    anchors = real.state / "trust-anchors"
    anchors.mkdir(exist_ok=True)
    (anchors / f"{name}.pem").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return key, cert


def _enrol(real: RealHsm, user: str, pin: str) -> bytes:
    out = real.rsign("users", "add", user, "--name", "Lò Văn Tuấn", "--agency", "Sở Tư pháp", "--pin-stdin", stdin=pin)
    assert out.returncode == 0, out.stderr
    uri = next(w for w in out.stdout.split() if w.startswith("otpauth://"))
    from base64 import b32decode

    return b32decode(urllib.parse.parse_qs(urllib.parse.urlparse(uri).query)["secret"][0])


@contextlib.contextmanager
def _serve(real: RealHsm) -> Iterator[str]:
    """``rsign serve`` on the state directory; yields its address once it listens."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        address = f"127.0.0.1:{s.getsockname()[1]}"
    proc = subprocess.Popen(
        [sys.executable, "-m", "rsign.cli", "serve", "--state-dir", str(real.state), "--listen", address],
        env=real.env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # the ready line, printed once the port is bound
        assert "rsign serving" in line, line + (proc.stderr.read() if proc.stderr else "")
        yield address
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_keys_wait_for_a_certificate_that_chains_to_a_trust_anchor(real: RealHsm, tmp_path: Path) -> None:
    seed = _enrol(real, "tu.phap.01", "48151623")
    out = real.rsign("keys", "generate", "TP-0001", "--algorithm", "ec-p256", "--holder", "tu.phap.01")
    assert out.returncode == 0, out.stderr
    # No development CA, and no embedded token, with a configured module.
    assert not (real.state / "dev-ca").exists()
    assert not (real.state / "tokens").exists() and not (real.state / "hsm-user-pin").exists()

    # (The server starts after the key exists: its HSM worker loads the token's keys at start.)
    with contextlib.ExitStack() as stack:
        address = stack.enter_context(_serve(real))
        c = RsignClient(address)
        stack.callback(c.close)
        step = step_of(time.time())
        c.login("tu.phap.01", "48151623", code_for_step(seed, step))
        cred = c.get_credential("TP-0001")
        assert list(cred.certificates) == [] and cred.not_after == 0
        digest = [secrets.token_bytes(32)]
        with pytest.raises(grpc.RpcError) as e:
            c.authorize("TP-0001", digest, code_for_step(seed, step + 1))
        assert e.value.code() == grpc.StatusCode.FAILED_PRECONDITION  # type: ignore[attr-defined]
        assert "no certificate imported yet" in str(e.value.details())  # type: ignore[attr-defined]

        out = real.rsign("keys", "csr", "TP-0001")
        assert out.returncode == 0, out.stderr
        csr_pem = out.stdout
        # A chain that ends at a development CA (what an embedded state directory issues): refused.
        dev_chain = tmp_path / "dev-chain.pem"
        dev_chain.write_bytes(_dev_ca_chain(tmp_path, csr_pem))
        out = real.rsign("keys", "import-certificate", "TP-0001", str(dev_chain))
        assert out.returncode == 2, out.stdout
        assert "does not chain to a configured trust anchor" in out.stderr and "rsign Development CA" in out.stderr

        # The operator's CA, placed in trust-anchors/: accepted, while the server runs.
        ca_key, ca = _trust(real, "Test Province CA")
        (tmp_path / "chain.pem").write_bytes(issue_from_csr(csr_pem, ca_key, ca))
        out = real.rsign("keys", "import-certificate", "TP-0001", str(tmp_path / "chain.pem"))
        assert out.returncode == 0, out.stderr
        cred = c.get_credential("TP-0001")
        assert x509.load_der_x509_certificate(cred.certificates[0]).issuer == ca.subject
        # Signing works now; the refused Authorize did not use up that step's code.
        sad = c.authorize("TP-0001", digest, code_for_step(seed, step + 1)).sad
        sig = c.sign_hash("TP-0001", sad, digest, "ECDSA").signatures[0]
        verify_signature(cred.certificates[0], digest[0], sig, "ECDSA")
    assert not (real.state / "dev-ca").exists()

    # The audit checkpoint key is certified the same way; until then exports are refused, clearly.
    out = real.rsign("audit", "export", "--out", str(tmp_path / "refused.jsonl"))
    assert out.returncode == 2 and "audit checkpoint key has no certificate yet" in out.stderr, out.stderr
    out = real.rsign("audit", "csr")
    assert out.returncode == 0, out.stderr
    (tmp_path / "audit.pem").write_bytes(issue_from_csr(out.stdout, ca_key, ca))
    out = real.rsign("audit", "import-certificate", str(tmp_path / "audit.pem"))
    assert out.returncode == 0, out.stderr
    out = real.rsign("audit", "export", "--out", str(tmp_path / "audit.jsonl"))
    assert out.returncode == 0, out.stderr
    pinned = x509.load_pem_x509_certificate((tmp_path / "audit.pem").read_bytes())
    rep = verify_export(tmp_path / "audit.jsonl", pinned.public_bytes(serialization.Encoding.DER))
    assert rep.ok and rep.checkpoints >= 1, rep.problems


def _dev_ca_chain(tmp_path: Path, csr_pem: str) -> bytes:
    """The CSR's key certified by a development CA, with that CA's certificate: PEM, leaf first."""
    dev = DevCA(tmp_path / "someone-elses-dev-ca")
    spki = (
        x509.load_pem_x509_csr(csr_pem.encode())
        .public_key()
        .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    issued = dev.issue(spki, "Lò Văn Tuấn", "tu.phap.01", "Sở Tư pháp")
    return b"".join(
        x509.load_der_x509_certificate(c).public_bytes(serialization.Encoding.PEM)
        for c in (issued.certificate, *issued.chain)
    )
