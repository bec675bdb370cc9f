"""The audit log's integrity scheme (pure functions, shared by the service and the offline verifier).

For record ``seq``:

    content_hash = SHA-256(canonical JSON of the record's fields, prev_hash excluded)
    hash         = SHA-256("rsign-audit-link/v1\\n" || prev_hash || "\\n" || content_hash)

so each record commits to every record before it. Splitting content from link lets an export
leave out a record's content (another agency's, for a scoped auditor) while still proving the
chain: it carries that record's ``content_hash`` only.

Three layers, each closing a gap the previous one leaves:

1. the hash chain and gap-free sequence numbers catch edits, insertions, deletions and reordering
   by anyone who does not recompute the chain;
2. a MAC under an HSM-held key on the last record of every append transaction (covering, through
   the chain, every record before it) catches a database administrator who edits a record and
   recomputes every hash after it;
3. checkpoints signed by an HSM-held audit key over (sequence, head hash, UTC time) catch a
   truncated tail, and let anyone verify an export offline with the audit certificate alone.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

GENESIS = "0" * 64

CONTENT_FIELDS = (
    "seq",
    "ts",
    "actor",
    "agency",
    "action",
    "result",
    "credential_id",
    "key_version",
    "digest",
    "reason",
    "request_id",
    "client",
    "details",
)
_SORTED = sorted(CONTENT_FIELDS)
_INT_FIELDS = frozenset({"seq", "key_version"})
_enc = encode_basestring  # the C string encoder json.dumps(ensure_ascii=False) uses


def canonical_reference(fields: Mapping[str, Any]) -> bytes:
    """The definition: compact JSON, keys sorted, UTF-8. An offline verifier may use exactly this."""
    return json.dumps(
        {k: fields[k] for k in CONTENT_FIELDS}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


def canonical(fields: Mapping[str, Any]) -> bytes:
    """Byte-for-byte ``canonical_reference``, about twice as fast (the batch path hashes one record
    per signature); tests/unit/test_chain.py checks that the two agree."""
    parts = []
    for k in _SORTED:
        v = fields[k]
        parts.append(f'"{k}":{int(v)!r}' if k in _INT_FIELDS else f'"{k}":{_enc(v)}')
    return ("{" + ",".join(parts) + "}").encode("utf-8")


def details_json(details: Mapping[str, Any]) -> str:
    """A record's ``details`` column: compact JSON, keys sorted, UTF-8 kept."""
    return json.dumps(details, sort_keys=True, ensure_ascii=False, separators=(",", ":"))


# Stands for the position while a template's details are encoded (``ItemRecords``).
_POSITION_MARK = -7213509381114027


class ItemRecords:
    """Records that differ only in ``seq``, ``digest``, ``reason``, ``result`` and the integer
    ``details["position"]`` (a batch chunk's signatures), hashed from one template: byte for
    byte ``canonical`` of each record (tests/unit/test_chain.py checks it on hostile values), in
    a fraction of its time, because everything but those five is encoded once.

    ``fields``: the shared content fields (``seq``, ``ts``, ``digest``, ``reason``, ``result`` and
    ``details`` are ignored); ``details``: the shared details, without ``position``."""

    def __init__(self, fields: Mapping[str, Any], details: Mapping[str, Any]) -> None:
        if "position" in details:
            raise ValueError("the template's details carry no position")
        text = details_json({**details, "position": _POSITION_MARK})
        head, mark, tail = text.partition(str(_POSITION_MARK))
        if not mark or str(_POSITION_MARK) in tail:
            raise ValueError("the template's details cannot be split at the position")
        self.details_head, self.details_tail = head, tail
        # Sorted keys: action actor agency client credential_id details digest key_version reason
        # request_id result seq ts. A JSON string's escaping is per character, so the encoding of
        # head + position + tail is enc(head) without its closing quote, the digits, and enc(tail)
        # without its opening one.
        self._before_position = (
            f'{{"action":{_enc(fields["action"])},"actor":{_enc(fields["actor"])},'
            f'"agency":{_enc(fields["agency"])},"client":{_enc(fields["client"])},'
            f'"credential_id":{_enc(fields["credential_id"])},"details":{_enc(head)[:-1]}'
        )
        self._before_digest = f'{_enc(tail)[1:]},"digest":'
        self._before_reason = f',"key_version":{int(fields["key_version"])!r},"reason":'
        self._before_result = f',"request_id":{_enc(fields["request_id"])},"result":'

    def details_text(self, position: int) -> str:
        return f"{self.details_head}{int(position)!r}{self.details_tail}"

    def hashes(
        self, prev_hash: str, first_seq: int, ts: str, items: Iterable[tuple[str, int, str, str]]
    ) -> list[str]:
        """Each record's hash, chained from ``prev_hash``; items are (digest, position, result,
        reason), numbered from ``first_seq``."""
        after_seq = f',"ts":{_enc(ts)}}}'
        a, b = self._before_position, self._before_digest
        # "...reason...result,"seq":" for each (reason, result) met: a chunk has one or two.
        middles: dict[tuple[str, str], str] = {}
        sha256 = hashlib.sha256
        out: list[str] = []
        seq = first_seq
        for digest, position, result, reason in items:
            mid = middles.get((reason, result))
            if mid is None:
                mid = middles[(reason, result)] = (
                    f'{self._before_reason}{_enc(reason)}{self._before_result}{_enc(result)},"seq":'
                )
            body = f"{a}{int(position)!r}{b}{_enc(digest)}{mid}{seq!r}{after_seq}"
            content = sha256(body.encode("utf-8")).hexdigest()
            prev_hash = sha256(f"rsign-audit-link/v1\n{prev_hash}\n{content}".encode("ascii")).hexdigest()
            out.append(prev_hash)
            seq += 1
        return out


def content_hash(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(canonical(fields)).hexdigest()


def link(prev_hash: str, content: str) -> str:
    return hashlib.sha256(f"rsign-audit-link/v1\n{prev_hash}\n{content}".encode("ascii")).hexdigest()


def record_hash(fields: Mapping[str, Any]) -> str:
    return link(fields["prev_hash"], content_hash(fields))


def mac_message(seq: int, head_hash: str) -> bytes:
    return f"rsign-audit-mac/v1\n{seq}\n{head_hash}".encode("ascii")


def checkpoint_message(seq: int, head_hash: str, ts: str) -> bytes:
    """What an audit checkpoint signs (ECDSA P-256 with SHA-256 over these bytes)."""
    return f"rsign-audit-checkpoint/v1\n{seq}\n{head_hash}\n{ts}\n".encode("ascii")


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    records: int
    head_seq: int
    head_hash: str
    bad_seq: int | None = None
    problem: str = ""


def verify(
    rows: Iterable[Mapping[str, Any]],
    expect_head: tuple[int, str] | None = None,
    start: tuple[int, str] = (0, GENESIS),
) -> ChainReport:
    """Walk ``rows`` in sequence order from ``start`` (sequence, hash of the record before the
    first row); report the first record that breaks the chain.

    A row is either a full record (its content is hashed) or a link (``content_hash`` given,
    content withheld). ``expect_head`` is the head the log claims (its own head row, or a signed
    checkpoint): a shorter chain is reported as truncation.
    """
    prev_seq, prev_hash = start
    expected_seq = prev_seq + 1
    count = 0
    for row in rows:
        seq = int(row["seq"])
        if seq != expected_seq:
            return _out_of_sequence(count, expected_seq, prev_hash, seq)
        if "prev_hash" in row and row["prev_hash"] != prev_hash:
            return _unlinked(count, seq, prev_hash)
        ch = row["content_hash"] if "content_hash" in row and "action" not in row else content_hash(row)
        h = link(prev_hash, ch)
        if h != row["hash"]:
            return ChainReport(
                False,
                count,
                seq - 1,
                prev_hash,
                seq,
                f"record {seq} was modified (its hash does not match its content)",
            )
        prev_hash = h
        expected_seq += 1
        count += 1
    return _ended(count, expected_seq - 1, prev_hash, expect_head)


def verify_links(
    links: Iterable[tuple[int, str, str]],
    expect_head: tuple[int, str] | None = None,
    start: tuple[int, str] = (0, GENESIS),
) -> ChainReport:
    """``verify`` over the stored links only, ``(seq, prev_hash, hash)`` per record: gap-free
    sequence numbers and each ``prev_hash`` equal to the record before's ``hash``.

    It does not show that a record's content matches its hash, so on its own it proves nothing
    against an editor; with a valid MAC on the last record it shows that this head is one rsign
    computed itself, from the content it was given, and extends ``start`` (the checkpointer's
    use: see ``rsign.audit.checkpoints``). Tuples, not rows: it runs over every record appended.
    """
    prev_seq, prev_hash = start
    expected_seq = prev_seq + 1
    for seq, prev, h in links:
        if int(seq) != expected_seq:
            return _out_of_sequence(expected_seq - start[0] - 1, expected_seq, prev_hash, int(seq))
        if prev != prev_hash:
            return _unlinked(expected_seq - start[0] - 1, int(seq), prev_hash)
        prev_hash = h
        expected_seq += 1
    return _ended(expected_seq - start[0] - 1, expected_seq - 1, prev_hash, expect_head)


def _out_of_sequence(count: int, expected_seq: int, prev_hash: str, seq: int) -> ChainReport:
    if seq < expected_seq:
        return ChainReport(
            False, count, expected_seq - 1, prev_hash, seq, f"record {seq} appears twice or out of order"
        )
    return ChainReport(
        False,
        count,
        expected_seq - 1,
        prev_hash,
        expected_seq,
        f"record {expected_seq} is missing (the next record present is {seq})",
    )


def _unlinked(count: int, seq: int, prev_hash: str) -> ChainReport:
    return ChainReport(
        False, count, seq - 1, prev_hash, seq, f"record {seq} does not link to record {seq - 1} (prev_hash differs)"
    )


def _ended(count: int, head_seq: int, prev_hash: str, expect_head: tuple[int, str] | None) -> ChainReport:
    if expect_head is not None and expect_head != (head_seq, prev_hash):
        want_seq, _ = expect_head
        if want_seq > head_seq:
            return ChainReport(
                False,
                count,
                head_seq,
                prev_hash,
                head_seq + 1,
                f"records {head_seq + 1}..{want_seq} are missing (the log was truncated)",
            )
        return ChainReport(
            False,
            count,
            head_seq,
            prev_hash,
            want_seq,
            f"the chain does not end where the log says it does (record {want_seq})",
        )
    return ChainReport(True, count, head_seq, prev_hash)
