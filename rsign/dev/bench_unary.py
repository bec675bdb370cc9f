"""``rsign bench --unary``: the one-stop centres' day, one document at a time.

Each official is logged in; per document their client calls ``Authorize`` (one hash, a fresh TOTP
code) and ``SignHash``. The benchmark provisions N signers with EC P-256 credentials through the
real provisioning path (production Argon2id PIN hashes, keys in the temporary SoftHSMv2 token),
logs them all in (untimed), then C concurrent clients run one flow per signer against ``rsign
serve`` in its own process (real gRPC over loopback, real TOTP, SAD and audit). The yardstick is a
naive gRPC signing server (``rsign.dev.bench_naive``: one RPC, same token and keys, HSM worker
processes, no auth, no audit) driven by the same clients. Rounds alternate (the machine is shared
and noisy: alternating exposes both to the same disturbances); the JSON holds the medians.

Three modes, one JSON object each:

* ``unary``: rsign against the naive server, ``rounds`` alternating rounds of one flow per signer;
* ``paced``: S signers at once, each doing F separate flows. A TOTP step, once accepted, is never
  accepted again, and the server accepts steps within +-1 of now: a signer gets at most three
  codes at once, then one more per 30 s step. So the flows are paced by the clock, as they would
  be for a person, and the mode runs twice: ``burst``, every signer's next flow starting as soon as
  its step is free (after the first ones, all S together as a step begins: the worst case), then
  ``spread``, each flow at a random moment of the step (people working at their own pace).
  Latency is timed from the first request, not the wait for the step; flows/s is set by the clock
  and is not reported as throughput;
* ``postgres``: two ``rsign serve`` replicas on one PostgreSQL database (created for the run and
  dropped after) and the same token, clients split across both, against one replica on the
  same database; rounds alternate.
"""

from __future__ import annotations

import json
import shutil
import statistics
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from rsign.dev.bench_common import (
    PG_ADMIN,
    BenchUser,
    Progress,
    ServerProcess,
    StageProgress,
    fresh_database,
    rsign_server,
    wait_for_fresh_steps,
)
from rsign.dev.bench_flows import (
    Recorder,
    Signer,
    channel,
    empty_flow,
    naive_flow,
    rsign_flow,
    run_paced,
    run_round,
)
from rsign.dev.bench_naive import naive_server
from rsign.dev.embedded import EMBEDDED
from rsign.domain import context
from rsign.runtime.app import build_app
from rsign.runtime.config import load_settings

FLOW = "Authorize (1 hash, fresh TOTP) + SignHash, EC P-256"
PIN_KDF = "production Argon2id (rsign.auth.pins), provisioned through rsign.runtime.provision"
_LOGIN_THREADS = 8
SPREAD_S = 25.0  # paced mode, spread phase: a flow starts within this long after its step is free


class UnaryBench:
    """A temporary state directory (token, keys, database) and the servers running on it."""

    def __init__(self, workers: int, say: Progress, stage: StageProgress, database_url: str = "") -> None:
        self.workers = workers
        self.say = say
        self.stage = stage
        self.tmp = Path(tempfile.mkdtemp(prefix="rsign-bench-unary-"))
        toml = f'database_url = "{database_url}"\n' if database_url else ""
        (self.tmp / "rsign.toml").write_text(toml + f"[service]\nhsm_workers = {workers}\n", encoding="utf-8")
        self.settings = load_settings(self.tmp, embedded=EMBEDDED)
        self.servers: list[ServerProcess] = []
        self.signers: list[Signer] = []
        self.timings: dict[str, float] = {}

    def provision(self, n: int) -> None:
        """N signers, each with an EC P-256 credential, through the real provisioning path."""
        from rsign.runtime import provision as prov

        ids = [f"bench.{i:05d}" for i in range(n)]
        plan = prov.Plan(
            users=[prov.UserRow(uid, f"Bench Signer {i}", "bench", f"bench:{i}") for i, uid in enumerate(ids)],
            credentials=[prov.CredentialRow(f"BENCH-{uid}", "ec-p256", holder=uid) for uid in ids],
        )
        enrolled: dict[str, tuple[str, bytes]] = {}
        t0 = time.perf_counter()
        app = build_app(self.settings, pool=True)
        try:
            with context.request(client="bench", actor="bench-provisioning"):
                prov.apply(
                    app,
                    plan,
                    lambda what, done, total: self.stage(f"provisioning {what}", done, total),
                    on_enrolled=lambda uid, pin, seed: enrolled.__setitem__(uid, (pin, seed)),
                    letters_dir=self.tmp / "letters",
                )
            with app.store.read() as t:
                for uid in ids:
                    cred = t.get_credential(f"BENCH-{uid}")
                    if cred is None:
                        raise RuntimeError(f"BENCH-{uid} was not provisioned")
                    user = BenchUser(uid, *enrolled[uid], cred.credential_id)
                    self.signers.append(Signer.of(user, cred.cka_id, cred.certificate))
        finally:
            app.close()
        self.timings["provision_s"] = time.perf_counter() - t0

    def start(self, server: ServerProcess) -> ServerProcess:
        """Start ``server``, its stderr kept in the state directory (errors it logs are reported)."""
        server.log = self.tmp / f"server-{len(self.servers)}.log"
        self.say(f"starting {server.name} on {server.address}")
        self.servers.append(server.start())
        return server

    def login(self, address: str, separate: bool = False) -> None:
        """Log every signer in (untimed: logins are not part of the flow)."""
        t0 = time.perf_counter()
        done = [0]

        def one(s: Signer) -> None:
            s.login(address, separate)

        with ThreadPoolExecutor(_LOGIN_THREADS) as ex:
            for _ in ex.map(one, self.signers):
                done[0] += 1
                self.stage("logging in", done[0], len(self.signers))
        self.timings["login_s"] = time.perf_counter() - t0

    def round(
        self,
        label: str,
        prepare: Callable[[Signer], Any],
        clients: int,
        signers: Sequence[Signer],
        totp: bool = True,
        server: ServerProcess | None = None,
    ) -> Recorder:
        """One flow per signer. ``totp``: the flows need a fresh step each, waited for first
        (untimed). ``server``: the CPU time it (and its HSM workers) used during the round is
        recorded."""
        if totp:
            slept = wait_for_fresh_steps([s.user for s in signers])
            if slept:
                self.say(f"waited {slept:.0f} s for every signer's next TOTP step (untimed)")
        before = server.cpu_seconds() if server is not None else (0.0, 0.0)
        rec = run_round(signers, prepare, clients, lambda done: self.stage(label, done, len(signers)))
        if server is not None:
            after = server.cpu_seconds()
            rec.server_cpu_s, rec.workers_cpu_s = after[0] - before[0], after[1] - before[1]
        self.say(f"{label}: {rec.rate():.1f} flows/s, p99 {rec.latency()['p99']} ms, {rec.errors} errors")
        return rec

    def close(self) -> None:
        for s in self.servers:
            s.stop()
        self.servers.clear()
        for signer in self.signers:
            signer.close()
        shutil.rmtree(self.tmp, ignore_errors=True)


def _med(values: Sequence[float], digits: int = 1) -> float:
    return round(statistics.median(values), digits) if values else 0.0


def _latency(recs: Sequence[Recorder]) -> dict[str, float]:
    """Per percentile, the median over the rounds."""
    return {q: _med([r.latency()[q] for r in recs]) for q in ("p50", "p95", "p99")}


def _checks(recs: Sequence[Recorder]) -> dict[str, Any]:
    errors = sum(r.errors for r in recs)
    bad = sum(r.bad_signatures for r in recs)
    return {
        "flows": sum(r.flows for r in recs),
        "errors": errors,
        "bad_signatures": bad,
        "zero_errors": errors == 0 and bad == 0,
        "busy_retries": sum(r.busy_retries for r in recs),
        "error_examples": [e for r in recs for e in r.error_examples][:5],
    }


def _servers(servers: dict[str, ServerProcess]) -> dict[str, Any]:
    """Peak RSS of each server process and of its HSM workers; what each logged as errors."""
    out: dict[str, Any] = {}
    logged: list[str] = []
    for name, srv in servers.items():
        out[f"{name}_peak_rss_mb"] = round(srv.peak_rss_mb(), 1)
        out[f"{name}_workers_peak_rss_mb"] = round(srv.workers_peak_rss_mb(), 1)
        logged += [f"{name}: {line}" for line in srv.logged_errors()]
    out["server_logged_errors"] = len(logged)
    out["server_logged_error_examples"] = logged[:5]
    return out


def _emit(result: dict[str, Any]) -> dict[str, Any]:
    print(json.dumps(result), flush=True)
    return result


def unary(
    signers: int,
    clients: int,
    rounds: int,
    workers: int,
    say: Progress,
    stage: StageProgress,
    processes: int = 1,
) -> dict[str, Any]:
    """rsign's Authorize+SignHash flow against the naive signing server; alternating rounds.
    ``processes``: `rsign serve --processes`; then every signer has a connection of its own to
    each server (the naive one too: the same client for both)."""
    bench = UnaryBench(workers, say, stage)
    separate = processes > 1
    try:
        bench.provision(signers)
        rs = bench.start(rsign_server(bench.tmp, processes=processes))
        nv = bench.start(naive_server(bench.tmp, workers))
        bench.login(rs.address, separate)
        for s in bench.signers:
            s.naive = channel(nv.address, separate)
        rsign_recs: list[Recorder] = []
        naive_recs: list[Recorder] = []
        empty_recs: list[Recorder] = []
        for r in range(1, rounds + 1):
            rsign_recs.append(
                bench.round(
                    f"rsign round {r}/{rounds}", lambda s: rsign_flow(s, rs.address), clients, bench.signers, server=rs
                )
            )
            naive_recs.append(
                bench.round(f"naive round {r}/{rounds}", naive_flow, clients, bench.signers, totp=False, server=nv)
            )
            empty_recs.append(
                bench.round(
                    f"two empty RPCs round {r}/{rounds}",
                    lambda s: empty_flow(s, rs.address),
                    clients,
                    bench.signers,
                    totp=False,
                    server=rs,
                )
            )
        servers = _servers({"rsign": rs, "naive": nv})
        rs.stop()
        servers["rsign_audit_head"] = rs.append_stats() if processes == 1 else rs.append_stats_each()
    finally:
        bench.close()
    rsign_rate = _med([r.rate() for r in rsign_recs])
    naive_rate = _med([r.rate() for r in naive_recs])
    empty_rate = _med([r.rate() for r in empty_recs])
    return _emit(
        {
            "benchmark": "unary",
            "flow": FLOW,
            "naive": "one Sign RPC per flow on the same token and keys, HSM worker processes; no auth, no audit",
            "signers": signers,
            "clients": clients,
            "rounds": rounds,
            "hsm_workers": workers,
            "rsign_processes": processes,
            "separate_connections": separate,
            "rsign_flows_per_s": rsign_rate,
            "naive_flows_per_s": naive_rate,
            "ratio": round(rsign_rate / naive_rate, 3) if naive_rate else 0.0,
            "rsign_latency_ms": _latency(rsign_recs),
            "naive_latency_ms": _latency(naive_recs),
            # CPU per flow (medians over the rounds): what a flow costs each server, whatever else
            # ran on the machine at the time; the server process, then its HSM worker processes.
            "rsign_server_cpu_ms_per_flow": _med([1000 * r.server_cpu_s / max(1, r.flows) for r in rsign_recs], 2),
            "naive_server_cpu_ms_per_flow": _med([1000 * r.server_cpu_s / max(1, r.flows) for r in naive_recs], 2),
            "rsign_workers_cpu_ms_per_flow": _med([1000 * r.workers_cpu_s / max(1, r.flows) for r in rsign_recs], 2),
            "naive_workers_cpu_ms_per_flow": _med([1000 * r.workers_cpu_s / max(1, r.flows) for r in naive_recs], 2),
            "rsign_rounds_flows_per_s": [round(r.rate(), 1) for r in rsign_recs],
            "naive_rounds_flows_per_s": [round(r.rate(), 1) for r in naive_recs],
            # The ceiling: the flow's two RPCs with no work behind them (two Health.Check calls on
            # the same connections to the same rsign process), against the naive server.
            "empty_two_rpcs_flows_per_s": empty_rate,
            "empty_two_rpcs_server_cpu_ms_per_flow": _med(
                [1000 * r.server_cpu_s / max(1, r.flows) for r in empty_recs], 2
            ),
            "ceiling_ratio": round(empty_rate / naive_rate, 3) if naive_rate else 0.0,
            **_checks(rsign_recs + naive_recs + empty_recs),
            **servers,
            "pin_kdf": PIN_KDF,
            **{k: round(v, 1) for k, v in bench.timings.items()},
        }
    )


def _ticker(stage: StageProgress, name: str, total: int) -> Callable[[int], None]:
    return lambda done: stage(name, done, total)


def _phase(rec: Recorder, p99_goal_ms: float) -> dict[str, Any]:
    checks = _checks([rec])
    lat = rec.latency()
    return {
        "latency_ms": lat,
        "goal_met": lat["p99"] <= p99_goal_ms and checks["zero_errors"],
        "max_in_flight": rec.max_in_flight,
        "wall_s": round(rec.wall_s, 1),
        **checks,
    }


def paced(
    signers: int,
    flows_per_signer: int,
    workers: int,
    say: Progress,
    stage: StageProgress,
    p99_goal_ms: float = 500.0,
    spread_s: float = SPREAD_S,
) -> dict[str, Any]:
    """S signers at once, F separate flows each, paced by their TOTP steps (see the module text):
    first in bursts (every signer as a step begins), then spread (each at a random moment)."""
    bench = UnaryBench(workers, say, stage)
    try:
        bench.provision(signers)
        rs = bench.start(rsign_server(bench.tmp))
        bench.login(rs.address)
        total = signers * flows_per_signer
        phases: dict[str, Recorder] = {}
        for name, spread in (("burst", 0.0), ("spread", spread_s)):
            say(f"{name}: {signers} signers x {flows_per_signer} flows, each on a fresh TOTP step")
            phases[name] = run_paced(bench.signers, rs.address, flows_per_signer, spread, _ticker(stage, name, total))
        servers = _servers({"rsign": rs})
    finally:
        bench.close()
    return _emit(
        {
            "benchmark": "unary-paced",
            "flow": FLOW,
            "signers": signers,
            "flows_per_signer": flows_per_signer,
            "client_threads": signers,
            "hsm_workers": workers,
            "goal": f"p99 <= {p99_goal_ms:.0f} ms and zero errors",
            **{name: _phase(rec, p99_goal_ms) for name, rec in phases.items()},
            **servers,
            "method": (
                "each signer runs its flows one after another, all signers at once, each flow with a fresh TOTP "
                "step. A step is accepted once and only within +-1 step of now, so a signer gets 3 codes at once "
                "and then one per 30 s: F flows take about F-2 steps whatever the server does, and wall_s is set by "
                "the clock. burst: every signer starts its next flow as soon as its step is free, so after the "
                "first flows all signers start together as a step begins (up to one flow per signer in flight: "
                "the worst case). spread: each flow starts at a random moment within "
                f"{spread_s:.0f} s after its step is free (signers working at their own pace). Latency is timed "
                "from the first request to the signature, excluding the wait for the step; busy answers "
                "(RESOURCE_EXHAUSTED) are retried and their time counted in the latency"
            ),
            "pin_kdf": PIN_KDF,
            **{k: round(v, 1) for k, v in bench.timings.items()},
        }
    )


def postgres(
    signers: int,
    clients: int,
    rounds: int,
    workers: int,
    say: Progress,
    stage: StageProgress,
    admin_dsn: str = PG_ADMIN,
) -> dict[str, Any]:
    """Two replicas on one PostgreSQL database against one replica on it; alternating rounds."""
    with fresh_database(admin_dsn) as url:
        bench = UnaryBench(workers, say, stage, database_url=url)
        try:
            bench.provision(signers)
            a = bench.start(rsign_server(bench.tmp))
            b = bench.start(rsign_server(bench.tmp))
            bench.login(a.address)
            for s in bench.signers:
                s.share_session(b.address)
            # Clients split across both: signer i on replica i mod 2, so each sees half the load.
            split = {id(s): (a, b)[i % 2].address for i, s in enumerate(bench.signers)}
            one: list[Recorder] = []
            two: list[Recorder] = []
            for r in range(1, rounds + 1):
                one.append(
                    bench.round(
                        f"replica A alone, round {r}/{rounds}",
                        lambda s: rsign_flow(s, a.address),
                        clients,
                        bench.signers,
                    )
                )
                two.append(
                    bench.round(
                        f"replicas A+B, round {r}/{rounds}",
                        lambda s: rsign_flow(s, split[id(s)]),
                        clients,
                        bench.signers,
                    )
                )
            servers = _servers({"replica_a": a, "replica_b": b})
            for name, srv in (("replica_a", a), ("replica_b", b)):
                srv.stop()
                servers[f"{name}_audit_head"] = srv.append_stats()
        finally:
            bench.close()
    one_rate = _med([r.rate() for r in one])
    two_rate = _med([r.rate() for r in two])
    return _emit(
        {
            "benchmark": "unary-postgres",
            "flow": FLOW,
            "database": "PostgreSQL on 127.0.0.1:5432 (fresh database, dropped after)",
            "signers": signers,
            "clients": clients,
            "rounds": rounds,
            "hsm_workers_per_replica": workers,
            "one_replica_flows_per_s": one_rate,
            "two_replicas_flows_per_s": two_rate,
            "ratio_two_to_one": round(two_rate / one_rate, 3) if one_rate else 0.0,
            "one_replica_latency_ms": _latency(one),
            "two_replicas_latency_ms": _latency(two),
            "one_replica_rounds_flows_per_s": [round(r.rate(), 1) for r in one],
            "two_replicas_rounds_flows_per_s": [round(r.rate(), 1) for r in two],
            **_checks(one + two),
            **servers,
            "note": "both replicas run during every round (the idle one in the one-replica rounds serves nothing)",
            "pin_kdf": PIN_KDF,
            **{k: round(v, 1) for k, v in bench.timings.items()},
        }
    )
