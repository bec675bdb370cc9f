"""Start is deterministic: processes opening one file-backed SoftHSMv2 token at once, while others
create objects and some are killed mid-way, all open it (issue: "cannot open the HSM token" /
"cannot log in (GeneralError)" about once in twenty restarts).

Without the token file lock this setting fails in most runs of 6 rounds (NoSuchToken and
GeneralError from C_GetTokenInfo / C_Login reading a token file another process is rewriting).
"""

from __future__ import annotations

import multiprocessing
import os
import random
import secrets
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest

from rsign.dev.softhsm import find_softhsm_module
from rsign.domain.algorithms import KeyAlgorithm
from rsign.domain.errors import HsmUnavailable
from rsign.domain.settings import HsmConfig
from rsign.hsm.pkcs11_adapter import Pkcs11Token

PIN = "user-pin-1234"


def _token(tmp: Path) -> HsmConfig:
    (tmp / "tokens").mkdir()
    conf = tmp / "softhsm2.conf"
    conf.write_text(
        f"directories.tokendir = {tmp / 'tokens'}\nobjectstore.backend = file\nlog.level = ERROR\n"
        "slots.removable = false\n",
        encoding="utf-8",
    )
    subprocess.run(
        ["softhsm2-util", "--init-token", "--free", "--label", "race", "--so-pin", "so-pin-1234", "--pin", PIN],
        check=True,
        env={**os.environ, "SOFTHSM2_CONF": str(conf)},
        stdout=subprocess.DEVNULL,
    )
    return HsmConfig(module=find_softhsm_module(), token_label="race", pin=PIN, softhsm_conf=str(conf))


def _open_and_work(config: HsmConfig, results: Any, i: int) -> None:
    """What an HSM worker does at start (open, log in, sealing key, warm), plus key creation."""
    try:
        tok = Pkcs11Token(config)
        tok.ensure_seal_key()
        tok.warm()
        if i % 3 == 0:
            tok.generate_keypair(KeyAlgorithm.EC_P256, secrets.token_bytes(8), f"race-{i}")
        tok.close()
        results.put(("ok", i, ""))
    except Exception as exc:  # reported to the test, which names it
        results.put(("fail", i, f"{type(exc).__name__}: {exc}"))


def test_concurrent_opens_with_writers_and_kills_all_succeed(tmp_path: Path) -> None:
    config = _token(tmp_path)
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    rng = random.Random(20261127)
    failures: list[str] = []
    started = killed = 0
    for r in range(6):
        procs = [ctx.Process(target=_open_and_work, args=(config, results, r * 4 + j)) for j in range(4)]
        for p in procs:
            p.start()
        started += len(procs)
        if r % 3 == 1:  # kill one mid-way (mid-login or mid-write, as an operator's kill -9 would)
            victim = rng.choice(procs)
            multiprocessing.connection.wait([victim.sentinel], timeout=rng.uniform(0.05, 0.4))
            if victim.pid is not None and victim.is_alive():
                os.kill(victim.pid, signal.SIGKILL)
                killed += 1
        for p in procs:
            p.join(60)
            assert p.exitcode is not None, "a process hung opening the token"
        while not results.empty():
            status, i, why = results.get()
            if status == "fail":
                failures.append(f"process {i}: {why}")
    assert not failures, f"{len(failures)} of {started} opens failed ({killed} killed): {failures}"


def test_a_wrong_pin_fails_at_once_and_names_the_pkcs11_error(tmp_path: Path) -> None:
    config = _token(tmp_path)
    bad = HsmConfig(
        module=config.module, token_label=config.token_label, pin="wrong-pin", softhsm_conf=config.softhsm_conf
    )
    with pytest.raises(HsmUnavailable) as info:
        Pkcs11Token(bad)
    # Not retried (a retry would count towards the token's own PIN lockout), and the message says why.
    assert "PinIncorrect" in info.value.message


def test_a_missing_token_names_the_underlying_error_after_bounded_retries(tmp_path: Path) -> None:
    config = _token(tmp_path)
    gone = HsmConfig(module=config.module, token_label="no-such-label", pin=PIN, softhsm_conf=config.softhsm_conf)
    with pytest.raises(HsmUnavailable) as info:
        Pkcs11Token(gone)
    assert "attempts" in info.value.message and "NoSuchToken" in info.value.message
