"""OTP-05: the service clock off the signer's authenticator by +-45 s and +-5 min (an injected clock).
Within the +-1-step window a code is accepted, beyond it refused, whichever side the skew is on;
audit times are the service clock's, in UTC. And the time-sync health check: NOT_SERVING while the
service clock and the database server's clock differ by more than ``max_clock_drift_seconds``."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rsign.auth import totp
from rsign.domain.clock import iso_utc
from rsign.domain.events import EventFilter
from tests.conftest import Env, digests, make_signer, running_env

# (seconds into the authenticator's 30-s step, service clock minus authenticator clock, accepted)
CASES = [
    (5, +45, True),  # the service is 1 step ahead: inside the window
    (20, +45, False),  # the same skew later in the step: 2 steps ahead
    (20, -45, True),  # 1 step behind
    (5, -45, False),  # 2 steps behind
    (10, +300, False),  # 10 steps either way
    (10, 0, True),
    (10, -300, False),
    (10, 0, True),
]


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    # A service of its own: its clock goes back and forth, which the shared one's checkpoints
    # (signed with the service time, in increasing order) must never see.
    with running_env(
        tmp_path_factory.mktemp("rsign-clock"), max_clock_drift_seconds=30, checkpoint_interval_seconds=3600
    ) as e:
        yield e


def test_otp_accepted_within_one_step_of_skew_refused_beyond(skewed: Env) -> None:
    env = skewed
    signer = make_signer(env)
    cid = signer.add_key("ec-p256")
    base = totp.step_of(time.time()) * totp.STEP_SECONDS  # the authenticator's time: a step start
    env.clock.set(base + 10)
    c = signer.client()  # logged in at the authenticator's own time
    for i, (phase, skew, accepted) in enumerate(CASES):
        phone = base + 120 * (i + 1) + phase  # later each time: an accepted step is never replayed
        service = phone + skew
        env.clock.set(service)
        code = totp.code_at(signer.seed, phone)
        if accepted:
            c.authorize(cid, digests(1), code)
            with env.app.store.read() as t:
                (rec,) = t.last_events(EventFilter(action="sad.issue", actor=signer.user_id), 1)
            assert rec["result"] == "success", (phase, skew)
            assert rec["ts"] == iso_utc(service) and str(rec["ts"]).endswith("Z")  # UTC, the service clock
        else:
            with pytest.raises(grpc.RpcError) as e:
                c.authorize(cid, digests(1), code)
            assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED, (phase, skew)  # type: ignore[attr-defined]
            with env.app.store.read() as t:
                (rec,) = t.last_events(EventFilter(action="sad.issue", actor=signer.user_id), 1)
            assert rec["result"] == "failure" and rec["reason"] == "wrong one-time code"
            assert json.loads(rec["details"])["failures"] == 1 + (i > 0 and not CASES[i - 1][2])


def serving(env: Env) -> bool:
    with grpc.insecure_channel(env.server.address) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=5)
    return bool(resp.status == health_pb2.HealthCheckResponse.SERVING)


def wait_for(env: Env, want: bool, seconds: float = 10.0) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if serving(env) == want:
            return True
        time.sleep(0.2)
    return serving(env) == want


def test_time_sync_health(skewed: Env) -> None:
    env = skewed
    env.clock.set(env.app.store.database_time())
    assert wait_for(env, True)
    env.clock.set(env.app.store.database_time() + 45)  # the limit is 30 s
    assert wait_for(env, False)
    env.clock.set(env.app.store.database_time() - 45)
    assert wait_for(env, False, 3.0)
    env.clock.set(env.app.store.database_time() + 20)  # within the limit
    assert wait_for(env, True)
