"""SignHashStream: order, abort on mismatch, cancellation, worker failure mid-batch, limits, and a
batch of the maximum 10,000 hashes audited one record per signature."""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Mapping
from typing import Any

import grpc
import pytest

from rsign.dev.democlient import verify_signature
from rsign.domain.events import EventFilter
from rsign.domain.principal import LOCAL_OPERATOR
from rsign.hsm.pool import HsmPool
from tests.conftest import Env, Signer, detail, digests


def status(e: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return e.value.code()  # type: ignore[no-any-return,attr-defined]


# Filtered queries, not the whole audit log read into Python: late in a session that is tens of
# thousands of records, and the waits below poll it.


def sign_records(env: Env, credential_id: str) -> list[dict[str, Any]]:
    with env.app.store.read() as t:
        return t.find_events(EventFilter(action="sign.hash", credential_id=credential_id), 0, 1_000_000)


def batch_end(env: Env, credential_id: str) -> Mapping[str, Any]:
    with env.app.store.read() as t:
        (end,) = t.last_events(EventFilter(action="batch.end", credential_id=credential_id), 1)
    return end


def wait_for_batch_end(env: Env, credential_id: str, seconds: float) -> None:
    """Until the server has finished the stream (its batch.end is written), or ``seconds`` pass."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        with env.app.store.read() as t:
            if t.last_events(EventFilter(action="batch.end", credential_id=credential_id), 1):
                return
        time.sleep(0.1)


def test_order_preserved_across_chunks(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    cert = c.get_credential(cid).certificates[0]
    hs = digests(1000)
    sad = c.authorize(cid, hs, signer.code()).sad
    sigs: list[bytes] = []
    offsets = []
    for resp in c.sign_stream(cid, sad, hs, "ECDSA", chunk=137):
        assert resp.offset == len(sigs) and not resp.errors
        offsets.append(resp.offset)
        sigs.extend(resp.signatures)
    assert len(sigs) == 1000 and len(offsets) > 5
    for d, s in zip(hs, sigs, strict=True):
        verify_signature(cert, d, s, "ECDSA")


def test_10000_hash_batch(env: Env, signer: Signer) -> None:
    # EC P-256: what is under test is the service at the largest batch (order, one audit record
    # per signature, the chain); 10,000 RSA signatures made this the slowest test by far, for HSM
    # arithmetic. Streamed RSA signatures are verified in the cancellation test below.
    cid = signer.add_key("ec-p256")
    c = signer.client()
    cert = c.get_credential(cid).certificates[0]
    hs = digests(10_000)
    sad = c.authorize(cid, hs, signer.code()).sad
    sigs = [s for r in c.sign_stream(cid, sad, hs, "ECDSA", chunk=500) for s in r.signatures]
    assert len(sigs) == 10_000
    for d, s in zip(hs, sigs, strict=True):
        verify_signature(cert, d, s, "ECDSA")
    recs = sign_records(env, cid)
    assert len(recs) == 10_000 and all(r["result"] == "success" for r in recs)
    assert [r["digest"] for r in recs] == [d.hex() for d in hs]
    assert batch_end(env, cid)["result"] == "success"
    assert env.app.audit.verify_log(LOCAL_OPERATOR).ok


def test_mismatch_mid_stream_aborts(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(600)
    sad = c.authorize(cid, hs, signer.code()).sad
    sent = list(hs)
    sent[250] = digests(1)[0]
    got: list[bytes] = []
    with pytest.raises(grpc.RpcError) as e:
        for r in c.sign_stream(cid, sad, sent, "ECDSA", chunk=100):
            got.extend(r.signatures)
    assert status(e) == grpc.StatusCode.PERMISSION_DENIED and "#251" in detail(e)
    recs = sign_records(env, cid)
    # Chunks 0 and 1 (200 items) were consumed and signed; nothing from the bad chunk on.
    assert len(recs) == 200 and len(got) <= 200
    assert batch_end(env, cid)["result"] == "failure"
    # The SAD is spent: the remainder needs a new authorization.
    with pytest.raises(grpc.RpcError) as e:
        list(c.sign_stream(cid, sad, hs[200:], "ECDSA"))
    assert status(e) == grpc.StatusCode.PERMISSION_DENIED


def test_cancel_mid_stream_keeps_signed_items_consumed(env: Env, signer: Signer) -> None:
    cid = signer.add_key("rsa-2048")
    c = signer.client()
    cert = c.get_credential(cid).certificates[0]
    hs = digests(3000)
    sad = c.authorize(cid, hs, signer.code()).sad
    call = c.sign_stream(cid, sad, hs, "RSA_PKCS1_V15", chunk=200)
    received = 0
    for r in call:
        received += len(r.signatures)
        if received >= 400:
            call.cancel()  # type: ignore[attr-defined]
            break
    wait_for_batch_end(env, cid, 20)
    end = batch_end(env, cid)
    assert end["result"] == "failure"
    recs = sign_records(env, cid)
    signed = [r for r in recs if r["result"] == "success"]
    assert len(signed) >= 400 and len(recs) < 3000
    assert json.loads(str(end["details"]))["ended_by"] == "client cancel"
    # Every consumed item has exactly one record; what was signed and sent can never be signed
    # again under any SAD.
    done = {bytes.fromhex(str(r["digest"])) for r in signed}
    again = [h for h in hs if h in done][:5]
    with pytest.raises(grpc.RpcError) as e:
        c.authorize(cid, again, signer.code())
    assert status(e) == grpc.StatusCode.PERMISSION_DENIED and "already signed" in detail(e)
    # The rest, including what the HSM signed after the cancel but was never sent (discarded,
    # released), can be authorized and signed.
    rest = [h for h in hs if h not in done]
    sad2 = c.authorize(cid, rest, signer.code()).sad
    sigs = [s for r in c.sign_stream(cid, sad2, rest, "RSA_PKCS1_V15") for s in r.signatures]
    assert len(sigs) == len(rest)
    for d, s in zip(rest, sigs, strict=True):
        verify_signature(cert, d, s, "RSA_PKCS1_V15")
    assert len(sign_records(env, cid)) == len(recs) + len(rest)
    assert env.app.audit.verify_log(LOCAL_OPERATOR).ok


def test_worker_killed_mid_batch(env: Env, signer: Signer) -> None:
    pool = env.hsm.inner
    assert isinstance(pool, HsmPool)
    cid = signer.add_key("rsa-3072")
    c = signer.client()
    hs = digests(1500)
    sad = c.authorize(cid, hs, signer.code()).sad
    results: dict[int, bytes] = {}
    errors: dict[int, str] = {}
    killed = threading.Event()

    for r in c.sign_stream(cid, sad, hs, "RSA_PKCS1_V15", chunk=100, timeout=120):
        for i, s in enumerate(r.signatures):
            if s:
                results[r.offset + i] = s
        for err in r.errors:
            errors[err.index] = err.reason
        if not killed.is_set() and len(results) >= 200:
            os.kill(pool.worker_pids()[0], signal.SIGKILL)
            killed.set()
    assert killed.is_set()
    assert errors, "the killed worker's items are reported failed"
    assert all("worker" in reason for reason in errors.values())
    assert set(results) | set(errors) == set(range(1500)) and not set(results) & set(errors)
    recs = sign_records(env, cid)
    assert len(recs) == 1500  # one record per item: signed once or failed once
    assert sum(r["result"] == "success" for r in recs) == len(results)
    # The pool recovered: the failed items can be authorized again and signed.
    failed = [hs[i] for i in sorted(errors)]
    sad2 = c.authorize(cid, failed, signer.code()).sad
    assert sum(len(r.signatures) for r in c.sign_stream(cid, sad2, failed, "RSA_PKCS1_V15")) == len(failed)


def test_authorize_above_maximum_consumes_nothing(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(env.settings.multisign_max + 1)
    with pytest.raises(grpc.RpcError) as e:
        c.authorize(cid, hs, signer.code())
    assert status(e) == grpc.StatusCode.INVALID_ARGUMENT
    # Nothing consumed: the same hashes (within the limit) still authorize and sign.
    part = hs[:10]
    sad = c.authorize(cid, part, signer.code()).sad
    assert sum(len(r.signatures) for r in c.sign_stream(cid, sad, part, "ECDSA")) == 10


def test_deadline_is_honoured_and_audited(env: Env, signer: Signer) -> None:
    cid = signer.add_key("rsa-3072")
    c = signer.client()
    hs = digests(3000)
    sad = c.authorize(cid, hs, signer.code()).sad
    with pytest.raises(grpc.RpcError) as e:
        for _ in c.sign_stream(cid, sad, hs, "RSA_PKCS1_V15", chunk=100, timeout=1.0):
            pass
    assert status(e) == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_for_batch_end(env, cid, 30)
    assert batch_end(env, cid)["result"] == "failure"
    assert len(sign_records(env, cid)) < 3000
