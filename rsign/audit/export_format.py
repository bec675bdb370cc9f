"""The audit export's line format, read strictly: the schema of every entry (header, checkpoint,
record, link, closing signature) and of the checkpoint file an auditor keeps, their one encoding,
and the field checks. Pure (the standard library and the pure chain functions only); the format
itself, the threat model that asks for this strictness and the verifier are ``rsign.audit.offline``'s.

Every check returns the value in canonical form (objects with their keys in the written order) or
raises ``Malformed`` naming the field, so that each problem is one line, never an exception
that escapes the verifier.
"""

from __future__ import annotations

import base64
import json
import re
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from typing import Any

from rsign.audit import chain

FORMAT = "rsign-audit-export/2"
FORMAT_1 = "rsign-audit-export/1"  # without the anchor: still read
# Format 2 plus the audit checkpoint keys rotated out ("previous_audit_certificates"): written
# once the checkpoint key was rotated, so that exports of a log never rotated stay format 2.
FORMAT_3 = "rsign-audit-export/3"
# The record an audit key rotation writes (rsign.domain.events.Action.AUDIT_KEY_ROTATE; copied so
# that this module stays standalone, tests/unit/test_offline.py keeps them equal).
KEY_ROTATE = "audit.key_rotate"
CHECKPOINT_FORMAT = "rsign-audit-checkpoint/1"
# rsign.domain.events.EventFilter's fields, as the header's "filter" carries them (non-empty ones, in
# this order); copied so that this module stays standalone, tests/unit/test_offline.py keeps them equal.
FILTER_KEYS = ("from_ts", "to_ts", "actor", "credential_id", "agency", "action", "result")
# rsign.domain.clock.iso_utc's form: fixed width, so that times compare as strings.
_UTC = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")
_MAX_SEQ = 2**63 - 1  # the store's BIGINT
_MAX_KEY_VERSION = 2**31 - 1  # the store's INTEGER
_HEX64 = re.compile(r"[0-9a-f]{64}")


def export_signature_message(sha256_hex: str, fmt: str = FORMAT) -> bytes:
    """What the closing signature signs: the export's format (from its header) and digest."""
    return f"{fmt}\n{sha256_hex}\n".encode("ascii")


_ENCODER = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"))


def encode_line(entry: Mapping[str, Any]) -> bytes:
    """An export line as rsign writes it, and the only form the verifier accepts: compact JSON, UTF-8."""
    return (_ENCODER.encode(entry) + "\n").encode("utf-8")


def closing_line(sha256_hex: str, signature: bytes) -> bytes:
    """The closing signature line. Format 1 wrote it with json.dumps's default separators; kept
    byte-for-byte so that exports already written still verify."""
    sig = base64.b64encode(signature).decode("ascii")
    return (json.dumps({"type": "signature", "sha256": sha256_hex, "signature": sig}) + "\n").encode("ascii")


# -- strict reading --------------------------------------------------------------------------


class Malformed(Exception):
    """What is wrong with a field (``path``, outermost first) or with the entry as a whole."""

    def __init__(self, what: str, path: tuple[str, ...] = ()) -> None:
        super().__init__(what)
        self.what = what
        self.path = path

    def describe(self) -> str:
        return f"field {_quote('.'.join(self.path))} {self.what}" if self.path else self.what


def _quote(text: str) -> str:
    """Input shown in a message: quoted, escaped (the message stays one line) and short."""
    return repr(text if len(text) <= 40 else text[:40] + "...")


# A check takes a decoded JSON value and returns it in canonical form (objects with their keys in
# the written order), or raises Malformed.
Check = Callable[[Any], Any]


def _int(lo: int, hi: int) -> Check:
    def check(v: Any) -> int:
        if type(v) is not int:  # not bool, not float
            raise Malformed("is not an integer")
        if not lo <= v <= hi:
            raise Malformed(f"is out of range ({lo}..{hi})")
        return v

    return check


def _text(v: Any) -> str:
    if type(v) is not str:
        raise Malformed("is not a string")
    return v


def _literal(want: str) -> Check:
    def check(v: Any) -> str:
        if _text(v) != want:
            raise Malformed(f"is {_quote(v)}, not {want!r}")
        return want

    return check


def _hex64(v: Any) -> str:
    if not _HEX64.fullmatch(_text(v)):
        raise Malformed("is not 64 lowercase hex digits")
    return str(v)


def _utc(v: Any) -> str:
    ok = bool(_UTC.fullmatch(_text(v)))
    if ok:
        try:
            datetime.fromisoformat(v)  # a real date and time: no month 13
        except ValueError:
            ok = False
    if not ok:
        raise Malformed("is not a UTC time like 2026-11-26T10:00:00.000000Z")
    return str(v)


def _base64(v: Any) -> str:
    # b64decode alone ignores non-zero padding bits: a flipped bit there would go unseen. Only the
    # one encoding b64encode gives is accepted.
    try:
        raw = base64.b64decode(_text(v), validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise Malformed("is not base64") from None
    if not raw or base64.b64encode(raw).decode("ascii") != v:
        raise Malformed("is not canonical base64")
    return str(v)


def _list_of(item: Check) -> Check:
    def check(v: Any) -> list[Any]:
        if type(v) is not list:
            raise Malformed("is not a list")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item(x))
            except Malformed as exc:
                raise Malformed(exc.what, (str(i), *exc.path)) from None
        return out

    return check


def _object(schema: Sequence[tuple[str, Check]], optional: bool = False) -> Check:
    """An object with exactly the fields of ``schema`` (or, if ``optional``, some of them)."""
    names = {name for name, _ in schema}

    def check(v: Any) -> dict[str, Any]:
        if type(v) is not dict:
            raise Malformed("is not an object")
        for k in v:
            if k not in names:
                raise Malformed("is not expected here", (k,))
        out = {}
        for name, item in schema:
            if name not in v:
                if optional:
                    continue
                raise Malformed("is missing", (name,))
            try:
                out[name] = item(v[name])
            except Malformed as exc:
                raise Malformed(exc.what, (name, *exc.path)) from None
        return out

    return check


def _nullable(item: Check) -> Check:
    def check(v: Any) -> Any:
        return None if v is None else item(v)

    return check


_SEQ = _int(1, _MAX_SEQ)
_RECORD_CHECKS: dict[str, Check] = {"seq": _SEQ, "ts": _utc, "key_version": _int(0, _MAX_KEY_VERSION)}  # others: text
_ANCHOR = _object(
    (("epoch", _int(0, _MAX_SEQ)), ("seq", _SEQ), ("head_hash", _hex64), ("ts", _utc), ("signature", _base64))
)


def _header_fields(fmt: str) -> list[tuple[str, Check]]:
    fields: list[tuple[str, Check]] = [
        ("type", _text),
        ("format", _literal(fmt)),
        ("exported_at", _utc),
        ("exported_by", _text),
        ("scope", _text),
        ("filter", _object([(k, _text) for k in FILTER_KEYS], optional=True)),
        ("head", _object((("seq", _int(0, _MAX_SEQ)), ("hash", _hex64)))),
        ("audit_certificate", _base64),
        ("issuer_certificates", _list_of(_base64)),
        ("warning", _text),
    ]
    if fmt != FORMAT_1:
        fields.insert(7, ("anchor", _nullable(_ANCHOR)))
    if fmt == FORMAT_3:
        fields.insert(fields.index(("warning", _text)), ("previous_audit_certificates", _list_of(_PREVIOUS)))
    return fields


# A checkpoint key rotated out: its certificate and the last checkpoint it signed (it signed the
# checkpoints after the previous entry's, the current key those after the last entry's).
_PREVIOUS = _object((("certificate", _base64), ("issuer_certificates", _list_of(_base64)), ("last_seq", _SEQ)))
_HEADERS = {fmt: _object(_header_fields(fmt)) for fmt in (FORMAT_1, FORMAT, FORMAT_3)}


def _header(v: Any) -> Any:
    """Format 1 or 2, by the header's own "format" (anything else is named against format 2)."""
    fmt = v.get("format") if type(v) is dict else None
    # Only a string can name a format: a list or an object here is damage (and unhashable).
    return _HEADERS[fmt if isinstance(fmt, str) and fmt in _HEADERS else FORMAT](v)


_SCHEMAS: dict[str, Check] = {
    "header": _header,
    "checkpoint": _object(
        (("type", _text), ("seq", _SEQ), ("head_hash", _hex64), ("ts", _utc), ("signature", _base64))
    ),
    "record": _object(
        (
            ("type", _text),
            *((k, _RECORD_CHECKS.get(k, _text)) for k in chain.CONTENT_FIELDS),
            ("prev_hash", _hex64),
            ("hash", _hex64),
        )
    ),
    "link": _object((("type", _text), ("seq", _SEQ), ("content_hash", _hex64), ("hash", _hex64))),
    "signature": _object((("type", _text), ("sha256", _hex64), ("signature", _base64))),
}
_NAMES = {**{kind: kind for kind in _SCHEMAS}, "signature": "closing signature"}  # for messages


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # json.loads would keep the last of two equal keys, silently: a verifier reads one value only.
    obj: dict[str, Any] = {}
    for k, v in pairs:
        if k in obj:
            raise Malformed("appears twice", (k,))
        obj[k] = v
    return obj


def _no_constant(name: str) -> Any:
    raise Malformed(f"a value is {name}, which JSON does not allow")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def _read_entry(line: bytes, where: int) -> tuple[str, dict[str, Any]]:
    """One line, checked in full: its label for messages ("line 4 (record 2)") and its entry;
    raises Malformed with the one-line reason."""
    label = f"line {where}"
    try:
        obj = _DECODER.decode(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise Malformed(f"{label} is not UTF-8 text") from None
    except Malformed as exc:
        raise Malformed(f"{label}: {exc.describe()}") from None
    except (ValueError, RecursionError):  # JSONDecodeError, a number too long to convert, deep nesting
        raise Malformed(f"{label} is not valid JSON" if line else f"{label} is empty") from None
    kind = obj.get("type") if type(obj) is dict else None
    if type(kind) is not str or kind not in _SCHEMAS:
        if where == 1:
            raise Malformed(f"line 1 is not an rsign audit export header (expected format {FORMAT})")
        raise Malformed(f"{label} is not an export entry (no known 'type')")
    label += f" ({_NAMES[kind]}"
    if kind in ("checkpoint", "record", "link") and type(obj.get("seq")) is int and 1 <= obj["seq"] <= _MAX_SEQ:
        label += f" {obj['seq']}"
    label += ")"
    try:
        entry: dict[str, Any] = _SCHEMAS[kind](obj)
    except Malformed as exc:
        raise Malformed(f"{label}: {exc.describe()}") from None
    try:
        if kind == "signature":
            canonical = closing_line(entry["sha256"], base64.b64decode(entry["signature"]))
        else:
            canonical = encode_line(entry)
    except UnicodeEncodeError:  # a lone surrogate (\ud800) has no UTF-8 form
        canonical = b""
    if canonical != line + b"\n":
        raise Malformed(f"{label} is not written as rsign writes it (spacing, escapes or key order differ)")
    return label, entry


_RANK = {"header": 0, "checkpoint": 1, "record": 2, "link": 2, "signature": 3}


def read_lines(raw: bytes) -> tuple[list[dict[str, Any]], bytes]:
    """A whole export, line by line, each checked in full and in its place (a header, checkpoints,
    records and links, a closing signature): its entries, and the bytes the closing signature
    covers. Raises ``Malformed`` with the one-line reason."""
    if not raw:
        raise Malformed("the file is empty")
    if not raw.endswith(b"\n"):
        raise Malformed("the file does not end with a newline (it was truncated)")
    lines = raw[:-1].split(b"\n")
    read = [_read_entry(line, i) for i, line in enumerate(lines, 1)]
    if read[-1][1]["type"] != "signature":
        raise Malformed("the export's closing signature is missing (the file was truncated)")
    rank = 0
    for i, (label, entry) in enumerate(read):
        r = _RANK[entry["type"]]
        if (r == 0) != (i == 0) or (r == 3) != (i == len(read) - 1) or r < rank:
            raise Malformed(
                f"{label} is out of place (an export is a header, checkpoints, records, a closing signature)"
            )
        rank = r
    return [entry for _, entry in read], raw[: len(raw) - len(lines[-1]) - 1]


# -- checkpoint files: what an auditor keeps between exports ---------------------------------


_CHECKPOINT_FILE = _object(
    (
        ("format", _literal(CHECKPOINT_FORMAT)),
        ("seq", _SEQ),
        ("head_hash", _hex64),
        ("ts", _utc),
        ("signature", _base64),
        ("audit_certificate_sha256", _hex64),
    )
)


def read_checkpoint_line(raw: bytes) -> dict[str, Any]:
    """A checkpoint file's one line, as strictly as an export line; ValueError with a one-line reason."""
    if not raw.endswith(b"\n") or raw.count(b"\n") != 1:
        raise ValueError("a checkpoint file is one line ending in a newline")
    try:
        obj = _DECODER.decode(raw[:-1].decode("utf-8"))
        entry: dict[str, Any] = _CHECKPOINT_FILE(obj)
    except UnicodeDecodeError:
        raise ValueError("the checkpoint file is not UTF-8 text") from None
    except Malformed as exc:
        raise ValueError(f"the checkpoint file: {exc.describe()}") from None
    except (ValueError, RecursionError):
        raise ValueError("the checkpoint file is not valid JSON") from None
    if encode_line(entry) != raw:
        raise ValueError("the checkpoint file is not written as rsign writes it")
    return entry
