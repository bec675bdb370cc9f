"""The worker pool on a fresh token: secrets sealed by one worker unseal in any other, even when
the workers started together and each created a sealing key (SoftHSMv2 refreshes its object index
lazily across processes)."""

from __future__ import annotations

import os
import secrets
import signal
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.hazmat.primitives.serialization import load_der_public_key

from rsign.dev.softhsm import ensure_token
from rsign.domain.algorithms import HashAlg, KeyAlgorithm, Scheme, sign_spec
from rsign.domain.errors import HsmUnavailable
from rsign.hsm.pool import HsmPool


def test_seal_unseal_across_workers_on_a_fresh_token(tmp_path: Path) -> None:
    for attempt in range(3):  # the race is at start-up: try it on several fresh tokens
        state = tmp_path / f"t{attempt}"
        state.mkdir()
        pool = HsmPool(ensure_token(state), workers=2)
        try:
            blobs = [pool.seal(f"seed {i}".encode(), b"user-7") for i in range(16)]
            for i, blob in enumerate(blobs):
                for _ in range(3):  # lands on either worker
                    assert pool.unseal(blob, b"user-7") == f"seed {i}".encode()
        finally:
            pool.close()


# -- one-job calls on an idle worker (HsmPool._direct) ------------------------------------------
#
# A synchronous one-job call that finds the queue empty and a worker idle writes to that worker's
# pipe and reads the answer on the calling thread. The pipe carries answers in order, so the
# danger is a mix-up: a caller reading an answer meant for a queued job, or the reverse.


def _ec_key(pool: HsmPool) -> tuple[bytes, ec.EllipticCurvePublicKey]:
    cka = secrets.token_bytes(16)
    key = load_der_public_key(pool.generate_keypair(KeyAlgorithm.EC_P256, cka, "direct-test"))
    assert isinstance(key, ec.EllipticCurvePublicKey)
    return cka, key


def test_one_job_calls_on_an_idle_pool_skip_the_queue(tmp_path: Path) -> None:
    pool = HsmPool(ensure_token(tmp_path), workers=2)
    try:
        before = pool.stats().direct
        cka, key = _ec_key(pool)
        spec = sign_spec(KeyAlgorithm.EC_P256, HashAlg.SHA256, Scheme.ECDSA)
        for _ in range(10):
            digest = secrets.token_bytes(32)
            (sig,) = pool.sign(cka, spec, [digest])
            assert isinstance(sig, bytes)
            key.verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))
        assert pool.stats().direct - before == 10  # the signatures (key generation is queued)
        # Several digests are spread over the workers through the queue, not run directly.
        assert len(pool.sign(cka, spec, [secrets.token_bytes(32) for _ in range(8)])) == 8
        assert pool.stats().direct - before == 10
        # The audit anchor's reads go through the queue: every worker answers in turn.
        pool.read_anchor()
        assert pool.stats().direct - before == 10
        assert pool.stats().in_flight == 0 and pool.stats().busy == 0
    finally:
        pool.close()


def test_direct_and_queued_jobs_never_mix_up_answers(tmp_path: Path) -> None:
    """Threads making one-job calls race with batches on the same two workers: every answer
    belongs to its own request (each unsealed secret is its own, every signature verifies). A lost
    answer shows as a caller waiting out the job timeout."""
    pool = HsmPool(ensure_token(tmp_path), workers=2, job_timeout=15)
    try:
        cka, key = _ec_key(pool)
        spec = sign_spec(KeyAlgorithm.EC_P256, HashAlg.SHA256, Scheme.ECDSA)
        sealed = [(f"secret {i}".encode(), pool.seal(f"secret {i}".encode(), b"aad")) for i in range(8)]
        errors: list[str] = []

        def one_job_calls(n: int) -> None:
            for i in range(40):
                if errors:
                    return
                plain, blob = sealed[(n + i) % len(sealed)]
                if pool.unseal(blob, b"aad") != plain:
                    errors.append("an unseal returned another request's secret")
                digest = secrets.token_bytes(32)
                (sig,) = pool.sign(cka, spec, [digest])
                try:
                    key.verify(sig, digest, ec.ECDSA(Prehashed(hashes.SHA256())))  # type: ignore[arg-type]
                except InvalidSignature:
                    errors.append("a one-job signature is not over its own digest")

        def batches(_: int) -> None:
            for _ in range(6):
                if errors:
                    return
                ds = [secrets.token_bytes(32) for _ in range(300)]
                for d, sig in zip(ds, pool.sign_async(cka, spec, ds).result(timeout=20), strict=True):
                    try:
                        key.verify(sig, d, ec.ECDSA(Prehashed(hashes.SHA256())))  # type: ignore[arg-type]
                    except InvalidSignature:
                        errors.append("a batch signature is not over its own digest")

        def stopping_at_first_error(work: Callable[[int], None]) -> Callable[[int], None]:
            def run(n: int) -> None:
                try:
                    work(n)
                except Exception as exc:  # a job timeout, or a signature of the wrong length
                    errors.append(f"{type(exc).__name__}: {exc}")

            return run

        with ThreadPoolExecutor(8) as ex:
            runs = [ex.submit(stopping_at_first_error(one_job_calls), n) for n in range(6)]
            runs += [ex.submit(stopping_at_first_error(batches), n) for n in range(2)]
            for run in runs:
                run.result()
        assert errors == []
        stats = pool.stats()
        assert stats.direct > 0, "some one-job calls found a worker idle"
        assert stats.restarts == 0 and stats.in_flight == 0 and stats.queued == 0
    finally:
        pool.close()


def test_worker_killed_during_a_direct_job_fails_it_and_is_replaced(tmp_path: Path) -> None:
    pool = HsmPool(ensure_token(tmp_path), workers=1)
    try:
        blob = pool.seal(b"secret", b"aad")
        victim = pool.worker_pids()[0]
        outcome: dict[str, BaseException | None] = {}

        def call() -> None:
            try:
                pool.unseal(blob, b"aad")
                outcome["error"] = None
            except BaseException as exc:
                outcome["error"] = exc

        # The worker stopped (SIGSTOP) holds the direct job: the caller waits in the pipe.
        os.kill(victim, signal.SIGSTOP)
        t = threading.Thread(target=call)
        t.start()
        deadline = time.monotonic() + 10
        while pool.stats().busy == 0 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert pool.stats().direct >= 1 and pool.stats().busy == 1
        os.kill(victim, signal.SIGKILL)
        t.join(timeout=30)
        assert not t.is_alive(), "the direct caller hung on a dead worker"
        assert isinstance(outcome["error"], HsmUnavailable)
        assert victim not in pool.worker_pids() and pool.stats().restarts == 1
        assert pool.unseal(blob, b"aad") == b"secret"  # the replacement answers
        assert pool.stats().busy == 0
    finally:
        pool.close()


def test_a_direct_job_that_outlives_the_job_timeout_fails_and_the_worker_is_replaced(tmp_path: Path) -> None:
    pool = HsmPool(ensure_token(tmp_path), workers=1, job_timeout=0.5)
    try:
        blob = pool.seal(b"secret", b"aad")
        victim = pool.worker_pids()[0]
        os.kill(victim, signal.SIGSTOP)  # answers nothing until killed
        direct = pool.stats().direct
        with pytest.raises(HsmUnavailable):
            pool.unseal(blob, b"aad")
        assert pool.stats().direct == direct + 1  # it was a direct job
        assert victim not in pool.worker_pids()
        # The abandoned job's answer is never read as the next one's: a new worker answers.
        assert pool.unseal(blob, b"aad") == b"secret"
    finally:
        pool.close()


def test_back_to_back_direct_calls_do_not_starve_a_queued_job(tmp_path: Path) -> None:
    """A thread calling one-job operations without pause on a one-worker pool: a queued job
    (several digests go through the queue) still gets the worker, at once."""
    pool = HsmPool(ensure_token(tmp_path), workers=1)
    try:
        cka, key = _ec_key(pool)
        spec = sign_spec(KeyAlgorithm.EC_P256, HashAlg.SHA256, Scheme.ECDSA)
        blob = pool.seal(b"busy", b"aad")
        stop = threading.Event()

        def hammer() -> None:
            while not stop.is_set():
                pool.unseal(blob, b"aad")

        t = threading.Thread(target=hammer)
        t.start()
        try:
            time.sleep(0.2)
            ds = [secrets.token_bytes(32) for _ in range(8)]
            before = pool.stats().direct
            sigs = pool.sign_async(cka, spec, ds).result(timeout=60)
            # Once the sender holds the job, no direct call takes the worker before it: at most
            # the one under way and a few that started before the sender woke.
            overtaken = pool.stats().direct - before
        finally:
            stop.set()
            t.join(timeout=10)
        assert overtaken <= 10, f"{overtaken} direct calls ran while a queued job waited"
        for d, sig in zip(ds, sigs, strict=True):
            key.verify(sig, d, ec.ECDSA(Prehashed(hashes.SHA256())))  # type: ignore[arg-type]
    finally:
        pool.close()


def test_a_worker_that_died_while_idle_costs_the_next_call_nothing(tmp_path: Path) -> None:
    pool = HsmPool(ensure_token(tmp_path), workers=1)
    try:
        blob = pool.seal(b"still here", b"aad")
        victim = pool.worker_pids()[0]
        os.kill(victim, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while pool.healthy() and time.monotonic() < deadline:
            time.sleep(0.01)
        # Not written to the dead worker's pipe: queued, and the sender starts a new worker.
        assert pool.unseal(blob, b"aad") == b"still here"
        assert victim not in pool.worker_pids() and pool.healthy()
    finally:
        pool.close()
