"""Helpers for tests that run ``rsign serve`` as a separate process (signals, ports, TLS files):
a state directory with enrolled users, the server process, and a small test PKI."""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from rsign.auth import totp
from rsign.dev import EMBEDDED
from rsign.domain import context
from rsign.runtime.app import build_app
from rsign.runtime.config import load_settings

START_TIMEOUT = 60.0  # the HSM workers start in a few seconds; a loaded CI box is slower


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class User:
    user_id: str
    pin: str
    seed: bytes
    credential_id: str
    step: int = 0  # the last TOTP step used

    def code(self) -> str:
        """A code for a fresh step: the current one, then the next (the +-1 window takes it)."""
        self.step = max(self.step + 1, totp.step_of(time.time()))
        return totp.code_for_step(self.seed, self.step)


def prepare_state(state: Path, users: int, config: str = "") -> list[User]:
    """A state directory (embedded token, SQLite) with ``users`` signers, one EC key each."""
    state.mkdir(parents=True, exist_ok=True)
    if config:
        (state / "rsign.toml").write_text(config, encoding="utf-8")
    os.environ.pop("RSIGN_PKCS11_MODULE", None)
    app = build_app(load_settings(state, embedded=EMBEDDED), pool=False)
    made = []
    try:
        with context.request(client="test", actor="test-setup"):
            for i in range(users):
                pin = f"P{secrets.randbelow(10**8):08d}"
                enr = app.auth.enrol(f"srv.user.{i:02d}", "Lò Văn Tuấn", pin, agency="Sở Nội vụ")
                cred = f"SRV-{i:02d}"
                app.keys.generate(cred, "ec-p256", enr.user_id)
                made.append(User(enr.user_id, pin, enr.seed, cred))
    finally:
        app.close()
    return made


@dataclass
class Served:
    proc: subprocess.Popen[str]
    address: str
    stderr_path: Path

    def stderr(self) -> str:
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def rsign_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "rsign.cli", *args]


def serve(state: Path, port: int, *args: str, new_session: bool = False) -> Served:
    """Start ``rsign serve`` and wait until it says it is serving (or fails)."""
    address = f"127.0.0.1:{port}"
    err = state.parent / f"serve-{state.name}-{port}-{secrets.token_hex(3)}.err"
    proc = subprocess.Popen(
        rsign_cmd("serve", "--state-dir", str(state), "--listen", address, *args),
        stdout=subprocess.PIPE,
        stderr=err.open("w", encoding="utf-8"),
        text=True,
        start_new_session=new_session,
    )
    served = Served(proc, address, err)
    assert proc.stdout is not None
    line = proc.stdout.readline()  # blocks until the ready line, or EOF when it failed
    if "rsign serving on" not in line:
        proc.wait(START_TIMEOUT)
        raise AssertionError(f"rsign serve did not start (exit {proc.returncode}): {served.stderr()}")
    # The port it says it serves on (with port 0, the one the system gave it); clients reach it on
    # loopback whatever address it listens on.
    bound = line.split("rsign serving on ", 1)[1].split(" ", 1)[0]
    served.address = f"127.0.0.1:{bound.rsplit(':', 1)[1]}"
    return served


# -- a test PKI ---------------------------------------------------------------------------------


def _name(cn: str) -> x509.Name:
    return x509.Name(
        [x509.NameAttribute(NameOID.COMMON_NAME, cn), x509.NameAttribute(NameOID.ORGANIZATION_NAME, "rsign tests")]
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    pkcs8 = serialization.PrivateFormat.PKCS8
    return key.private_bytes(serialization.Encoding.PEM, pkcs8, serialization.NoEncryption())


@dataclass
class Issued:
    cert: Path
    key: Path
    subject: str  # RFC 4514
    serial: int


@dataclass
class Authority:
    name: str
    key: ec.EllipticCurvePrivateKey
    cert: x509.Certificate
    path: Path  # the CA certificate (PEM)

    @classmethod
    def create(cls, where: Path, name: str) -> Authority:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(_name(name))
            .issuer_name(_name(name))
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False), critical=True)
            .sign(key, hashes.SHA256())
        )
        path = where / f"{name}.pem"
        path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        return cls(name, key, cert, path)

    def issue(self, where: Path, cn: str, *, server: bool, expired: bool = False) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = dt.datetime.now(dt.UTC)
        start, end = (now - dt.timedelta(days=10), now - dt.timedelta(days=1)) if expired else (
            now - dt.timedelta(hours=1),
            now + dt.timedelta(days=7),
        )
        serial = x509.random_serial_number()
        builder = (
            x509.CertificateBuilder()
            .subject_name(_name(cn))
            .issuer_name(self.cert.subject)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(start)
            .not_valid_after(end)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]),
                critical=False,
            )
        )
        if server:
            builder = builder.add_extension(
                x509.SubjectAlternativeName(
                    [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
                ),
                critical=False,
            )
        cert = builder.sign(self.key, hashes.SHA256())
        stem = f"{cn}-{serial:x}"[:60]
        cert_path, key_path = where / f"{stem}.crt", where / f"{stem}.key"
        cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
        key_path.write_bytes(_pem_key(key))
        key_path.chmod(0o600)
        return Issued(cert_path, key_path, cert.subject.rfc4514_string(), serial)


@dataclass
class Pki:
    """One CA for the server and the good clients; another CA nobody trusts."""

    where: Path
    ca: Authority = field(init=False)
    other: Authority = field(init=False)

    def __post_init__(self) -> None:
        self.where.mkdir(parents=True, exist_ok=True)
        self.ca = Authority.create(self.where, "rsign-test-ca")
        self.other = Authority.create(self.where, "someone-elses-ca")

    def server(self) -> Issued:
        return self.ca.issue(self.where, "rsign-test-server", server=True)

    def client(self, cn: str = "one-stop-centre-moc-chau") -> Issued:
        return self.ca.issue(self.where, cn, server=False)
