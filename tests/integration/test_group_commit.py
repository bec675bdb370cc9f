"""Group commit (rsign/audit/journal.py): concurrent transactions share one database commit and
one HSM MAC, and keep every guarantee of a transaction of their own."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from rsign.domain import context
from rsign.domain.errors import PermissionDenied, RsignError
from rsign.domain.events import Action, Result, event
from rsign.domain.principal import LOCAL_OPERATOR
from tests.conftest import Env, digests, make_signer


def _records(env: Env, tag: str) -> list[dict[str, object]]:
    with env.app.store.read() as t:
        return [r for r in t.audit_rows() if r["reason"].startswith(tag)]


def _run_together(n_threads: int, per_thread: int, body: Callable[[int, int], None]) -> list[BaseException]:
    start = threading.Barrier(n_threads)
    errors: list[BaseException] = []

    def worker(i: int) -> None:
        start.wait()
        for k in range(per_thread):
            try:
                body(i, k)
            except BaseException as exc:
                errors.append(exc)

    with ThreadPoolExecutor(n_threads) as pool:
        list(pool.map(worker, range(n_threads)))
    return errors


def test_concurrent_transactions_share_commits_and_the_chain_stays_whole(env: Env) -> None:
    tag = "group-commit-share"

    def body(i: int, k: int) -> None:
        with context.request("test", actor=f"thread-{i}"), env.app.journal.tx() as t:
            t.append(event(Action.ADMIN_SEARCH, reason=f"{tag} {i}/{k}"))
            t.append(event(Action.ADMIN_SEARCH, reason=f"{tag} {i}/{k} second"))

    assert _run_together(16, 15, body) == []
    rows = _records(env, tag)
    assert len(rows) == 16 * 15 * 2
    # A caller's two records stay adjacent and in order: a group appends member by member.
    by_seq = sorted(rows, key=lambda r: int(str(r["seq"])))
    for a, b in zip(by_seq[::2], by_seq[1::2], strict=True):
        assert int(str(b["seq"])) == int(str(a["seq"])) + 1 and b["reason"] == f"{a['reason']} second"
    # One MAC per group: the last record of each append carries it. 240 transactions from 16
    # threads at once must have shared commits.
    macs = sum(1 for r in rows if r["mac"])
    assert macs < 0.9 * 16 * 15, f"{macs} MACs for {16 * 15} transactions: no grouping happened"
    assert env.app.audit.verify_log(LOCAL_OPERATOR).ok


def test_a_member_that_fails_is_undone_alone(env: Env) -> None:
    tag = "group-commit-failing-member"

    def body(i: int, k: int) -> None:
        with env.app.journal.tx() as t:
            t.append(event(Action.ADMIN_SEARCH, Result.SUCCESS, reason=f"{tag} {i}/{k}"))
            if (i + k) % 3 == 0:
                raise PermissionDenied("refused on purpose")

    errors = _run_together(12, 10, body)
    assert len(errors) == sum(1 for i in range(12) for k in range(10) if (i + k) % 3 == 0)
    assert all(isinstance(e, PermissionDenied) for e in errors)
    kept = {str(r["reason"]) for r in _records(env, tag)}
    assert kept == {f"{tag} {i}/{k}" for i in range(12) for k in range(10) if (i + k) % 3 != 0}
    assert env.app.audit.verify_log(LOCAL_OPERATOR).ok


def test_one_sad_signs_exactly_once_when_racing_callers_share_a_group(env: Env) -> None:
    signer = make_signer(env, "groupsad")
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hashes = digests(1, tag="group-sad")
    sad = c.authorize(cid, hashes, signer.code()).sad
    won: list[bytes] = []
    lost: list[BaseException] = []
    principal = env.app.auth.authenticate(c.token)

    def body(i: int, k: int) -> None:
        from rsign.domain.algorithms import HashAlg, Scheme

        try:
            won.extend(env.app.signing.sign_hash(principal, cid, sad, HashAlg.SHA256, Scheme.ECDSA, hashes).signatures)
        except RsignError as exc:
            lost.append(exc)

    _run_together(24, 1, body)
    assert len(won) == 1 and len(lost) == 23
    assert all(isinstance(e, PermissionDenied) for e in lost)
    with env.app.store.read() as t:
        signed = [r for r in t.audit_rows() if r["action"] == "sign.hash" and r["credential_id"] == cid]
    assert [r["result"] for r in signed] == ["success"]


def test_a_lone_caller_commits_in_a_group_of_its_own(env: Env) -> None:
    # Sequential callers never wait for company: each transaction is its own group (its own MAC).
    for k in range(10):
        with env.app.journal.tx() as t:
            t.append(event(Action.ADMIN_SEARCH, reason=f"group-commit-lone {k}"))
            t.append(event(Action.ADMIN_SEARCH, reason=f"group-commit-lone {k} second"))
    rows = _records(env, "group-commit-lone")
    assert len(rows) == 20
    assert [bool(r["mac"]) for r in sorted(rows, key=lambda r: int(str(r["seq"])))] == [False, True] * 10
