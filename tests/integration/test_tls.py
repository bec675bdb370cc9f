"""TLS and mutual TLS on the gRPC listener; plaintext only on loopback; certificates reloaded on
SIGHUP. The in-process servers share the session's application (real token, real database); the
reload test runs ``rsign serve`` as a process, since it is about signals."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from click.testing import CliRunner, Result
from cryptography import x509

from rsign.api.listener import TlsFiles
from rsign.api.server import RunningServer, start_server
from rsign.cli.main import main
from rsign.client.raw import RsignClient
from rsign.dev import EMBEDDED
from rsign.domain.errors import ConfigurationError
from rsign.domain.events import EventFilter
from rsign.runtime.config import load_settings
from rsign.v1 import rsign_pb2 as pb
from tests.conftest import Env, Signer, digests, make_signer
from tests.integration.serving import Issued, Pki, free_port, prepare_state, rsign_cmd, serve


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def tls_server(env: Env, pki: Pki) -> Iterator[RunningServer]:
    cert = pki.server()
    srv = start_server(env.app, "127.0.0.1:0", TlsFiles(cert.cert, cert.key))
    yield srv
    srv.stop(grace=1)


@pytest.fixture(scope="module")
def mtls_server(env: Env, pki: Pki) -> Iterator[RunningServer]:
    cert = pki.server()
    srv = start_server(env.app, "127.0.0.1:0", TlsFiles(cert.cert, cert.key, pki.ca.path))
    yield srv
    srv.stop(grace=1)


def sign_one(c: RsignClient, s: Signer) -> bytes:
    cred = s.add_key("ec-p256")
    c.login(s.user_id, s.pin, s.code())
    d = digests(1)
    sad = c.authorize(cred, d, s.code()).sad
    sig = c.sign_hash(cred, sad, d, "ECDSA").signatures[0]
    # The stream carries the same caller identity.
    d2 = digests(2)
    sad2 = c.authorize(cred, d2, s.code()).sad
    chunks = list(c.sign_stream(cred, sad2, d2, "ECDSA", chunk=1))
    assert sum(len(ch.signatures) for ch in chunks) == 2
    return bytes(sig)


def records_of(env: Env, user_id: str) -> list[dict[str, object]]:
    with env.app.store.read() as t:
        return list(t.find_events(EventFilter(actor=user_id), 0, 1000))


def test_plaintext_client_cannot_talk_to_a_tls_listener(env: Env, tls_server: RunningServer) -> None:
    s = make_signer(env)
    c = RsignClient(tls_server.address)  # no CA: plaintext
    with pytest.raises(grpc.RpcError) as e:
        c.auth.Login(pb.LoginRequest(user_id=s.user_id, pin=s.pin, otp=s.code()), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert records_of(env, s.user_id) == []  # never reached the service
    c.close()


def test_tls_client_signs(env: Env, tls_server: RunningServer, pki: Pki) -> None:
    s = make_signer(env)
    c = RsignClient(tls_server.address, ca_file=pki.ca.path)
    assert sign_one(c, s)
    c.close()
    # Server authentication only: the record names the address, no client certificate.
    assert all("cert:" not in str(r["client"]) for r in records_of(env, s.user_id))


def test_mtls_client_signs_and_its_subject_is_in_every_record(env: Env, mtls_server: RunningServer, pki: Pki) -> None:
    s = make_signer(env)
    me = pki.client()
    c = RsignClient(mtls_server.address, ca_file=pki.ca.path, cert_file=me.cert, key_file=me.key)
    assert sign_one(c, s)
    c.close()
    records = records_of(env, s.user_id)
    actions = {r["action"] for r in records}
    assert {"auth.login", "sad.issue", "sad.consume", "sign.hash", "batch.start", "batch.end"} <= actions
    for r in records:
        client = str(r["client"])
        assert client.startswith("ipv4:127.0.0.1:") and client.endswith(f" cert:{me.subject}"), r
        assert len(client) <= 128


@pytest.mark.parametrize("presented", ["no certificate", "another CA's", "expired"])
def test_mtls_refuses_at_the_handshake(env: Env, mtls_server: RunningServer, pki: Pki, presented: str) -> None:
    s = make_signer(env)
    cert: Issued | None = {
        "no certificate": None,
        "another CA's": pki.other.issue(pki.where, "intruder", server=False),
        "expired": pki.ca.issue(pki.where, "expired-client", server=False, expired=True),
    }[presented]
    c = RsignClient(
        mtls_server.address,
        ca_file=pki.ca.path,
        cert_file=cert.cert if cert else None,
        key_file=cert.key if cert else None,
    )
    with pytest.raises(grpc.RpcError) as e:
        c.auth.Login(pb.LoginRequest(user_id=s.user_id, pin=s.pin, otp=s.code()), timeout=10)
    assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    assert records_of(env, s.user_id) == []  # refused before any call reached the service
    c.close()


def test_plaintext_only_on_loopback(env: Env, caplog: pytest.LogCaptureFixture) -> None:
    for listen in ("0.0.0.0:0", "[::]:0", "rsign.example:0"):
        with pytest.raises(ConfigurationError, match="refusing plaintext on non-loopback"):
            start_server(env.app, listen)
    # The explicit opt-out works, and says so loudly.
    with caplog.at_level("WARNING"):
        srv = start_server(env.app, "0.0.0.0:0", behind_tls_proxy=True)
    srv.stop(grace=0)
    assert "SERVING PLAINTEXT gRPC ON NON-LOOPBACK 0.0.0.0:0" in caplog.text


def test_rsign_serve_refuses_a_public_plaintext_listener(tmp_path: Path) -> None:
    out = subprocess.run(
        rsign_cmd("serve", "--state-dir", str(tmp_path / "state"), "--listen", "0.0.0.0:50999"),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert out.stderr.strip().splitlines() == [
        "error: refusing plaintext on non-loopback 0.0.0.0:50999: give --tls-cert and --tls-key, "
        "listen on 127.0.0.1, or pass --insecure-behind-tls-proxy"
    ]


def test_tls_files_are_checked_at_start(env: Env, pki: Pki, tmp_path: Path) -> None:
    a, b = pki.server(), pki.server()
    with pytest.raises(ConfigurationError, match="does not belong to the certificate"):
        start_server(env.app, "127.0.0.1:0", TlsFiles(a.cert, b.key))
    with pytest.raises(ConfigurationError, match="cannot read the TLS key"):
        start_server(env.app, "127.0.0.1:0", TlsFiles(a.cert, tmp_path / "missing.key"))


# -- reload on SIGHUP (a real process) -------------------------------------------------------------


def served_serial(port: int, ca: Path) -> int:
    """The serial number of the certificate the server presents to a new connection."""
    ctx = ssl.create_default_context(cafile=str(ca))
    ctx.set_alpn_protocols(["h2"])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as raw, ctx.wrap_socket(
        raw, server_hostname="localhost"
    ) as tls:
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return int(x509.load_der_x509_certificate(der).serial_number)


def install(cert: Issued, where: Path) -> None:
    """Replace the served files the way an operator's tooling would: write, then rename."""
    for src, name in ((cert.cert, "server.crt"), (cert.key, "server.key")):
        tmp = where / f".{name}.new"
        shutil.copyfile(src, tmp)
        os.replace(tmp, where / name)


def wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if callable(predicate) and predicate():
            return True
        time.sleep(0.1)
    return False


def test_sighup_reloads_the_certificate_without_dropping_the_service(tmp_path: Path, pki: Pki) -> None:
    state = tmp_path / "state"
    (user,) = prepare_state(state, 1)
    first, second = pki.server(), pki.server()
    install(first, tmp_path)
    port = free_port()
    srv = serve(
        state, port, "--tls-cert", str(tmp_path / "server.crt"), "--tls-key", str(tmp_path / "server.key")
    )
    try:
        assert served_serial(port, pki.ca.path) == first.serial
        before = RsignClient(srv.address, ca_file=pki.ca.path)
        before.login(user.user_id, user.pin, user.code())
        assert [c.credential_id for c in before.list_credentials()] == [user.credential_id]

        install(second, tmp_path)
        srv.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: served_serial(port, pki.ca.path) == second.serial), srv.stderr()
        # Not dropped: the connection made before the reload still works, and so does a new one.
        assert [c.credential_id for c in before.list_credentials()] == [user.credential_id]
        after = RsignClient(srv.address, ca_file=pki.ca.path)
        after.login(user.user_id, user.pin, user.code())

        # A bad file is refused and the service keeps the certificate it has.
        (tmp_path / "server.crt").write_text("not a certificate\n")
        srv.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "TLS reload refused" in srv.stderr()), srv.stderr()
        assert served_serial(port, pki.ca.path) == second.serial
        assert srv.proc.poll() is None
        before.close()
        after.close()
    finally:
        srv.stop()
    assert srv.proc.returncode == 0, srv.stderr()


# -- the CLI's --server commands over TLS ---------------------------------------------------------


def run_cli(env: Env, address: str, login: tuple[str, str, str], *args: str) -> Result:
    """The CLI in this process (click's runner): the PIN and one-time code typed at its prompts."""
    user, pin, otp = login
    return CliRunner().invoke(
        main,
        ["users", "--server", address, "--as", user, *args, "--state-dir", str(env.state_dir)],
        input=f"{pin}\n{otp}\n",
    )


def test_cli_acts_through_a_mutual_tls_server(env: Env, mtls_server: RunningServer, pki: Pki) -> None:
    admin = make_signer(env, "aa.tls", agency="UBND huyện Sốp Cộp", role="agency_admin")
    user = make_signer(env, "tls.user", agency="UBND huyện Sốp Cộp")
    me = pki.client("cli-operator")
    tls = ("--ca", str(pki.ca.path), "--cert", str(me.cert), "--key", str(me.key))
    address = mtls_server.address
    out = run_cli(env, address, (admin.user_id, admin.pin, admin.code()), *tls, "search", "--name", "lo van")
    assert out.exit_code == 0, out.output
    assert user.user_id in out.stdout
    assert all(str(r["client"]).endswith(f" cert:{me.subject}") for r in records_of(env, admin.user_id))
    # Without a client certificate the server refuses the connection; the CLI says so in one line.
    out = run_cli(env, address, (admin.user_id, admin.pin, admin.code()), "--ca", str(pki.ca.path), "search")
    last = out.stderr.strip().splitlines()[-1]
    assert out.exit_code == 2 and last.startswith("error (UNAVAILABLE)") and isinstance(out.exception, SystemExit)
    # A certificate without its key is a usage mistake, caught before connecting.
    out = run_cli(env, address, (admin.user_id, admin.pin, admin.code()), *tls[:4], "search")
    assert out.exit_code == 2 and out.stderr.strip().splitlines()[-1] == "error: --cert and --key go together"


def test_example_configuration_loads(tmp_path: Path) -> None:
    """hsm_config/rsign.toml.example's [service] table is what rsign reads (every key known)."""
    example = (Path(__file__).resolve().parents[2] / "hsm_config" / "rsign.toml.example").read_text(encoding="utf-8")
    # Its [hsm] table names a vendor module this machine lacks: the [service] table (the last) alone.
    (tmp_path / "rsign.toml").write_text(example[example.index("\n[service]\n") :], encoding="utf-8")
    settings = load_settings(tmp_path, embedded=EMBEDDED)
    assert settings.tls_cert == "/etc/rsign/tls/server.crt" and settings.tls_client_ca.endswith("clients-ca.pem")
    assert settings.shutdown_grace_seconds == 10.0
    # A relative path is relative to the state directory that holds rsign.toml.
    (tmp_path / "rsign.toml").write_text('[service]\ntls_cert = "tls/server.crt"\n')
    assert load_settings(tmp_path, embedded=EMBEDDED).tls_cert == str(tmp_path.resolve() / "tls" / "server.crt")
