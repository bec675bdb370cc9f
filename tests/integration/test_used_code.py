"""A used code in Authorize is not a wrong code: its own status, a retry-after, audited, no lockout."""

from __future__ import annotations

import json

import grpc
import pytest

from rsign.auth import totp
from rsign.client.raw import RsignClient
from rsign.domain.events import EventFilter
from tests.conftest import Env, Signer, digests


def retry_after(err: grpc.RpcError) -> str:
    """The machine-readable wait the server sent with the status (trailing metadata)."""
    trailers: tuple[tuple[str, str | bytes], ...] = err.trailing_metadata()  # type: ignore[attr-defined,assignment]
    values = [v for k, v in trailers if k == "retry-after"]
    assert len(values) == 1
    return str(values[0])


def _at_step_plus(env: Env, seconds: float) -> int:
    """Move the fake clock to ``seconds`` past the next step boundary; return that step."""
    step = totp.step_of(env.clock.now()) + 2
    env.clock.set(step * totp.STEP_SECONDS + seconds)
    return step


def test_used_code_ten_times_is_its_own_status_never_locks_and_is_audited(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    step = _at_step_plus(env, 10)
    used = totp.code_for_step(signer.seed, step)
    c = RsignClient(env.server.address)
    c.login(signer.user_id, signer.pin, used)  # the code shown now, accepted once
    signer.last_step = step
    for _ in range(10):
        with pytest.raises(grpc.RpcError) as e:
            c.authorize(cid, digests(1), used)
        err = e.value
        assert err.code() == grpc.StatusCode.ABORTED  # type: ignore[attr-defined]
        assert err.details() == "this code was already used; the next one appears in 20 s"  # type: ignore[attr-defined]
        assert retry_after(err) == "20"
    with env.app.store.read() as t:
        user = t.get_user(signer.user_id)
        recs = t.last_events(EventFilter(action="sad.issue", actor=signer.user_id), 20)
    assert user is not None and not user.locked
    assert len(recs) == 10
    for rec in recs:
        assert (rec["result"], rec["reason"]) == ("failure", "one-time code already used")
        assert json.loads(rec["details"]) == {"retry_after": 20}  # no "failures": not counted
    # The next code works at once, and the lockout counter never moved: five wrong codes would lock.
    env.clock.advance(20)
    c.authorize(cid, digests(1), signer.code())
    with env.app.store.read() as t:
        assert t.last_events(EventFilter(action="auth.lockout", actor=signer.user_id), 1) == []


def test_retry_after_counts_down_with_the_clock(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    step = _at_step_plus(env, 3)
    used = totp.code_for_step(signer.seed, step)
    c = RsignClient(env.server.address)
    c.login(signer.user_id, signer.pin, used)
    signer.last_step = step
    waits: list[str] = []
    for _ in range(3):
        with pytest.raises(grpc.RpcError) as e:
            c.authorize(cid, digests(1), used)
        waits.append(retry_after(e.value))
        env.clock.advance(9.5)
    assert waits == ["27", "18", "8"]


def test_wrong_code_in_authorize_still_counts(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    good = signer.code()
    bad = f"{(int(good) + 1) % 10**6:06d}"
    with pytest.raises(grpc.RpcError) as e:
        c.authorize(cid, digests(1), bad)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]
    assert e.value.details() == "wrong one-time code"  # type: ignore[attr-defined]
    with env.app.store.read() as t:
        (rec,) = t.last_events(EventFilter(action="sad.issue", actor=signer.user_id), 1)
    assert json.loads(rec["details"]) == {"failures": 1}


def test_login_with_a_used_code_stays_generic_and_counts(env: Env, signer: Signer) -> None:
    code = signer.code()
    RsignClient(env.server.address).login(signer.user_id, signer.pin, code)
    with pytest.raises(grpc.RpcError) as e:
        RsignClient(env.server.address).login(signer.user_id, signer.pin, code)
    # The same answer as a wrong PIN: Login must not tell a code replayer that the PIN was right.
    assert e.value.code() == grpc.StatusCode.UNAUTHENTICATED  # type: ignore[attr-defined]
    assert e.value.details() == "login failed: wrong user id, PIN or one-time code"  # type: ignore[attr-defined]
    with env.app.store.read() as t:
        (rec,) = t.last_events(EventFilter(action="auth.login", actor=signer.user_id), 1)
    assert json.loads(rec["details"]) == {"failures": 1}
