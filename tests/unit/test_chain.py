"""Hash-chain verification on records built in memory."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

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


def links(rows: list[dict[str, Any]]) -> list[tuple[int, str, str]]:
    return [(r["seq"], r["prev_hash"], r["hash"]) for r in rows]


def test_links_only_walk_checks_sequence_and_links_not_contents() -> None:
    rows = build(10)
    assert chain.verify_links(links(rows), expect_head=(10, rows[-1]["hash"])).ok
    # A content edit is invisible to it (the MACs and the full walk catch what matters)...
    edited = [dict(r) for r in rows]
    edited[3]["actor"] = "mallory"
    assert chain.verify_links(links(edited)).ok
    assert not chain.verify(edited).ok
    # ...a gap, a repeat, a reordering or a broken link is not, and each is named as verify names it.
    for bad in (rows[:4] + rows[5:], [*rows[:3], rows[2], *rows[3:]], [rows[0], rows[2], rows[1], *rows[3:]]):
        want, got = chain.verify(bad), chain.verify_links(links(bad))
        assert not got.ok and (got.bad_seq, got.problem, got.records, got.head_seq) == (
            want.bad_seq, want.problem, want.records, want.head_seq)  # fmt: skip
    broken = links(rows)
    broken[6] = (7, "ab" * 32, broken[6][2])
    rep = chain.verify_links(broken)
    assert not rep.ok and rep.bad_seq == 7 and "does not link" in rep.problem and rep.records == 6
    rep = chain.verify_links(links(rows[:8]), expect_head=(10, rows[-1]["hash"]))
    assert not rep.ok and "truncated" in rep.problem
    # From a checkpoint, not from the start.
    rep = chain.verify_links(links(rows[5:]), start=(5, rows[4]["hash"]), expect_head=(10, rows[-1]["hash"]))
    assert rep.ok and rep.records == 5 and rep.head_seq == 10


_text = st.text(st.characters(codec="utf-8"), max_size=40) | st.sampled_from(
    ['"', "\\", "\x00\n\t", "Sơn La", "\u2028"]
)


@settings(max_examples=300, deadline=None)
@given(
    shared=st.fixed_dictionaries(
        {k: _text for k in ("action", "actor", "agency", "client", "credential_id", "request_id")}
        | {"key_version": st.integers(0, 2**31)}
    ),
    details=st.dictionaries(st.text(max_size=12).filter(lambda k: k != "position"), _text | st.integers(), max_size=4),
    items=st.lists(
        st.tuples(st.text("0123456789abcdef", max_size=128), st.integers(0, 10**9), _text, _text), max_size=5
    ),
    ts=_text,
    first=st.integers(1, 2**40),
)
def test_item_records_hash_as_the_generic_path(
    shared: dict[str, Any], details: dict[str, Any], items: list[tuple[str, int, str, str]], ts: str, first: int
) -> None:
    try:
        tpl = chain.ItemRecords(shared, details)
    except ValueError:
        # The details' own text holds the mark: the journal then writes them one by one.
        assert str(-7213509381114027) in chain.details_json(details)
        return
    prev = "ab" * 32
    got = tpl.hashes(prev, first, ts, items)
    for i, (digest, position, result, reason) in enumerate(items):
        fields = {**shared, "seq": first + i, "ts": ts, "digest": digest, "reason": reason, "result": result,
                  "details": chain.details_json({**details, "position": position}), "prev_hash": prev}  # fmt: skip
        assert tpl.details_text(position) == fields["details"]
        assert chain.canonical(fields) == chain.canonical_reference(fields)
        prev = chain.record_hash(fields)
        assert got[i] == prev


def test_item_records_refuse_a_position_in_the_template() -> None:
    with pytest.raises(ValueError, match="position"):
        chain.ItemRecords({}, {"position": 1})


def test_item_events_are_never_empty() -> None:
    """An empty one would make a group commit that appends nothing look like an append: the
    journal would then take the head it read for its own and skip that head's MAC check next."""
    from rsign.domain.events import Action, AuditEvent, ItemEvents, Result

    with pytest.raises(ValueError, match="at least one item"):
        ItemEvents(AuditEvent(Action.SIGN), [])
    with pytest.raises(ValueError, match="no digest"):
        ItemEvents(AuditEvent(Action.SIGN, digest="ab"), [("cd", 0, Result.SUCCESS, "")])
    assert len(ItemEvents(AuditEvent(Action.SIGN), [("cd", 0, Result.SUCCESS, "")])) == 1


def test_item_rows_are_the_rows_of_their_expanded_events() -> None:
    """The journal's two row builders (rsign.audit.rows): a chunk's template path and the generic
    one give the same rows, column for column, hash for hash, failures and odd text included."""
    from rsign.audit.rows import event_row, item_rows
    from rsign.domain.events import Action, AuditEvent, ItemEvents, Result

    tpl = AuditEvent(Action.SIGN, actor='Lò "Văn" \\ Tuấn', agency="Sở Nội vụ\n", credential_id="C-1",
                     key_version=3, details={"sad_id": 7, "scheme": "ecdsa", "hash_algorithm": "sha256"},
                     request_id="r-1", client="ipv4:127.0.0.1:1")  # fmt: skip
    items = [("ab" * 32, 0, Result.SUCCESS, ""), ("cd" * 32, 1, Result.FAILURE, "CKR_DEVICE_ERROR \u2028"),
             ("ef" * 32, 2, Result.SUCCESS, "")]  # fmt: skip
    ev = ItemEvents(tpl, items)
    fast: list[tuple[Any, ...]] = []
    generic: list[tuple[Any, ...]] = []
    head_fast = item_rows(fast, ev, 41, "12" * 32, "2026-11-27T00:00:00.000000Z")
    seq, prev = 41, "12" * 32
    for one in ev.expand():
        seq, prev = event_row(generic, one, seq, prev, "2026-11-27T00:00:00.000000Z")
    assert fast == generic and head_fast == (seq, prev) == (44, generic[-1][-2])
