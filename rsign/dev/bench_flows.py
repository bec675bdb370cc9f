"""Timed flows of the unary benchmark and what is recorded of them.

A flow against rsign is what a one-stop centre's client does per document: ``Authorize`` (one
hash, a fresh TOTP code) then ``SignHash``. Against the naive server it is its one ``Sign`` call.
Each flow is prepared untimed (its digest and TOTP code: getting the code may wait for the next 30 s
step) and then timed from the first request to the signature. Every signature is verified against
the signer's certificate after the round, untimed.

A RESOURCE_EXHAUSTED answer ("the server is busy ... retry shortly") is retried after a short
jittered pause, a bounded number of times, as a well-behaved client would: the retry is counted
(``busy_retries``) and its time is part of the flow's latency. Any other error fails the flow.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed

from rsign.client.raw import RsignClient
from rsign.dev.bench_common import BenchUser, digests, percentile
from rsign.dev.bench_naive import METHOD, request

T = TypeVar("T")

MAX_BUSY_RETRIES = 50
# A flow's code is for a step the server accepts for at least this long after it is taken
# (BenchUser.code): a slow flow must not fail for its code's age.
CODE_MARGIN = 10.0
_ERROR_EXAMPLES = 5


def channel(address: str, separate: bool = False) -> grpc.Channel:
    options = [("grpc.use_local_subchannel_pool", 1)] if separate else []
    return grpc.insecure_channel(address, options=options)


@dataclass
class Signer:
    """A bench signer, its key and its connections (one channel per signer and server, like one
    client application per official)."""

    user: BenchUser
    cka_id: bytes
    public_key: ec.EllipticCurvePublicKey
    rsign: dict[str, RsignClient] = field(default_factory=dict)  # server address -> logged-in client
    naive: grpc.Channel | None = None

    @classmethod
    def of(cls, user: BenchUser, cka_id: bytes, certificate: bytes) -> Signer:
        key = x509.load_der_x509_certificate(certificate).public_key()
        if not isinstance(key, ec.EllipticCurvePublicKey):
            raise TypeError(f"{user.credential_id}: expected an EC key")
        return cls(user, cka_id, key)

    def login(self, address: str, separate: bool = False) -> None:
        """``separate``: a TCP connection of its own (gRPC otherwise shares one between channels
        to the same address), so that the kernel can spread signers over serving processes."""
        c = RsignClient(channel(address, separate))
        c.login(self.user.user_id, self.user.pin, self.user.code())
        self.rsign[address] = c

    def share_session(self, address: str) -> None:
        """Use the session from the first login on another replica (sessions live in the database)."""
        first = next(iter(self.rsign.values()))
        c = RsignClient(address)
        c.token = first.token
        self.rsign[address] = c

    def close(self) -> None:
        for c in self.rsign.values():
            c.close()
        if self.naive is not None:
            self.naive.close()


@dataclass
class Prepared:
    signer: Signer
    digest: bytes
    call: Callable[[Recorder], bytes]  # the timed part; returns the signature


class Recorder:
    """What one round measured; every method may be called from any client thread."""

    def __init__(self, on_flow: Callable[[int], None] = lambda done: None) -> None:
        self._lock = threading.Lock()
        self._on_flow = on_flow
        self._in_flight = 0
        self.latencies_ms: list[float] = []
        self.signed: list[tuple[Signer, bytes, bytes]] = []
        self.errors = 0
        self.error_examples: list[str] = []
        self.busy_retries = 0
        self.max_in_flight = 0
        self.bad_signatures = 0
        self.wall_s = 0.0
        self.server_cpu_s = 0.0  # CPU time the server process used during the round (when measured)
        self.workers_cpu_s = 0.0  # and its HSM worker processes

    def failed(self, err: str) -> None:
        with self._lock:
            self.errors += 1
            if len(self.error_examples) < _ERROR_EXAMPLES:
                self.error_examples.append(err)
            done = len(self.latencies_ms) + self.errors
        self._on_flow(done)

    def busy(self) -> None:
        with self._lock:
            self.busy_retries += 1

    def timed(self, flow: Prepared) -> None:
        with self._lock:
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        t0 = time.perf_counter()
        try:
            sig = flow.call(self)
            err = ""
        except grpc.RpcError as exc:
            sig, err = b"", f"{exc.code().name}: {exc.details()}"
        except Exception as exc:  # counted and shown, never lost: the bench reports every failure
            sig, err = b"", f"{type(exc).__name__}: {exc}"
        ms = (time.perf_counter() - t0) * 1000
        with self._lock:
            self._in_flight -= 1
            if not err:
                self.latencies_ms.append(ms)
                self.signed.append((flow.signer, flow.digest, sig))
                done = len(self.latencies_ms) + self.errors
        if err:
            self.failed(err)
        else:
            self._on_flow(done)

    def verify(self) -> None:
        """Check every signature against its signer's key (after the round: untimed)."""
        for signer, digest, sig in self.signed:
            if not digest:  # an empty flow (``empty_flow``) signs nothing
                continue
            try:
                signer.public_key.verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
            except InvalidSignature:
                self.bad_signatures += 1

    @property
    def flows(self) -> int:
        return len(self.latencies_ms) + self.errors

    def rate(self) -> float:
        return len(self.latencies_ms) / self.wall_s if self.wall_s else 0.0

    def latency(self) -> dict[str, float]:
        return {f"p{q}": round(percentile(self.latencies_ms, q), 1) for q in (50, 95, 99)}


def retrying(call: Callable[[], T], rec: Recorder) -> T:
    for attempt in range(MAX_BUSY_RETRIES + 1):
        try:
            return call()
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or attempt == MAX_BUSY_RETRIES:
                raise
            rec.busy()
            time.sleep(random.uniform(0.01, 0.05) * min(attempt + 1, 5))
    raise AssertionError("unreachable: the last attempt returns or raises")


def rsign_flow(signer: Signer, address: str, wait: bool = False) -> Prepared:
    """Authorize + SignHash for one fresh digest. ``wait``: let the TOTP code wait for the next
    step (untimed); otherwise the caller has made sure a step is free (``wait_for_fresh_steps``)."""
    u, c = signer.user, signer.rsign[address]
    digest = digests(1)[0]
    otp = u.code(margin=CODE_MARGIN, wait=wait)

    def call(rec: Recorder) -> bytes:
        sad = retrying(lambda: c.authorize(u.credential_id, [digest], otp).sad, rec)
        resp = retrying(lambda: c.sign_hash(u.credential_id, sad, [digest], "ECDSA"), rec)
        return bytes(resp.signatures[0])

    return Prepared(signer, digest, call)


def empty_flow(signer: Signer, address: str) -> Prepared:
    """Two public Health.Check calls on the signer's rsign connection: what the two RPCs of a
    flow cost in this server before any work (authentication, database, HSM, audit). It bounds
    the ratio any implementation of the Authorize + SignHash contract can reach here."""
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    check = health_pb2_grpc.HealthStub(signer.rsign[address].channel).Check
    req = health_pb2.HealthCheckRequest()

    def call(rec: Recorder) -> bytes:
        retrying(lambda: check(req), rec)
        retrying(lambda: check(req), rec)
        return b""

    return Prepared(signer, b"", call)


def naive_flow(signer: Signer) -> Prepared:
    assert signer.naive is not None
    # No serializers: raw bytes both ways.
    sign = signer.naive.unary_unary(METHOD, request_serializer=None, response_deserializer=None)
    digest = digests(1)[0]
    req = request(signer.cka_id, digest)

    def call(rec: Recorder) -> bytes:
        return bytes(retrying(lambda: sign(req), rec))

    return Prepared(signer, digest, call)


def run_round(
    signers: Sequence[Signer],
    prepare: Callable[[Signer], Prepared],
    clients: int,
    tick: Callable[[int], None] = lambda done: None,
) -> Recorder:
    """One flow per signer, ``clients`` at a time; each flow is prepared just before it runs."""
    rec = Recorder(tick)
    t0 = time.perf_counter()
    with ThreadPoolExecutor(clients) as ex:
        list(ex.map(lambda s: rec.timed(prepare(s)), signers))
    rec.wall_s = time.perf_counter() - t0
    rec.verify()
    return rec


def run_paced(
    signers: Sequence[Signer],
    address: str,
    flows_per_signer: int,
    spread_s: float = 0.0,
    tick: Callable[[int], None] = lambda done: None,
) -> Recorder:
    """Every signer at once (a client thread each), ``flows_per_signer`` flows one after another,
    each with a fresh TOTP step; waiting for the step is untimed. ``spread_s``: once a step is
    free, each flow starts after a random pause of up to that long (signers working at their own
    pace) instead of at once (all signers together as a step begins: bursts)."""
    rec = Recorder(tick)

    def signer_flows(s: Signer) -> None:
        for _ in range(flows_per_signer):
            try:
                if spread_s:
                    s.user.wait_for_step()
                    time.sleep(random.uniform(0, spread_s))
                flow = rsign_flow(s, address, wait=True)
            except Exception as exc:  # preparing cannot fail in practice; if it does, it is reported
                rec.failed(f"preparing a flow: {type(exc).__name__}: {exc}")
                continue
            rec.timed(flow)

    t0 = time.perf_counter()
    with ThreadPoolExecutor(len(signers)) as ex:
        list(ex.map(signer_flows, signers))
    rec.wall_s = time.perf_counter() - t0
    rec.verify()
    return rec
