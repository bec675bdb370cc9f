"""Shared fixtures: a real SoftHSMv2 token and SQLite database in a temporary state directory,
HSM worker processes, and a real gRPC server on an ephemeral port. Nothing is mocked or patched: the
two wrappers observe real objects (``CountingHsm`` counts sign calls on the way to the real pool;
``RecordingClient``, a real client, remembers the secrets it sent and was handed)."""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import secrets
import threading
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from rsign.api.server import RunningServer, start_server
from rsign.auth import totp
from rsign.client.raw import RsignClient
from rsign.dev import EMBEDDED
from rsign.domain.algorithms import KeyAlgorithm, SignSpec
from rsign.domain.clock import FakeClock
from rsign.domain.settings import Settings
from rsign.hsm.pool import HsmPool
from rsign.hsm.ports import SignResult
from rsign.runtime.app import App, build_app
from rsign.runtime.config import load_settings
from rsign.v1 import rsign_pb2 as pb

T0 = float(int(__import__("time").time()) // 30 * 30)  # a step boundary near the real time
_ids = itertools.count(1)


@dataclass
class Secrets:
    """What recording clients sent or were handed: every PIN, OTP, session token, SAD and TOTP seed
    (the secrets test searches the database, its WAL, the audit export and the log for them)."""

    pins: set[str] = field(default_factory=set)
    otps: set[str] = field(default_factory=set)
    tokens: set[str] = field(default_factory=set)  # session tokens and SADs
    seeds: set[bytes] = field(default_factory=set)


class RecordingClient(RsignClient):
    """A real client that also remembers the PINs and OTPs it sends and the session tokens and SADs
    it is handed. A subclass, not a patch: only an ``Env`` built with a recorder hands these out."""

    def __init__(self, target: str, record: Secrets) -> None:
        super().__init__(target)
        self.record = record

    def login(self, user_id: str, pin: str, otp: str) -> pb.LoginResponse:
        # Before the call: a refused login's PIN and code must not leak either.
        self.record.pins.add(pin)
        self.record.otps.add(otp)
        resp = super().login(user_id, pin, otp)
        self.record.tokens.add(resp.session_token)
        return resp

    def authorize(
        self, credential_id: str, hashes: list[bytes], otp: str, hash_alg: str = "SHA256"
    ) -> pb.AuthorizeResponse:
        self.record.otps.add(otp)
        resp = super().authorize(credential_id, hashes, otp, hash_alg)
        self.record.tokens.add(resp.sad)
        return resp


class CountingHsm:
    """Delegates to the real pool; counts sign calls so tests can prove "no HSM call"."""

    def __init__(self, inner: HsmPool) -> None:
        self.inner = inner
        self.sign_calls = 0
        self._lock = threading.Lock()

    def sign(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> list[SignResult]:
        with self._lock:
            self.sign_calls += 1
        return self.inner.sign(cka_id, spec, digests)

    def sign_async(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> Future[list[SignResult]]:
        with self._lock:
            self.sign_calls += 1
        return self.inner.sign_async(cka_id, spec, digests)

    @property
    def size(self) -> int:
        return self.inner.size

    def generate_keypair(self, alg: KeyAlgorithm, cka_id: bytes, label: str) -> bytes:
        return self.inner.generate_keypair(alg, cka_id, label)

    def generate_keypairs(self, items: Sequence[tuple[KeyAlgorithm, bytes, str]]) -> list[bytes]:
        return self.inner.generate_keypairs(items)

    def public_key(self, cka_id: bytes) -> bytes:
        return self.inner.public_key(cka_id)

    def generate_mac_key(self, cka_id: bytes, label: str) -> None:
        self.inner.generate_mac_key(cka_id, label)

    def destroy_keypair(self, cka_id: bytes) -> int:
        return self.inner.destroy_keypair(cka_id)

    def mac(self, cka_id: bytes, messages: Sequence[bytes]) -> list[bytes]:
        return self.inner.mac(cka_id, messages)

    def seal(self, plaintext: bytes, aad: bytes) -> bytes:
        return self.inner.seal(plaintext, aad)

    def unseal(self, blob: bytes, aad: bytes) -> bytes:
        return self.inner.unseal(blob, aad)

    def seal_key_id(self) -> bytes:
        return self.inner.seal_key_id()

    def rotate_seal_key(self) -> tuple[bytes, list[bytes]]:
        return self.inner.rotate_seal_key()

    def reseal(self, items: Sequence[tuple[bytes, bytes]]) -> list[bytes | None]:
        return self.inner.reseal(items)

    def read_anchor(self) -> bytes | None:
        return self.inner.read_anchor()

    def write_anchor(self, data: bytes) -> bool:
        return self.inner.write_anchor(data)

    def reset_anchor(self, data: bytes) -> bytes:
        return self.inner.reset_anchor(data)

    def close(self) -> None:
        self.inner.close()


@dataclass
class Env:
    app: App
    server: RunningServer
    clock: FakeClock
    hsm: CountingHsm
    state_dir: Path
    recorder: Secrets | None = None  # set: clients and enrolments record their secrets here

    @property
    def settings(self) -> Settings:
        return self.app.settings

    def client(self) -> RsignClient:
        """A client of this environment's server (recording, when the environment records)."""
        if self.recorder is None:
            return RsignClient(self.server.address)
        return RecordingClient(self.server.address, self.recorder)


@dataclass
class Signer:
    """A test user: knows their PIN and seed, and picks fresh TOTP steps."""

    env: Env
    user_id: str
    pin: str
    seed: bytes
    last_step: int = -1
    credentials: dict[str, str] = field(default_factory=dict)  # id -> algorithm

    def code(self) -> str:
        """A code for the next fresh step, moving the fake clock forward when the +-1 window is used up."""
        now_step = totp.step_of(self.env.clock.now())
        step = max(self.last_step + 1, now_step - 1)
        if step > now_step + 1:
            self.env.clock.advance((step - now_step - 1) * totp.STEP_SECONDS)
        self.last_step = step
        return totp.code_for_step(self.seed, step)

    def client(self, login: bool = True) -> RsignClient:
        c = self.env.client()
        if login:
            c.login(self.user_id, self.pin, self.code())
        return c

    def add_key(self, algorithm: str, multisign: int | None = None) -> str:
        cid = f"CRED-{next(_ids):04d}-{algorithm}"
        self.env.app.keys.generate(cid, algorithm, self.user_id, multisign)
        self.credentials[cid] = algorithm
        return cid


def make_signer(
    env: Env, prefix: str = "user", agency: str = "Sở Nội vụ, tỉnh Sơn La", role: str = "signer", scope: str = "agency"
) -> Signer:
    user_id = f"{prefix}.{next(_ids):04d}"
    # Distinctive, so that the secrets test can search the database and logs for every PIN.
    pin = f"P{secrets.randbelow(10**8):08d}"
    enr = env.app.auth.enrol(user_id, "Lò Văn Tuấn", pin, agency=agency, role=role, scope=scope)
    if env.recorder is not None:
        env.recorder.pins.add(pin)
        env.recorder.seeds.add(enr.seed)
    return Signer(env, user_id, pin, enr.seed)


def detail(e: pytest.ExceptionInfo[Any]) -> str:
    """The status message of a grpc.RpcError caught by pytest.raises."""
    return str(e.value.details())


def digests(n: int, alg: str = "sha256", tag: str = "") -> list[bytes]:
    return [hashlib.new(alg, f"document {tag} {i} {secrets.token_hex(4)}".encode()).digest() for i in range(n)]


@contextlib.contextmanager
def running_env(
    state: Path,
    recorder: Secrets | None = None,
    wrap: Callable[[HsmPool], CountingHsm] = CountingHsm,
    **overrides: Any,
) -> Iterator[Env]:
    """The service on ``state``: real SoftHSMv2 token, two HSM worker processes, SQLite, gRPC on
    an ephemeral port, and a fake clock the tests move. ``wrap`` puts a ``CountingHsm`` (or a
    subclass that injects a fault after the real pool answered) around the pool."""
    os.environ.pop("RSIGN_PKCS11_MODULE", None)
    tuned: dict[str, Any] = {
        "hsm_workers": 2,
        "database_busy_timeout_seconds": 1.0,
        "checkpoint_every_records": 500,
        "checkpoint_interval_seconds": 5,
        # The fake clock is deliberately not the real time (tests move it by minutes), so the
        # time-sync health check (service clock vs the database's) is off unless a test asks.
        "max_clock_drift_seconds": 0,
    }
    settings = load_settings(state, embedded=EMBEDDED).with_overrides(**(tuned | overrides))
    clock = FakeClock(T0)
    counting = wrap(HsmPool(settings.hsm, workers=2))
    app = build_app(settings, pool=True, clock=clock, hsm=counting)
    try:
        server = start_server(app, "127.0.0.1:0")
        try:
            yield Env(app, server, clock, counting, state, recorder)
        finally:
            server.stop(grace=1)
    finally:
        app.close()


@pytest.fixture(scope="session")
def env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    """One service shared by the integration tests: each makes its own users and credentials."""
    with running_env(tmp_path_factory.mktemp("rsign-state")) as e:
        yield e


@pytest.fixture
def signer(env: Env) -> Signer:
    return make_signer(env)
