"""``rsign bench``: the batch path against a direct python-pkcs11 loop, measured in one run.

Everything runs on a temporary state directory (SoftHSMv2 token, keys, SQLite). For each algorithm:

(a) ``direct``: N processes (N = HSM workers) each sign digests in a tight loop over the same token
    through the PKCS#11 adapter, started together; throughput = all signatures / wall time.
(b) ``service``: ``rsign serve`` in its own process, N HSM workers; this process logs in, authorizes
    (real TOTP, real SAD) and streams batches over loopback gRPC; every signature is audited.

``ratio`` = service / direct. Unary latency: single-hash ``SignHash`` from 32 concurrent clients.
"""

from __future__ import annotations

import hashlib
import json
import multiprocessing
import os
import secrets
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsign.api.client import RsignClient
from rsign.auth import totp
from rsign.dev.embedded import EMBEDDED
from rsign.domain.algorithms import HashAlg, KeyAlgorithm, Scheme, sign_spec
from rsign.domain.settings import HsmConfig
from rsign.runtime.app import build_app
from rsign.runtime.config import load_settings
from rsign.store import Store

SCHEME = {KeyAlgorithm.RSA_2048: Scheme.RSA_PKCS1_V15, KeyAlgorithm.EC_P256: Scheme.ECDSA}


@dataclass
class BenchUser:
    user_id: str
    pin: str
    seed: bytes
    credential_id: str
    last_step: int = -1

    def code(self) -> str:
        """Next fresh step within the server's +-1 window; waits for the clock when used up."""
        while True:
            t = time.time()
            now = totp.step_of(t)
            # The previous step's code is accepted only until the current step ends: skip it
            # when the step is about to end, or a slow round trip lands outside the window.
            oldest = now - 1 if totp.STEP_SECONDS - t % totp.STEP_SECONDS > 5 else now
            step = max(self.last_step + 1, oldest)
            if step <= now + 1:
                self.last_step = step
                return totp.code_for_step(self.seed, step)
            time.sleep(totp.STEP_SECONDS - time.time() % totp.STEP_SECONDS + 0.05)


def _digests(n: int) -> list[bytes]:
    salt = secrets.token_bytes(8)
    return [hashlib.sha256(salt + i.to_bytes(8, "big")).digest() for i in range(n)]


def _direct_worker(config: HsmConfig, cka_id: bytes, alg: KeyAlgorithm, count: int, barrier: Any, out: Any) -> None:
    from rsign.hsm.pkcs11_adapter import Pkcs11Token

    token = Pkcs11Token(config)
    spec = sign_spec(alg, HashAlg.SHA256, SCHEME[alg])
    ds = _digests(count)
    token.sign(cka_id, spec, ds[:10])  # warm the key handle cache, like a running worker
    barrier.wait()
    t0 = time.perf_counter()
    for i in range(0, count, 256):
        token.sign(cka_id, spec, ds[i : i + 256])
    out.put(time.perf_counter() - t0)
    token.close()


def direct_rate(config: HsmConfig, cka_id: bytes, alg: KeyAlgorithm, workers: int, per_worker: int) -> float:
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(workers + 1)
    out: Any = ctx.Queue()
    procs = [
        ctx.Process(target=_direct_worker, args=(config, cka_id, alg, per_worker, barrier, out)) for _ in range(workers)
    ]
    for p in procs:
        p.start()
    barrier.wait()
    t0 = time.perf_counter()
    for _ in procs:
        out.get()
    wall = time.perf_counter() - t0
    for p in procs:
        p.join()
    return workers * per_worker / wall


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _rss_mb(pid: int, field: str) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


class Bench:
    def __init__(self, workers: int, quick: bool, progress: Callable[[str], None]) -> None:
        self.workers = workers
        self.quick = quick
        self.say = progress
        self.tmp = Path(tempfile.mkdtemp(prefix="rsign-bench-"))
        (self.tmp / "rsign.toml").write_text(f"[service]\nhsm_workers = {workers}\n", encoding="utf-8")
        self.settings = load_settings(self.tmp, embedded=EMBEDDED)
        self.server: subprocess.Popen[bytes] | None = None
        self.address = ""
        self.authorize_ms = 0.0
        self.chunk = 1000  # hashes per stream message

    def make_users(self, alg: KeyAlgorithm, n: int) -> list[BenchUser]:
        app = build_app(self.settings, pool=False)
        users = []
        try:
            for _ in range(n):
                uid = f"bench.{secrets.token_hex(4)}"
                pin = secrets.token_hex(4)
                enr = app.auth.enrol(uid, "Bench Signer", pin, agency="bench")
                cid = f"BENCH-{alg.value}-{uid}"
                app.keys.generate(cid, alg.value, uid)
                users.append(BenchUser(uid, pin, enr.seed, cid))
        finally:
            app.close()
        return users

    def cka_id(self, credential_id: str) -> bytes:
        app = build_app(self.settings, pool=False)
        try:
            with app.store.read() as t:
                cred = t.get_credential(credential_id)
            assert cred is not None
            return cred.cka_id
        finally:
            app.close()

    def start_server(self) -> None:
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        self.server = subprocess.Popen(
            [sys.executable, "-m", "rsign.cli", "serve", "--state-dir", str(self.tmp), "--listen", self.address],
            stdout=subprocess.DEVNULL,
        )
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                with grpc.insecure_channel(self.address) as ch:
                    r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=1)
                if r.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
        raise RuntimeError("the benchmark server did not start")

    def stop_server(self) -> None:
        if self.server:
            self.server.terminate()
            self.server.wait(timeout=30)
            self.server = None

    def stream_batches(self, users: list[BenchUser], alg: KeyAlgorithm, batch: int, concurrent: int = 2) -> float:
        """Each user signs one batch of ``batch`` hashes; ``concurrent`` streams at a time."""
        clients = []
        jobs = []
        for u in users:
            c = RsignClient(self.address)
            c.login(u.user_id, u.pin, u.code())
            clients.append(c)
            jobs.append((u, c, _digests(batch)))

        # Authorization (fresh TOTP, SAD over the whole list) is a fixed cost per batch, done
        # before the clock starts: the ratio compares signing throughput.
        sads = []
        t0 = time.perf_counter()
        for u, c, hs in jobs:
            sads.append(c.authorize(u.credential_id, hs, u.code()).sad)
        self.authorize_ms = (time.perf_counter() - t0) * 1000 / len(jobs)

        def run(job: tuple[BenchUser, RsignClient, list[bytes], str]) -> int:
            u, c, hs, sad = job
            n = 0
            for r in c.sign_stream(u.credential_id, sad, hs, SCHEME[alg].value, chunk=self.chunk):
                if r.errors:
                    raise RuntimeError(f"{len(r.errors)} items failed: {r.errors[0].reason}")
                n += len(r.signatures)
            if n != len(hs):
                raise RuntimeError("missing signatures")
            return n

        t0 = time.perf_counter()
        with ThreadPoolExecutor(concurrent) as ex:
            total = sum(ex.map(run, [(*job, sad) for job, sad in zip(jobs, sads, strict=True)]))
        wall = time.perf_counter() - t0
        for c in clients:
            c.close()
        return total / wall

    def unary_latency(self, users: list[BenchUser], alg: KeyAlgorithm, clients: int = 32) -> tuple[float, float]:
        prepared: list[tuple[RsignClient, str, str, bytes]] = []
        for u in users:
            c = RsignClient(self.address)
            c.login(u.user_id, u.pin, u.code())
            for _ in range(2):
                h = _digests(1)
                prepared.append((c, u.credential_id, c.authorize(u.credential_id, h, u.code()).sad, h[0]))
        lat: list[float] = []
        lock = threading.Lock()

        def one(item: tuple[RsignClient, str, str, bytes]) -> None:
            c, cid, sad, h = item
            t0 = time.perf_counter()
            c.sign_hash(cid, sad, [h], SCHEME[alg].value)
            dt = (time.perf_counter() - t0) * 1000
            with lock:
                lat.append(dt)

        with ThreadPoolExecutor(clients) as ex:
            list(ex.map(one, prepared))
        lat.sort()
        p99 = lat[min(len(lat) - 1, int(len(lat) * 0.99))]
        return statistics.median(lat), p99

    def run_algorithm(self, alg: KeyAlgorithm) -> dict[str, Any]:
        """Alternate direct and service rounds (the machine is shared and noisy: alternating
        exposes both to the same disturbances) and compare the medians."""
        rsa = alg.is_rsa
        rounds = 2 if self.quick else 3
        batch = 5000 if self.quick and rsa else 10_000
        batches = 2  # per round, streamed concurrently
        per_worker = (2500 if rsa else 20_000) if self.quick else (5000 if rsa else 40_000)
        unary_users = 32 if self.quick else 96
        self.say(f"{alg.value}: enrolling {rounds * batches + unary_users} bench signers and keys")
        batch_users = self.make_users(alg, rounds * batches)
        unary_users_l = self.make_users(alg, unary_users)
        cka_id = self.cka_id(batch_users[0].credential_id)
        self.start_server()
        direct: list[float] = []
        service: list[float] = []
        try:
            assert self.server is not None
            for r in range(rounds):
                self.say(f"{alg.value} round {r + 1}/{rounds}: direct loop, {self.workers} processes x {per_worker}")
                direct.append(direct_rate(self.settings.hsm, cka_id, alg, self.workers, per_worker))
                self.say(f"{alg.value} round {r + 1}/{rounds}: service, {batches} streams of {batch} over gRPC")
                service.append(self.stream_batches(batch_users[r * batches : (r + 1) * batches], alg, batch))
            self.say(f"{alg.value}: unary SignHash latency, 32 concurrent clients")
            p50, p99 = self.unary_latency(unary_users_l, alg)
            peak = _rss_mb(self.server.pid, "VmHWM")
        finally:
            self.stop_server()
        d, sv = statistics.median(direct), statistics.median(service)
        return {
            "algorithm": alg.value,
            "workers": self.workers,
            "batch_size": batch,
            "chunk": self.chunk,
            "rounds": rounds,
            "direct_sig_per_s": round(d, 1),
            "service_sig_per_s": round(sv, 1),
            "ratio": round(sv / d, 3),
            "direct_rounds": [round(x) for x in direct],
            "service_rounds": [round(x) for x in service],
            "authorize_ms": round(self.authorize_ms, 1),
            "unary_p50_ms": round(p50, 2),
            "unary_p99_ms": round(p99, 2),
            "unary_samples": 2 * unary_users,
            "peak_rss_mb": round(peak, 1),
        }

    def memory_check(self, total: int = 100_000, sads: int = 10) -> dict[str, Any]:
        """Stream ``total`` EC-P256 hashes under ``sads`` SADs; report the server's RSS growth."""
        users = self.make_users(KeyAlgorithm.EC_P256, sads)
        self.start_server()
        try:
            assert self.server is not None
            # Warm up (imports, first allocations) before the baseline.
            warm = self.make_users(KeyAlgorithm.EC_P256, 1)
            self.stream_batches(warm, KeyAlgorithm.EC_P256, 1000, concurrent=1)
            before = _rss_mb(self.server.pid, "VmRSS")
            self.stream_batches(users, KeyAlgorithm.EC_P256, total // sads, concurrent=2)
            peak = _rss_mb(self.server.pid, "VmHWM")
        finally:
            self.stop_server()
        return {
            "check": "stream_memory",
            "hashes": total,
            "sads": sads,
            "rss_before_mb": round(before, 1),
            "peak_rss_mb": round(peak, 1),
            "growth_mb": round(peak - before, 1),
        }


def run(
    workers: int, quick: bool, algorithms: list[KeyAlgorithm], memory: bool, progress: Callable[[str], None]
) -> list[dict[str, Any]]:
    bench = Bench(workers, quick, progress)
    out = []
    try:
        for alg in algorithms:
            res = bench.run_algorithm(alg)
            print(json.dumps(res), flush=True)
            out.append(res)
        if memory:
            progress("memory: 100,000 hashes through the stream under ten SADs")
            res = bench.memory_check()
            print(json.dumps(res), flush=True)
            out.append(res)
    finally:
        bench.stop_server()
        shutil.rmtree(bench.tmp, ignore_errors=True)
    return out


def default_workers() -> int:
    return os.cpu_count() or 1


# -- scale: 176 credentials, then 25,065 more ---------------------------------------------------------


def _ready_seconds(bench: Bench) -> float:
    t0 = time.perf_counter()
    bench.start_server()
    return time.perf_counter() - t0


def _sequential_p50(bench: Bench, users: list[BenchUser], per_user: int = 2) -> tuple[float, int]:
    """Median latency of single-hash SignHash calls, one at a time, over many credentials."""
    lat: list[float] = []
    for u in users:
        c = RsignClient(bench.address)
        c.login(u.user_id, u.pin, u.code())
        cred = c.get_credential(u.credential_id)
        scheme = "ECDSA" if cred.key_algorithm.startswith("EC") else "RSA_PKCS1_V15"
        for _ in range(per_user):
            h = _digests(1)
            sad = c.authorize(u.credential_id, h, u.code()).sad
            t0 = time.perf_counter()
            c.sign_hash(u.credential_id, sad, h, scheme)
            lat.append((time.perf_counter() - t0) * 1000)
        c.close()
    return statistics.median(lat), len(lat)


def scale(
    data: Path, sample_users: int, progress: Callable[[str], None], provision_progress: Callable[[str, int, int], None]
) -> list[dict[str, Any]]:
    """Provision the 176 centralized credentials, measure; add the 25,065 health and education
    officials' EC P-256 credentials, measure again. Prints one JSON object per stage."""
    from rsign.runtime import provision as prov

    bench = Bench(default_workers(), quick=False, progress=progress)
    secrets_by_user: dict[str, tuple[str, bytes]] = {}
    out: list[dict[str, Any]] = []

    def remember(user_id: str, pin: str, seed: bytes) -> None:
        secrets_by_user[user_id] = (pin, seed)

    def provision_plan(plan: prov.Plan) -> tuple[float, prov.Summary]:
        app = build_app(bench.settings, pool=True)
        try:
            t0 = time.perf_counter()
            summary = prov.apply(app, plan, provision_progress, on_enrolled=remember)
            return time.perf_counter() - t0, summary
        finally:
            app.close()

    try:
        result = _scale(bench, data, sample_users, progress, provision_plan, secrets_by_user, out)
    except BaseException:
        progress(f"failed; state kept for inspection in {bench.tmp}")
        raise
    finally:
        bench.stop_server()
    shutil.rmtree(bench.tmp, ignore_errors=True)
    return result


def _scale(
    bench: Bench,
    data: Path,
    sample_users: int,
    progress: Callable[[str], None],
    provision_plan: Callable[[Any], tuple[float, Any]],
    secrets_by_user: dict[str, tuple[str, bytes]],
    out: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    from rsign.runtime import provision as prov

    base = prov.load(data, only_centralized=True)
    progress("provisioning the 176 centralized credentials")
    took, summary = provision_plan(base)
    users = [
        BenchUser(c.holder, secrets_by_user[c.holder][0], secrets_by_user[c.holder][1], c.credential_id)
        for c in base.credentials[:sample_users]
    ]
    for stage, plan_took in (("176", took), ("25k", 0.0)):
        if stage == "25k":
            full = prov.load(data, health_education=True, only_centralized=True)
            progress("provisioning the 25,065 health and education officials (minutes)")
            plan_took, summary = provision_plan(full)
        progress(f"{stage}: starting the server")
        ready = _ready_seconds(bench)
        try:
            progress(f"{stage}: measuring SignHash latency")
            p50, n = _sequential_p50(bench, users)
        finally:
            bench.stop_server()
        store = Store(bench.settings.database_url)
        with store.read() as t:
            creds = t.count_credentials()
        store.close()
        row = {
            "stage": stage,
            "credentials": creds,
            "provision_s": round(plan_took, 1),
            "created": summary.credentials_created,
            "server_ready_s": round(ready, 2),
            "signhash_p50_ms": round(p50, 2),
            "samples": n,
        }
        if out:
            row["p50_ratio_vs_176"] = round(p50 / out[0]["signhash_p50_ms"], 3)
        print(json.dumps(row), flush=True)
        out.append(row)
    return out
