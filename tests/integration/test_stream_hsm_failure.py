"""A stream that the HSM itself stops (the pool refuses new work: every worker gone, or the pool
shutting down) ends as "HSM failure", with honest counts, and what it never signed stays signable."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import grpc
import pytest

from rsign.domain.algorithms import SignSpec
from rsign.domain.errors import HsmUnavailable
from rsign.domain.principal import LOCAL_OPERATOR
from rsign.hsm.ports import SignResult
from tests.conftest import CountingHsm, Env, digests, make_signer, running_env
from tests.integration.test_stranded import Stream, batch_end, details, ledger_rows, records, sign_all


class RefusingHsm(CountingHsm):
    """The real pool, which a test can make refuse new signing work the way a pool with no worker
    left does (``HsmUnavailable`` when the job is handed in)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.refusing = threading.Event()

    def sign_async(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> Future[list[SignResult]]:
        if self.refusing.is_set():
            raise HsmUnavailable("the HSM pool is shut down")
        return super().sign_async(cka_id, spec, digests)


@pytest.fixture(scope="module")
def refusing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Env]:
    with running_env(tmp_path_factory.mktemp("rsign-hsm-refusing"), wrap=RefusingHsm) as e:
        yield e


def test_hsm_failure_ends_the_stream_honestly(refusing: Env) -> None:
    env = refusing
    assert isinstance(env.hsm, RefusingHsm)
    signer = make_signer(env)
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(300)
    sad = c.authorize(cid, hs, signer.code()).sad
    s = Stream(c, cid, sad, timeout=60)
    s.send(hs[:100])
    assert len(s.answer().signatures) == 100
    env.hsm.refusing.set()
    try:
        s.send(hs[100:200])
        with pytest.raises(grpc.RpcError) as e:
            s.answer()
        assert e.value.code() == grpc.StatusCode.UNAVAILABLE
    finally:
        s.close()
        env.hsm.refusing.clear()
    end = batch_end(env, cid)
    d = details(end)
    assert end["result"] == "failure" and d["ended_by"] == "HSM failure", end["reason"]
    # The chunk the HSM refused was consumed: it failed (each item recorded, released); the rest
    # of the list was never received.
    assert (d["signed"], d["failed"], d["not_reached"]) == (100, 100, 100)
    refused = [r for r in records(env, "sign.hash", cid) if r["result"] == "failure"]
    assert [r["digest"] for r in refused] == [h.hex() for h in hs[100:200]]
    assert ledger_rows(env) == (0, 0)
    # Nothing of it was signed, so all of it signs after a new Authorize.
    assert sign_all(c, signer, cid, hs[100:]) == 200
    assert env.app.audit.verify_log(LOCAL_OPERATOR).ok
