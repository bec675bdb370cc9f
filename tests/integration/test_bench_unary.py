"""``rsign bench --unary`` end to end at a tiny size: provisioning, logins, rsign serve and the naive
server in their own processes, one round each. Checks what the report must hold, never timings."""

from __future__ import annotations

import json
from typing import Any

import pytest
from click.testing import CliRunner

from rsign.cli.main import main
from rsign.dev import bench_unary
from rsign.dev.bench_common import percentile


def test_unary_bench_small_run_signs_everything_and_reports(capsys: pytest.CaptureFixture[str]) -> None:
    stages: dict[str, tuple[int, int]] = {}
    res = bench_unary.unary(
        signers=8,
        clients=2,
        rounds=1,
        workers=1,
        say=lambda msg: None,
        stage=lambda name, done, total: stages.__setitem__(name, (done, total)),
    )
    printed: dict[str, Any] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert printed == res
    # Every flow on both servers (and the empty two-RPC flows) succeeded and every signature
    # verifies against its certificate.
    assert res["flows"] == 24 and res["errors"] == 0 and res["bad_signatures"] == 0 and res["zero_errors"]
    assert res["error_examples"] == []
    assert res["rsign_flows_per_s"] > 0 and res["naive_flows_per_s"] > 0 and res["ratio"] > 0
    # The ceiling: two RPCs with no work behind them on the same rsign process.
    assert res["empty_two_rpcs_flows_per_s"] > 0 and res["ceiling_ratio"] > 0
    assert res["empty_two_rpcs_server_cpu_ms_per_flow"] >= 0
    # CPU per flow, read from /proc (10 ms ticks: the naive server's few milliseconds may read 0 here).
    assert res["rsign_server_cpu_ms_per_flow"] > 0
    assert res["naive_server_cpu_ms_per_flow"] >= 0 and res["rsign_workers_cpu_ms_per_flow"] >= 0
    for side in ("rsign", "naive"):
        lat = res[f"{side}_latency_ms"]
        assert 0 < lat["p50"] <= lat["p95"] <= lat["p99"]
        assert res[f"{side}_peak_rss_mb"] > 0
    assert "Argon2id" in res["pin_kdf"]
    # Progress reached the end of every stage.
    for name in ("provisioning users", "provisioning credentials", "logging in", "rsign round 1/1", "naive round 1/1",
                 "two empty RPCs round 1/1"):
        assert stages[name] == (8, 8), name


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--signers", "5"], "--signers only apply to --unary"),
        (["--unary", "--scale"], "--scale, --algorithm and --memory do not apply"),
        (["--postgres", "--concurrent-signers", "5"], "choose one of --postgres and --concurrent-signers"),
        (["--unary", "--flows-per-signer", "3"], "--flows-per-signer applies with --concurrent-signers"),
        (["--unary", "--clients", "0"], "0 is not in the range"),
    ],
)
def test_bench_refuses_options_that_do_not_fit(args: list[str], message: str) -> None:
    out = CliRunner().invoke(main, ["bench", *args])
    assert out.exit_code == 2 and message in out.output, out.output


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50 and percentile(values, 99) == 99 and percentile(values, 100) == 100
    assert percentile([3.0, 1.0, 2.0], 50) == 2 and percentile([7.0], 99) == 7 and percentile([], 50) == 0
