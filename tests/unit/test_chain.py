"""Hash-chain verification on records built in memory."""

from __future__ import annotations

from typing import Any

from rsign.audit import chain


def build(n: int) -> list[dict[str, Any]]:
    rows, prev = [], chain.GENESIS
    for seq in range(1, n + 1):
        r: dict[str, Any] = {
            "seq": seq,
            "ts": f"2026-11-26T00:00:{seq:02d}.000000Z",
            "actor": "lo.van.tuan",
            "action": "sign.hash",
            "result": "success",
            "agency": "Sở Nội vụ, tỉnh Sơn La",
            "credential_id": "C1",
            "key_version": 1,
            "digest": f"{seq:064x}",
            "reason": "",
            "request_id": "r",
            "client": "ipv4:127.0.0.1:1",
            "details": "{}",
            "prev_hash": prev,
        }
        r["hash"] = prev = chain.record_hash(r)
        rows.append(r)
    return rows


def test_intact_chain_verifies() -> None:
    rows = build(10)
    rep = chain.verify(rows, expect_head=(10, rows[-1]["hash"]))
    assert rep.ok and rep.records == 10


def test_modified_field_is_named() -> None:
    rows = build(10)
    rows[4]["actor"] = "someone.else"
    rep = chain.verify(rows)
    assert not rep.ok and rep.bad_seq == 5 and "modified" in rep.problem


def test_deleted_middle_record_is_a_gap() -> None:
    rows = build(10)
    del rows[3]
    rep = chain.verify(rows)
    assert not rep.ok and rep.bad_seq == 4 and "missing" in rep.problem


def test_truncated_tail_against_recorded_head() -> None:
    rows = build(10)
    rep = chain.verify(rows[:7], expect_head=(10, rows[-1]["hash"]))
    assert not rep.ok and "truncated" in rep.problem


def test_fast_canonical_matches_the_json_definition() -> None:
    rows = build(3)
    rows[1]["actor"] = 'Lò Văn Tuấn "quoted" \\ back\nslash \u0001 ctl'
    rows[2]["details"] = '{"a":"Sơn La, tỉnh","n":1}'
    rows[2]["key_version"] = 12345678901
    for r in rows:
        assert chain.canonical(r) == chain.canonical_reference(r)
