"""``rsign bench``: the batch path against a direct python-pkcs11 loop, measured in one run.

Everything runs on a temporary state directory (SoftHSMv2 token, keys, SQLite). For each algorithm:

(a) ``direct``: N processes (N = HSM workers) each sign digests in a tight loop over the same token
    through the PKCS#11 adapter, started together; throughput = all signatures / wall time.
(b) ``service``: ``rsign serve`` in its own process, N HSM workers; this process logs in, authorizes
    (real TOTP, real SAD) and streams batches over loopback gRPC; every signature is audited.

``ratio`` = service / direct. Unary latency: single-hash ``SignHash`` from 32 concurrent clients.
The unary flows (``Authorize`` + ``SignHash``) are ``rsign.dev.bench_unary``; the scale run is
``rsign.dev.bench_scale``.
"""

from __future__ import annotations

import json
import multiprocessing
import secrets
import shutil
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rsign.client.raw import RsignClient
from rsign.dev.bench_common import BenchUser, ServerProcess, default_workers, digests, rsign_server, rss_mb
from rsign.dev.embedded import EMBEDDED
from rsign.domain.algorithms import HashAlg, KeyAlgorithm, Scheme, sign_spec
from rsign.domain.settings import HsmConfig
from rsign.runtime.app import build_app
from rsign.runtime.config import load_settings

__all__ = ["Bench", "default_workers", "direct_rate", "run"]

SCHEME = {KeyAlgorithm.RSA_2048: Scheme.RSA_PKCS1_V15, KeyAlgorithm.EC_P256: Scheme.ECDSA}


def _direct_worker(config: HsmConfig, cka_id: bytes, alg: KeyAlgorithm, count: int, barrier: Any, out: Any) -> None:
    from rsign.hsm.pkcs11_adapter import Pkcs11Token

    token = Pkcs11Token(config)
    spec = sign_spec(alg, HashAlg.SHA256, SCHEME[alg])
    ds = digests(count)
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


class Bench:
    def __init__(self, workers: int, quick: bool, progress: Callable[[str], None]) -> None:
        self.workers = workers
        self.quick = quick
        self.say = progress
        self.tmp = Path(tempfile.mkdtemp(prefix="rsign-bench-"))
        (self.tmp / "rsign.toml").write_text(f"[service]\nhsm_workers = {workers}\n", encoding="utf-8")
        self.settings = load_settings(self.tmp, embedded=EMBEDDED)
        self.server: ServerProcess | None = None
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
        self.server = rsign_server(self.tmp).start()
        self.address = self.server.address

    def stop_server(self) -> None:
        if self.server:
            self.server.stop()
            self.server = None

    def stream_batches(self, users: list[BenchUser], alg: KeyAlgorithm, batch: int, concurrent: int = 2) -> float:
        """Each user signs one batch of ``batch`` hashes; ``concurrent`` streams at a time."""
        clients = []
        jobs = []
        for u in users:
            c = RsignClient(self.address)
            c.login(u.user_id, u.pin, u.code())
            clients.append(c)
            jobs.append((u, c, digests(batch)))

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
                h = digests(1)
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
            peak = self.server.peak_rss_mb()
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
            before = rss_mb(self.server.pid, "VmRSS")
            self.stream_batches(users, KeyAlgorithm.EC_P256, total // sads, concurrent=2)
            peak = self.server.peak_rss_mb()
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
