"""Login, replay, lockout, unlock, session expiry and revocation over real gRPC."""

from __future__ import annotations

import subprocess
import sys

import grpc
import pytest

from rsign.api.client import RsignClient
from rsign.auth import totp
from tests.conftest import Env, Signer, detail, make_signer


def code_of(exc: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return exc.value.code()  # type: ignore[no-any-return,attr-defined]


def test_login_success_lists_own_credentials(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    other = make_signer(env)
    other.add_key("ec-p256")
    c = signer.client()
    assert [cr.credential_id for cr in c.list_credentials()] == [cid]
    assert len(c.token) >= 43  # 256 bits, base64url


def test_wrong_pin(env: Env, signer: Signer) -> None:
    c = RsignClient(env.server.address)
    with pytest.raises(grpc.RpcError) as e:
        c.login(signer.user_id, "000000" if signer.pin != "000000" else "111111", signer.code())
    assert code_of(e) == grpc.StatusCode.UNAUTHENTICATED


def test_wrong_otp(env: Env, signer: Signer) -> None:
    c = RsignClient(env.server.address)
    good = signer.code()
    bad = f"{(int(good) + 1) % 10**6:06d}"
    with pytest.raises(grpc.RpcError) as e:
        c.login(signer.user_id, signer.pin, bad)
    assert code_of(e) == grpc.StatusCode.UNAUTHENTICATED


def test_replayed_otp_is_refused_and_next_step_works(env: Env, signer: Signer) -> None:
    code = signer.code()
    RsignClient(env.server.address).login(signer.user_id, signer.pin, code)
    with pytest.raises(grpc.RpcError) as e:
        RsignClient(env.server.address).login(signer.user_id, signer.pin, code)
    assert code_of(e) == grpc.StatusCode.UNAUTHENTICATED
    # An older step than the last accepted one is a replay too.
    older = totp.code_for_step(signer.seed, signer.last_step - 1)
    with pytest.raises(grpc.RpcError):
        RsignClient(env.server.address).login(signer.user_id, signer.pin, older)
    RsignClient(env.server.address).login(signer.user_id, signer.pin, signer.code())


def test_lockout_after_five_failures_and_unlock(env: Env, signer: Signer) -> None:
    c = RsignClient(env.server.address)
    codes = []
    for _ in range(5):
        with pytest.raises(grpc.RpcError) as e:
            c.login(signer.user_id, signer.pin + "x", signer.code())
        codes.append(code_of(e))
    assert codes[:4] == [grpc.StatusCode.UNAUTHENTICATED] * 4
    assert codes[4] == grpc.StatusCode.FAILED_PRECONDITION
    # Correct PIN and code: still locked.
    with pytest.raises(grpc.RpcError) as e:
        c.login(signer.user_id, signer.pin, signer.code())
    assert code_of(e) == grpc.StatusCode.FAILED_PRECONDITION
    # The CLI unlocks while the server runs.
    out = subprocess.run(
        [sys.executable, "-m", "rsign.cli", "users", "unlock", signer.user_id, "--state-dir", str(env.state_dir)],
        capture_output=True,
        text=True,
        check=True,
    )
    assert "unlocked" in out.stdout
    c.login(signer.user_id, signer.pin, signer.code())
    assert c.list_credentials() == []


def test_success_resets_failure_count(env: Env, signer: Signer) -> None:
    c = RsignClient(env.server.address)
    for _ in range(4):
        with pytest.raises(grpc.RpcError):
            c.login(signer.user_id, signer.pin + "x", signer.code())
    c.login(signer.user_id, signer.pin, signer.code())
    for _ in range(4):
        with pytest.raises(grpc.RpcError) as e:
            c.login(signer.user_id, signer.pin + "x", signer.code())
        assert code_of(e) == grpc.StatusCode.UNAUTHENTICATED


def test_idle_expiry(env: Env, signer: Signer) -> None:
    c = signer.client()
    env.clock.advance(env.settings.session_idle_seconds - 60)
    c.list_credentials()  # still alive, and this refreshes the idle timer
    env.clock.advance(env.settings.session_idle_seconds - 60)
    c.list_credentials()
    env.clock.advance(env.settings.session_idle_seconds + 1)
    with pytest.raises(grpc.RpcError) as e:
        c.list_credentials()
    assert code_of(e) == grpc.StatusCode.UNAUTHENTICATED
    assert "idle" in detail(e)


def test_absolute_expiry(env: Env, signer: Signer) -> None:
    c = signer.client()
    step = env.settings.session_idle_seconds - 60
    elapsed = 0.0
    while elapsed + step < env.settings.session_max_seconds:
        env.clock.advance(step)
        elapsed += step
        c.list_credentials()
    env.clock.advance(env.settings.session_max_seconds - elapsed + 1)
    with pytest.raises(grpc.RpcError) as e:
        c.list_credentials()
    assert code_of(e) == grpc.StatusCode.UNAUTHENTICATED
    assert "maximum lifetime" in detail(e)


def test_logout_revokes(env: Env, signer: Signer) -> None:
    c = signer.client()
    token = c.token
    c.logout()
    c.token = token
    with pytest.raises(grpc.RpcError) as e:
        c.list_credentials()
    assert code_of(e) == grpc.StatusCode.UNAUTHENTICATED


def test_no_or_forged_session(env: Env) -> None:
    c = RsignClient(env.server.address)
    for token in ("", "forged-token-" + "A" * 40):
        c.token = token
        with pytest.raises(grpc.RpcError) as e:
            c.list_credentials()
        assert code_of(e) == grpc.StatusCode.UNAUTHENTICATED


def test_health_is_serving(env: Env) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(env.server.address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""))
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
