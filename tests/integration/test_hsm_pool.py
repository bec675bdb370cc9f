"""The worker pool on a fresh token: secrets sealed by one worker unseal in any other, even when
the workers started together and each created a sealing key (SoftHSMv2 refreshes its object index
lazily across processes)."""

from __future__ import annotations

from pathlib import Path

from rsign.dev.softhsm import ensure_token
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
