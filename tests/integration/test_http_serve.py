"""``rsign serve --http-listen``: the HTTP face beside gRPC, under the same listener rules
(plaintext only on loopback; TLS and mutual TLS from the same files)."""

from __future__ import annotations

import ssl
import subprocess
from pathlib import Path

import httpx
import pytest

from rsign.api.listener import TlsFiles
from rsign.domain.errors import ConfigurationError
from rsign.http.server import start_http
from tests.conftest import Env
from tests.integration.serving import Pki, free_port, prepare_state, rsign_cmd, serve


def test_serve_starts_the_http_face_beside_grpc(tmp_path: Path) -> None:
    state = tmp_path / "state"
    [user] = prepare_state(state, 1)
    port = free_port()
    served = serve(state, free_port(), "--http-listen", f"127.0.0.1:{port}")
    try:
        base = f"http://127.0.0.1:{port}/csc/v2"
        assert httpx.post(f"{base}/info", json={}).json()["name"] == "rsign"
        r = httpx.post(f"{base}/auth/login", json={"userID": user.user_id, "PIN": user.pin, "OTP": user.code()})
        assert r.status_code == 200, r.text
        hdr = {"Authorization": f"Bearer {r.json()['access_token']}"}
        r = httpx.post(f"{base}/credentials/list", json={}, headers=hdr)
        assert r.json()["credentialIDs"] == [user.credential_id]
    finally:
        served.stop()
    assert served.proc.returncode == 0, served.stderr()


def test_public_plaintext_http_is_refused(tmp_path: Path) -> None:
    state = tmp_path / "state"
    prepare_state(state, 0)
    out = subprocess.run(
        rsign_cmd("serve", "--state-dir", str(state), "--listen", f"127.0.0.1:{free_port()}",
                  "--http-listen", f"0.0.0.0:{free_port()}"),
        capture_output=True, text=True, timeout=120, check=False,
    )  # fmt: skip
    assert out.returncode != 0
    assert "refusing plaintext on non-loopback 0.0.0.0" in out.stderr


def test_http_over_tls_and_mutual_tls(env: Env, tmp_path: Path) -> None:
    pki = Pki(tmp_path / "pki")
    server = pki.server()
    with pytest.raises(ConfigurationError, match="refusing plaintext"):
        start_http(env.app, "0.0.0.0:0")
    http = start_http(env.app, "127.0.0.1:0", TlsFiles(server.cert, server.key))
    try:
        assert http.base_url.startswith("https://")
        ctx = ssl.create_default_context(cafile=str(pki.ca.path))
        r = httpx.post(f"{http.base_url}/csc/v2/info", json={}, verify=ctx)
        assert r.status_code == 200
        with pytest.raises(httpx.HTTPError):
            httpx.post(f"http://127.0.0.1:{http.port}/csc/v2/info", json={}, timeout=5)
        assert http.reload()
    finally:
        http.stop(1.0)
    mtls = start_http(env.app, "127.0.0.1:0", TlsFiles(server.cert, server.key, pki.ca.path))
    try:
        client = pki.client()
        ctx = ssl.create_default_context(cafile=str(pki.ca.path))
        with pytest.raises(httpx.HTTPError):  # no client certificate: refused at the handshake
            httpx.post(f"{mtls.base_url}/csc/v2/info", json={}, verify=ctx, timeout=5)
        ctx.load_cert_chain(str(client.cert), str(client.key))
        assert httpx.post(f"{mtls.base_url}/csc/v2/info", json={}, verify=ctx).status_code == 200
    finally:
        mtls.stop(1.0)
