"""A real export (SoftHSMv2 audit key, SQLite log) altered in every way a transfer or an attacker
could: every single-bit flip, dropped, duplicated, swapped and truncated lines, fields replaced by
any JSON value. Each is refused with a one-line reason and never with an exception; the CLI exits 1
without a traceback."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from rsign.audit.export_format import closing_line, encode_line
from rsign.audit.offline import verify_export_bytes
from rsign.cli.main import main
from rsign.dev import EMBEDDED
from rsign.domain import context
from rsign.domain.events import EventFilter
from rsign.domain.principal import LOCAL_OPERATOR
from rsign.runtime.app import build_app
from rsign.runtime.config import load_settings

AGENCY = "Sở Y tế"


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """As small as a real export gets with every entry type: two agencies' enrolments (one exported
    as a record, one as a link), a checkpoint, the audit certificate and its issuer. Its closing
    signature's base64 ends in padding (DER signatures vary in length; about 3 in 4 do), so that
    the padding bit of issue 10 is there to flip."""
    app = build_app(load_settings(tmp_path_factory.mktemp("export-state"), embedded=EMBEDDED), pool=False)
    try:
        with context.request(client="test", actor="tester"):
            app.auth.enrol("u.yte", "Người dùng Y tế", "123456", agency=AGENCY)
            app.auth.enrol("u.noivu", "Người dùng Nội vụ", "123456", agency="Sở Nội vụ")
        for _ in range(40):
            with context.request(client="test", actor="auditor"):
                data = b"".join(app.audit.export(LOCAL_OPERATOR, EventFilter(agency=AGENCY)))
            if json.loads(data.splitlines()[-1])["signature"].endswith("="):
                break
    finally:
        app.close()
    rep = verify_export_bytes(data)
    assert rep.ok, rep.problems
    assert rep.records >= 1 and rep.links >= 1 and rep.checkpoints >= 1
    return data


def refused(raw: bytes) -> list[str]:
    """The problems found; the export must be refused, each problem one non-empty line."""
    rep = verify_export_bytes(raw)
    assert not rep.ok
    assert all(p and "\n" not in p for p in rep.problems), rep.problems
    return rep.problems


def test_the_service_writes_what_the_verifier_requires(export: bytes) -> None:
    *body, last = export.splitlines(keepends=True)
    assert all(encode_line(json.loads(line)) == line for line in body)
    closing = json.loads(last)
    assert closing_line(closing["sha256"], base64.b64decode(closing["signature"])) == last


@pytest.mark.slow
def test_every_single_bit_flip_is_refused(export: bytes) -> None:
    accepted: list[int] = []
    crashed: list[tuple[int, str]] = []
    for bit in range(len(export) * 8):
        damaged = bytearray(export)
        damaged[bit // 8] ^= 1 << (bit % 8)
        try:
            rep = verify_export_bytes(bytes(damaged))
        except Exception as exc:  # what this test exists to rule out
            crashed.append((bit, repr(exc)))
            continue
        if rep.ok or not all(p and "\n" not in p for p in rep.problems):
            accepted.append(bit)
    assert not crashed, f"{len(crashed)} flips raised, e.g. {crashed[:3]}"
    assert not accepted, f"{len(accepted)} flips accepted or not reported in one line, e.g. bits {accepted[:10]}"


def _padding_flip(export: bytes) -> bytes:
    """The finding of issue 10: a flipped padding bit in the closing signature's base64. The
    decoded signature is the same, so a lenient decoder called the export intact."""
    sig = json.loads(export.splitlines()[-1])["signature"].encode()
    at = export.rindex(sig) + len(sig.rstrip(b"=")) - 1  # the last character before the padding
    # The lowest bit of its base64 VALUE is a padding bit (A<->B, g<->h, ...); flipping the ASCII
    # code's lowest bit instead would change data bits for half the characters ('g' -> 'f').
    alphabet = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    damaged = bytearray(export)
    damaged[at] = alphabet[alphabet.index(export[at]) ^ 1]
    return bytes(damaged)


def test_closing_signature_padding_bit(export: bytes) -> None:
    damaged = _padding_flip(export)
    sig, twin = (json.loads(e.splitlines()[-1])["signature"] for e in (export, damaged))
    assert sig != twin and base64.b64decode(twin) == base64.b64decode(sig)  # the same signature bytes
    last = len(export.splitlines())
    assert refused(damaged) == [f"line {last} (closing signature): field 'signature' is not canonical base64"]


@settings(max_examples=60, deadline=None)
@given(data=st.data())
def test_structural_damage_is_refused(export: bytes, data: st.DataObject) -> None:
    lines = export.splitlines(keepends=True)
    i = data.draw(st.integers(0, len(lines) - 1), label="line")
    j = data.draw(st.integers(0, len(lines) - 1).filter(lambda j: lines[j] != lines[i]), label="other line")
    kind = data.draw(st.sampled_from(["drop", "duplicate", "swap", "truncate"]), label="damage")
    if kind == "drop":
        damaged = lines[:i] + lines[i + 1 :]
    elif kind == "duplicate":
        damaged = [*lines[:j], lines[i], *lines[j:]]
    elif kind == "swap":
        damaged = list(lines)
        damaged[i], damaged[j] = damaged[j], damaged[i]
    else:
        damaged = [export[: data.draw(st.integers(0, len(export) - 1), label="length")]]
    refused(b"".join(damaged))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(), inner, max_size=3),
    max_leaves=8,
)


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_any_field_replaced_added_or_removed_is_refused(export: bytes, data: st.DataObject) -> None:
    lines = export.splitlines(keepends=True)
    i = data.draw(st.integers(0, len(lines) - 1), label="line")
    entry: dict[str, Any] = json.loads(lines[i])
    key = data.draw(st.sampled_from([*entry, "extra"]), label="field")
    if data.draw(st.booleans(), label="remove") and key in entry:
        del entry[key]
    else:
        value = data.draw(json_values.filter(lambda v: json.dumps(v) != json.dumps(entry.get(key))), label="value")
        entry[key] = value
    # Written as rsign would write it, so that only the change itself is to be caught.
    last = i == len(lines) - 1
    lines[i] = (json.dumps(entry) + "\n").encode() if last else encode_line(entry)
    refused(b"".join(lines))


@settings(max_examples=100, deadline=None)
@given(raw=st.binary(max_size=300) | st.text(max_size=300).map(str.encode))
def test_arbitrary_bytes_never_raise(raw: bytes) -> None:
    refused(raw)


@pytest.mark.parametrize(
    "damage",
    [
        lambda e: b"",
        lambda e: b"\xff" * 10 + b"\n",
        lambda e: b"not json\n",
        lambda e: b'["a", "list"]\n',
        lambda e: e.replace(b'"seq":1,', b'"seq":' + b"9" * 10_000 + b",", 1),
        lambda e: e[: len(e) // 2],
        _padding_flip,
    ],
    ids=["empty", "not-utf8", "not-json", "wrong-shape", "huge-number", "truncated", "padding-bit"],
)
def test_cli_exits_1_with_one_line_reason(export: bytes, tmp_path: Path, damage: Any) -> None:
    path = tmp_path / "export.jsonl"
    path.write_bytes(damage(export))
    res = CliRunner().invoke(main, ["audit", "verify-export", str(path)])
    assert res.exit_code == 1 and isinstance(res.exception, SystemExit), res.output
    failed = [line for line in res.stderr.splitlines() if line.startswith("FAILED: ")]
    assert failed and "Traceback" not in res.output


def test_cli_process_refuses_the_padding_flip(export: bytes, tmp_path: Path) -> None:
    """As a person runs it: its own process, exit 1, the reason on stderr, no traceback."""
    path = tmp_path / "export.jsonl"
    path.write_bytes(_padding_flip(export))
    res = subprocess.run([sys.executable, "-m", "rsign.cli", "audit", "verify-export", str(path)],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert res.returncode == 1, res.stdout + res.stderr
    assert "FAILED: " in res.stderr and "Traceback" not in res.stderr and "export intact" not in res.stdout
