"""Start/stop/kill/start ``rsign serve`` many times on one state directory; count start failures.

    .venv/bin/python -m tests.soak.restart_soak --starts 100

Each round starts the server and ends it one of three ways, chosen by a seeded generator: SIGTERM
once it serves, SIGKILL once it serves, or SIGKILL at a random moment during start-up (mid token
login, mid key creation, mid database initialisation). A start failure is any server that exits on
its own before serving. Prints one JSON line; exits 1 if any start failed. (In the suite,
``tests/integration/test_crash_recovery.py`` restarts a server 20 times after SIGKILLs, and
``test_token_open_race.py`` races the token opens directly.)
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def run(starts: int, state_dir: Path, seed: int = 7) -> dict[str, object]:
    rsign = str(Path(sys.executable).parent / "rsign")
    rng = random.Random(seed)
    failures: list[str] = []
    ways = {"term": 0, "kill": 0, "kill-during-start": 0}
    t0 = time.monotonic()
    for i in range(starts):
        port = _free_port()
        proc = subprocess.Popen(
            [rsign, "serve", "--state-dir", str(state_dir), "--listen", f"127.0.0.1:{port}"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        way = rng.choice(list(ways))
        ways[way] += 1
        if way == "kill-during-start":
            time.sleep(rng.uniform(0.05, 1.5))
            if proc.poll() is None:
                proc.kill()
            _, err = proc.communicate(timeout=60)
            if proc.returncode not in (0, -signal.SIGKILL):
                failures.append(f"start {i + 1}: exit {proc.returncode}: {err.strip()[-400:]}")
            continue
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if "serving" not in line:
            out, err = proc.communicate(timeout=60)
            failures.append(f"start {i + 1}: exit {proc.returncode}: {(line + out + err).strip()[-400:]}")
            continue
        time.sleep(rng.uniform(0.0, 0.3))
        proc.send_signal(signal.SIGTERM if way == "term" else signal.SIGKILL)
        proc.communicate(timeout=60)
    return {
        "starts": starts,
        "start_failures": len(failures),
        "ended_by": ways,
        "seconds": round(time.monotonic() - t0, 1),
        "failures": failures,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--starts", type=int, default=100)
    ap.add_argument("--state-dir", type=Path, default=None)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args()
    state = args.state_dir or Path(tempfile.mkdtemp(prefix="rsign-restart-soak-"))
    report = run(args.starts, state, args.seed)
    print(json.dumps(report, ensure_ascii=False))
    sys.exit(1 if report["start_failures"] else 0)


if __name__ == "__main__":
    main()
