"""``rsign bench --scale``: provision the 176 centralized credentials and measure; add the 25,065
health and education officials' EC P-256 credentials and measure again (server start-up time and
sequential single-hash ``SignHash`` latency). Prints one JSON object per stage."""

from __future__ import annotations

import json
import shutil
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from rsign.client.raw import RsignClient
from rsign.dev.bench import Bench
from rsign.dev.bench_common import BenchUser, default_workers, digests
from rsign.runtime.app import build_app
from rsign.store import Store


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
            h = digests(1)
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
