"""Login, replay, lockout, unlock, session expiry and revocation over real gRPC."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from typing import Any

import grpc
import pytest

from rsign.auth import totp
from rsign.auth.service import SEED_INTEGRITY_REASON
from rsign.client.raw import RsignClient
from rsign.domain.events import EventFilter
from rsign.domain.principal import LOCAL_OPERATOR
from tests.conftest import Env, Signer, detail, digests, make_signer


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


def _sealed_seed(env: Env, user_id: str, new: bytes | None = None) -> bytes:
    """Read (or overwrite, as someone with write access to the database could) a user's sealed
    TOTP seed, directly in SQLite."""
    with sqlite3.connect(env.state_dir / "rsign.db") as db:
        if new is not None:
            db.execute("UPDATE users SET totp_sealed = ? WHERE user_id = ?", (new, user_id))
        (blob,) = db.execute("SELECT totp_sealed FROM users WHERE user_id = ?", (user_id,)).fetchone()
    return bytes(blob)


def _records(env: Env, user_id: str, action: str) -> list[dict[str, Any]]:
    with env.app.store.read() as t:  # filtered in SQL: the shared log is long late in a session
        return t.find_events(EventFilter(actor=user_id, action=action), 0, 1_000_000)


def test_tampered_seed_is_data_loss_audited_and_not_a_lockout(env: Env, signer: Signer) -> None:
    """A sealed seed altered in the database fails AES-GCM authentication in the HSM. That is
    DATA_LOSS with a message saying what cures it (not UNAVAILABLE, which clients retry), audited,
    and not counted towards lockout: no code was compared, and the fault is the server's data."""
    blob = bytearray(_sealed_seed(env, signer.user_id))
    blob[-1] ^= 0x01  # one bit of the GCM tag
    _sealed_seed(env, signer.user_id, bytes(blob))
    for _ in range(env.settings.lockout_threshold + 1):
        with pytest.raises(grpc.RpcError) as e:
            RsignClient(env.server.address).login(signer.user_id, signer.pin, signer.code())
        assert code_of(e) == grpc.StatusCode.DATA_LOSS, detail(e)
        assert "reset the authenticator" in detail(e)
    failures = [r for r in _records(env, signer.user_id, "auth.login") if r["result"] == "failure"]
    assert [r["reason"] for r in failures] == [SEED_INTEGRITY_REASON] * (env.settings.lockout_threshold + 1)
    assert _records(env, signer.user_id, "auth.lockout") == []
    with env.app.store.read() as t:
        user = t.get_user(signer.user_id)
    assert user is not None and not user.locked
    # A wrong PIN never reaches the seed: it is refused (and counted) as before, revealing nothing.
    with pytest.raises(grpc.RpcError) as e:
        RsignClient(env.server.address).login(signer.user_id, signer.pin + "x", signer.code())
    assert code_of(e) == grpc.StatusCode.UNAUTHENTICATED
    # The cure: an authenticator reset seals a new seed.
    signer.seed = env.app.admin.reset_totp(LOCAL_OPERATOR, signer.user_id).seed
    signer.client()


def test_seed_copied_from_another_user_fails_authorize(env: Env, signer: Signer) -> None:
    """A seed blob copied onto another user's row does not unseal (it is bound to its user), so
    that user's next activation fails with DATA_LOSS and a sad.issue failure record."""
    cid = signer.add_key("ec-p256")
    c = signer.client()  # logged in before the copy
    other = make_signer(env)
    _sealed_seed(env, signer.user_id, _sealed_seed(env, other.user_id))
    with pytest.raises(grpc.RpcError) as e:
        c.authorize(cid, digests(1), signer.code())
    assert code_of(e) == grpc.StatusCode.DATA_LOSS, detail(e)
    (rec,) = [r for r in _records(env, signer.user_id, "sad.issue") if r["result"] == "failure"]
    assert rec["reason"] == SEED_INTEGRITY_REASON
