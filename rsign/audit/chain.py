"""Canonical encoding and hash chaining of audit records (pure functions).

record.hash = SHA-256(prev_hash || 0x0a || canonical_json(record fields including seq and prev_hash)).
A verifier recomputes every hash in sequence order and checks that sequence numbers have no gaps.
This alone protects against accidental or partial edits; an attacker able to rewrite the database
can recompute the chain, which keyed integrity and signed checkpoints address.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from json.encoder import encode_basestring  # type: ignore[attr-defined]
from typing import Any

GENESIS = "0" * 64

HASHED_FIELDS = (
    "seq",
    "ts",
    "actor",
    "action",
    "result",
    "credential_id",
    "key_version",
    "digest",
    "reason",
    "request_id",
    "client",
    "details",
    "prev_hash",
)


def canonical_reference(fields: Mapping[str, Any]) -> bytes:
    """The definition: compact JSON, keys sorted, UTF-8. An offline verifier may use exactly this."""
    return json.dumps(
        {k: fields[k] for k in HASHED_FIELDS}, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")


_SORTED = sorted(HASHED_FIELDS)
_INT_FIELDS = frozenset({"seq", "key_version"})
_enc = encode_basestring  # the C string encoder json.dumps(ensure_ascii=False) uses


def canonical(fields: Mapping[str, Any]) -> bytes:
    """Byte-for-byte ``canonical_reference``, about twice as fast (the batch path hashes one record
    per signature); tests/test_chain.py checks the two agree."""
    parts = []
    for k in _SORTED:
        v = fields[k]
        parts.append(f'"{k}":{int(v)!r}' if k in _INT_FIELDS else f'"{k}":{_enc(v)}')
    return ("{" + ",".join(parts) + "}").encode("utf-8")


def record_hash(fields: Mapping[str, Any]) -> str:
    return hashlib.sha256(fields["prev_hash"].encode("ascii") + b"\n" + canonical(fields)).hexdigest()


@dataclass(frozen=True)
class ChainReport:
    ok: bool
    records: int
    head_seq: int
    head_hash: str
    bad_seq: int | None = None
    problem: str = ""


def verify(rows: Iterable[Mapping[str, Any]], expect_head: tuple[int, str] | None = None) -> ChainReport:
    """Walk ``rows`` in sequence order; report the first record that breaks the chain."""
    prev_hash = GENESIS
    expected_seq = 1
    count = 0
    for row in rows:
        seq = int(row["seq"])
        if seq != expected_seq:
            return ChainReport(
                False,
                count,
                expected_seq - 1,
                prev_hash,
                expected_seq,
                f"record {expected_seq} is missing (next present record is {seq})",
            )
        if row["prev_hash"] != prev_hash:
            return ChainReport(
                False,
                count,
                seq - 1,
                prev_hash,
                seq,
                f"record {seq} does not link to record {seq - 1} (prev_hash mismatch)",
            )
        if record_hash(row) != row["hash"]:
            return ChainReport(
                False,
                count,
                seq - 1,
                prev_hash,
                seq,
                f"record {seq} was modified (its hash does not match its content)",
            )
        prev_hash = row["hash"]
        expected_seq += 1
        count += 1
    head_seq = expected_seq - 1
    if expect_head is not None and expect_head != (head_seq, prev_hash):
        want_seq, _ = expect_head
        if want_seq > head_seq:
            return ChainReport(
                False,
                count,
                head_seq,
                prev_hash,
                head_seq + 1,
                f"records {head_seq + 1}..{want_seq} are missing (log truncated)",
            )
        return ChainReport(
            False,
            count,
            head_seq,
            prev_hash,
            want_seq,
            f"the chain head does not match the recorded head at record {want_seq}",
        )
    return ChainReport(True, count, head_seq, prev_hash)
