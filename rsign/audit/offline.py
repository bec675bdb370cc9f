"""Offline verification of an audit export: needs the file and nothing else (no database, no HSM,
no network). Imports only the pure chain functions and ``cryptography``.

Export format (JSON Lines, UTF-8, every line ending in a newline), in this order:

    {"type": "header", "format": "rsign-audit-export/2", "exported_at": T, "exported_by": U, "scope": S,
     "filter": {...}, "head": {"seq": N, "hash": H},
     "anchor": {"epoch": E, "seq": A, "head_hash": H, "ts": T, "signature": <base64 DER ECDSA>} | null,
     "audit_certificate": <base64 DER>, "issuer_certificates": [<base64 DER>, ...], "warning": W}
    {"type": "checkpoint", "seq": S, "head_hash": H, "ts": T, "signature": <base64 DER ECDSA>}   ...
    {"type": "record", <content fields>, "prev_hash": P, "hash": H}                               ...
    {"type": "link", "seq": S, "content_hash": C, "hash": H}      (a record outside the export's filter)
    {"type": "signature", "sha256": <hex of every byte above>, "signature": <base64 DER ECDSA>}

``anchor`` (format 2) is the checkpoint the HSM held as the log's anchor when the file was written
(``rsign.domain.anchor``; ``epoch`` counts accepted rollbacks): the export must contain that
checkpoint and reach that record with that hash, or the log was rolled back. Format 1 (no anchor)
is still read.

A checkpoint file (``rsign audit checkpoint --out``, ``rsign audit extract-checkpoint``) is one line,
read as strictly:

    {"format": "rsign-audit-checkpoint/1", "seq": S, "head_hash": H, "ts": T, "signature": <base64>,
     "audit_certificate_sha256": <hex>}

An auditor keeps it and later runs ``verify-export --after FILE``: a newer export must extend it.

Threat model: the file comes from anywhere and may have been altered by anyone without the audit
key. The verifier therefore reads it strictly before trusting any of it: every line must be exactly
the bytes rsign writes for its entry (``encode_line``, ``closing_line``: one encoding, keys in
order, no unknown or missing field, canonical base64, fixed-width UTC times, integers in range), so
the closing line, which its own signature cannot cover, has no bits an attacker may change unseen.
Any damage is reported as one line naming the line and field, never as an exception. The price of
strictness: a new field needs a new format version, which older verifiers refuse.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from rsign.audit import chain

FORMAT = "rsign-audit-export/2"
FORMAT_1 = "rsign-audit-export/1"  # without the anchor: still read
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


def _load_certificate(data: bytes) -> x509.Certificate:
    """PEM or DER; ValueError for anything else. Strict: what cryptography only warns about for now
    (a serial number that is not positive, which RFC 5280 forbids) is refused here already."""
    try:
        # catch_warnings is process-wide state: fine for a verifier, which runs alone.
        with warnings.catch_warnings():
            warnings.simplefilter("error", CryptographyDeprecationWarning)
            if b"-----BEGIN" in data:  # PEM may follow explanatory text
                return x509.load_pem_x509_certificate(data)
            return x509.load_der_x509_certificate(data)
    except (ValueError, x509.InvalidVersion, UnsupportedAlgorithm, CryptographyDeprecationWarning):
        raise ValueError("not an X.509 certificate (PEM or DER)") from None


def read_certificate(data: bytes) -> bytes:
    """A certificate given as PEM or DER (``--audit-cert``), as DER; ValueError otherwise."""
    return _load_certificate(data).public_bytes(Encoding.DER)


@dataclass
class ExportReport:
    problems: list[str] = field(default_factory=list)
    records: int = 0
    links: int = 0
    checkpoints: int = 0
    head_seq: int = 0
    certificate_sha256: str = ""
    anchor: dict[str, Any] | None = None  # the header's HSM anchor (format 2), when it has one
    last_checkpoint: dict[str, Any] | None = None  # the export's highest checkpoint entry

    @property
    def ok(self) -> bool:
        return not self.problems


# -- strict reading --------------------------------------------------------------------------


class _Bad(Exception):
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
# the written order), or raises _Bad.
Check = Callable[[Any], Any]


def _int(lo: int, hi: int) -> Check:
    def check(v: Any) -> int:
        if type(v) is not int:  # not bool, not float
            raise _Bad("is not an integer")
        if not lo <= v <= hi:
            raise _Bad(f"is out of range ({lo}..{hi})")
        return v

    return check


def _text(v: Any) -> str:
    if type(v) is not str:
        raise _Bad("is not a string")
    return v


def _literal(want: str) -> Check:
    def check(v: Any) -> str:
        if _text(v) != want:
            raise _Bad(f"is {_quote(v)}, not {want!r}")
        return want

    return check


def _hex64(v: Any) -> str:
    if not _HEX64.fullmatch(_text(v)):
        raise _Bad("is not 64 lowercase hex digits")
    return str(v)


def _utc(v: Any) -> str:
    ok = bool(_UTC.fullmatch(_text(v)))
    if ok:
        try:
            datetime.fromisoformat(v)  # a real date and time: no month 13
        except ValueError:
            ok = False
    if not ok:
        raise _Bad("is not a UTC time like 2026-11-26T10:00:00.000000Z")
    return str(v)


def _base64(v: Any) -> str:
    # b64decode alone ignores non-zero padding bits: a flipped bit there would go unseen. Only the
    # one encoding b64encode gives is accepted.
    try:
        raw = base64.b64decode(_text(v), validate=True)
    except ValueError:  # binascii.Error, or non-ASCII text
        raise _Bad("is not base64") from None
    if not raw or base64.b64encode(raw).decode("ascii") != v:
        raise _Bad("is not canonical base64")
    return str(v)


def _list_of(item: Check) -> Check:
    def check(v: Any) -> list[Any]:
        if type(v) is not list:
            raise _Bad("is not a list")
        out = []
        for i, x in enumerate(v):
            try:
                out.append(item(x))
            except _Bad as exc:
                raise _Bad(exc.what, (str(i), *exc.path)) from None
        return out

    return check


def _object(schema: Sequence[tuple[str, Check]], optional: bool = False) -> Check:
    """An object with exactly the fields of ``schema`` (or, if ``optional``, some of them)."""
    names = {name for name, _ in schema}

    def check(v: Any) -> dict[str, Any]:
        if type(v) is not dict:
            raise _Bad("is not an object")
        for k in v:
            if k not in names:
                raise _Bad("is not expected here", (k,))
        out = {}
        for name, item in schema:
            if name not in v:
                if optional:
                    continue
                raise _Bad("is missing", (name,))
            try:
                out[name] = item(v[name])
            except _Bad as exc:
                raise _Bad(exc.what, (name, *exc.path)) from None
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
    return fields


_HEADERS = {fmt: _object(_header_fields(fmt)) for fmt in (FORMAT_1, FORMAT)}


def _header(v: Any) -> Any:
    """Format 1 or 2, by the header's own "format" (anything else is named against format 2)."""
    fmt = v.get("format") if type(v) is dict else None
    return _HEADERS[fmt if fmt in _HEADERS else FORMAT](v)


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
            raise _Bad("appears twice", (k,))
        obj[k] = v
    return obj


def _no_constant(name: str) -> Any:
    raise _Bad(f"a value is {name}, which JSON does not allow")


_DECODER = json.JSONDecoder(object_pairs_hook=_no_duplicates, parse_constant=_no_constant)


def _read_entry(line: bytes, where: int) -> tuple[str, dict[str, Any]]:
    """One line, checked in full: its label for messages ("line 4 (record 2)") and its entry;
    raises _Bad with the one-line reason."""
    label = f"line {where}"
    try:
        obj = _DECODER.decode(line.decode("utf-8"))
    except UnicodeDecodeError:
        raise _Bad(f"{label} is not UTF-8 text") from None
    except _Bad as exc:
        raise _Bad(f"{label}: {exc.describe()}") from None
    except (ValueError, RecursionError):  # JSONDecodeError, a number too long to convert, deep nesting
        raise _Bad(f"{label} is not valid JSON" if line else f"{label} is empty") from None
    kind = obj.get("type") if type(obj) is dict else None
    if type(kind) is not str or kind not in _SCHEMAS:
        if where == 1:
            raise _Bad(f"line 1 is not an rsign audit export header (expected format {FORMAT})")
        raise _Bad(f"{label} is not an export entry (no known 'type')")
    label += f" ({_NAMES[kind]}"
    if kind in ("checkpoint", "record", "link") and type(obj.get("seq")) is int and 1 <= obj["seq"] <= _MAX_SEQ:
        label += f" {obj['seq']}"
    label += ")"
    try:
        entry: dict[str, Any] = _SCHEMAS[kind](obj)
    except _Bad as exc:
        raise _Bad(f"{label}: {exc.describe()}") from None
    try:
        if kind == "signature":
            canonical = closing_line(entry["sha256"], base64.b64decode(entry["signature"]))
        else:
            canonical = encode_line(entry)
    except UnicodeEncodeError:  # a lone surrogate (\ud800) has no UTF-8 form
        canonical = b""
    if canonical != line + b"\n":
        raise _Bad(f"{label} is not written as rsign writes it (spacing, escapes or key order differ)")
    return label, entry


def _certificate(b64: str, what: str) -> x509.Certificate:
    der = base64.b64decode(b64)
    try:
        # The header carries DER only (the PEM branch is for --audit-cert files).
        cert = None if b"-----BEGIN" in der else _load_certificate(der)
    except ValueError:
        cert = None
    if cert is None:
        raise _Bad(f"line 1 (header): the {what} is not a readable X.509 certificate")
    return cert


@dataclass
class _Export:
    header: dict[str, Any]
    cert_der: bytes
    public_key: ec.EllipticCurvePublicKey
    checkpoints: list[dict[str, Any]]
    chain: list[dict[str, Any]]  # records and links, in file order
    closing: dict[str, Any]
    body: bytes  # every byte the closing signature covers


_RANK = {"header": 0, "checkpoint": 1, "record": 2, "link": 2, "signature": 3}


def _read(raw: bytes) -> _Export:
    if not raw:
        raise _Bad("the file is empty")
    if not raw.endswith(b"\n"):
        raise _Bad("the file does not end with a newline (it was truncated)")
    lines = raw[:-1].split(b"\n")
    read = [_read_entry(line, i) for i, line in enumerate(lines, 1)]
    if read[-1][1]["type"] != "signature":
        raise _Bad("the export's closing signature is missing (the file was truncated)")
    rank = 0
    for i, (label, entry) in enumerate(read):
        r = _RANK[entry["type"]]
        if (r == 0) != (i == 0) or (r == 3) != (i == len(read) - 1) or r < rank:
            raise _Bad(f"{label} is out of place (an export is a header, checkpoints, records, a closing signature)")
        rank = r
    entries = [entry for _, entry in read]
    header = entries[0]
    cert = _certificate(header["audit_certificate"], "audit certificate")
    for n, issuer in enumerate(header["issuer_certificates"]):
        _certificate(issuer, f"issuer certificate {n}")
    try:
        public_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        public_key = None
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        raise _Bad("line 1 (header): the audit certificate does not hold an ECDSA P-256 key")
    return _Export(
        header=header,
        cert_der=base64.b64decode(header["audit_certificate"]),
        public_key=public_key,
        checkpoints=[e for e in entries if e["type"] == "checkpoint"],
        chain=[e for e in entries if e["type"] in ("record", "link")],
        closing=entries[-1],
        body=raw[: len(raw) - len(lines[-1]) - 1],
    )


# -- verification ----------------------------------------------------------------------------


def _verify_ecdsa(public_key: ec.EllipticCurvePublicKey, signature: bytes, message: bytes) -> bool:
    try:
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_export(
    path: Path, pinned_certificate: bytes | None = None, after: KeptCheckpoint | None = None
) -> ExportReport:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        return ExportReport(problems=[f"cannot read {path}: {exc.strerror or exc}"])
    return verify_export_bytes(raw, pinned_certificate, after)


def verify_export_bytes(
    raw: bytes, pinned_certificate: bytes | None = None, after: KeptCheckpoint | None = None
) -> ExportReport:
    """Check an export's bytes; every problem found is one line in ``problems`` (none: intact).
    With ``after`` (a checkpoint the auditor kept), the export must also extend that checkpoint."""
    rep = ExportReport()
    try:
        ex = _read(raw)
    except _Bad as exc:
        rep.problems.append(exc.what)
        return rep
    rep.certificate_sha256 = hashlib.sha256(ex.cert_der).hexdigest()
    if pinned_certificate is not None and pinned_certificate != ex.cert_der:
        rep.problems.append("the export is signed with a different audit certificate than the one given")

    # 1. The file as a whole: signed by the audit key at export time.
    digest = hashlib.sha256(ex.body).hexdigest()
    if ex.closing["sha256"] != digest:
        rep.problems.append("the export's content does not match its signed digest (the file was altered)")
    elif not _verify_ecdsa(
        ex.public_key,
        base64.b64decode(ex.closing["signature"]),
        export_signature_message(digest, ex.header["format"]),
    ):
        rep.problems.append("the export's signature is invalid (the file was altered)")

    # 2. Checkpoints: each signed by the audit key, in increasing order.
    rep.checkpoints = len(ex.checkpoints)
    rep.last_checkpoint = ex.checkpoints[-1] if ex.checkpoints else None
    cp_at: dict[int, str] = {}
    prev_cp: dict[str, Any] | None = None
    for cp in ex.checkpoints:
        seq, head, ts = cp["seq"], cp["head_hash"], cp["ts"]
        if not _verify_ecdsa(ex.public_key, base64.b64decode(cp["signature"]), chain.checkpoint_message(seq, head, ts)):
            rep.problems.append(f"checkpoint {seq}: signature invalid")
        if prev_cp is not None and (seq <= prev_cp["seq"] or ts < prev_cp["ts"]):
            rep.problems.append(f"checkpoint {seq}: out of order after checkpoint {prev_cp['seq']} (rollback or fork)")
        cp_at[seq] = head
        prev_cp = cp
    anchor = rep.anchor = ex.header.get("anchor")
    anchor_signed = anchor is not None and _verify_ecdsa(
        ex.public_key,
        base64.b64decode(anchor["signature"]),
        chain.checkpoint_message(anchor["seq"], anchor["head_hash"], anchor["ts"]),
    )
    if anchor is not None and not anchor_signed:
        rep.problems.append(f"the header's HSM anchor (checkpoint {anchor['seq']}): signature invalid")

    # 3. The chain, from the first record, through records and links.
    wanted = {a["seq"] for a in (anchor,) if a is not None} | ({after.seq} if after is not None else set())
    hash_at: dict[int, str] = {}
    prev_seq, prev_hash = 0, chain.GENESIS
    chain_problem = ""
    for o in ex.chain:
        seq = o["seq"]
        if seq != prev_seq + 1:
            chain_problem = (
                f"record {prev_seq + 1} is missing (the next record present is {seq})"
                if seq > prev_seq + 1
                else f"record {seq} appears twice or out of order"
            )
            break
        if o["type"] == "record":
            rep.records += 1
            if o["prev_hash"] != prev_hash:
                chain_problem = f"record {seq} does not link to record {seq - 1}"
                break
            content = chain.content_hash(o)
        else:
            rep.links += 1
            content = o["content_hash"]
        h = chain.link(prev_hash, content)
        if h != o["hash"]:
            chain_problem = f"record {seq} was modified (its hash does not match its content)"
            break
        if seq in cp_at and cp_at[seq] != h:
            chain_problem = (
                f"checkpoint {seq} does not match the log: the records up to {seq} differ from what was signed"
                " (the log was rewritten and its hashes recomputed)"
            )
            break
        if seq in wanted:
            hash_at[seq] = h
        prev_seq, prev_hash = seq, h
    rep.head_seq = prev_seq
    if chain_problem:
        rep.problems.append(chain_problem)
        return rep

    # 4. Rollback: the HSM anchor, and the checkpoint the auditor kept, must be in this history.
    if anchor is not None and anchor_signed:  # (an unsigned one was reported above)
        problem = _rollback(anchor, prev_seq, hash_at, "the HSM anchor", "the anchored one")
        if not problem:
            kept = [cp for cp in ex.checkpoints if cp["seq"] == anchor["seq"]]
            if not kept:
                problem = (
                    f"checkpoint {anchor['seq']} is missing (the HSM anchor holds it: newer checkpoints were deleted)"
                )
            elif (kept[0]["head_hash"], kept[0]["ts"], kept[0]["signature"]) != (
                anchor["head_hash"],
                anchor["ts"],
                anchor["signature"],
            ):
                problem = f"checkpoint {anchor['seq']} differs from the anchored one"
        if problem:
            rep.problems.append(problem)
    if after is not None:
        problem = after.check_signed(ex.public_key, rep.certificate_sha256) or _rollback(
            after.as_entry(), prev_seq, hash_at, "the checkpoint you kept", "the checkpoint you kept", or_older=True
        )
        if problem:
            rep.problems.append(problem)

    # 5. Truncation and coverage.
    want = ex.header["head"]
    last_cp = ex.checkpoints[-1]["seq"] if ex.checkpoints else 0
    if last_cp > prev_seq:
        rep.problems.append(
            f"records {prev_seq + 1}..{last_cp} are missing: checkpoint {last_cp} was signed over"
            " them (the log was truncated)"
        )
    elif (want["seq"], want["hash"]) != (prev_seq, prev_hash):
        rep.problems.append("the records do not end at the head the header announces")
    if prev_seq > last_cp:
        warning = " ".join(ex.header["warning"].splitlines())  # a problem is one line
        rep.problems.append(
            f"records {last_cp + 1}..{prev_seq} are not covered by a signed checkpoint, so their integrity"
            " cannot be proven offline" + (f" (the service refused to sign one: {warning})" if warning else "")
        )
    return rep


def _rollback(
    cp: Mapping[str, Any], end: int, hash_at: Mapping[int, str], what: str, one: str, or_older: bool = False
) -> str:
    """Does the export's chain (ending at ``end``) pass through checkpoint ``cp``?"""
    seq = cp["seq"]
    if end < seq:
        why = "the log was rolled back, or this export is older than it" if or_older else "the log was rolled back"
        return f"{what} is at record {seq}, the export ends at {end} ({why})"
    if hash_at.get(seq) != cp["head_hash"]:
        return f"record {seq}'s hash differs from {one} (the log was rolled back and rewritten after it)"
    return ""


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


@dataclass(frozen=True)
class KeptCheckpoint:
    seq: int
    head_hash: str
    ts: str
    signature: bytes
    audit_certificate_sha256: str

    def as_entry(self) -> dict[str, Any]:
        return {"seq": self.seq, "head_hash": self.head_hash, "ts": self.ts}

    def check_signed(self, public_key: ec.EllipticCurvePublicKey, certificate_sha256: str) -> str:
        if certificate_sha256 != self.audit_certificate_sha256:
            return (
                f"the checkpoint you kept (record {self.seq}) was signed under another audit certificate"
                f" (SHA-256 {self.audit_certificate_sha256[:16]}...) than this export's"
            )
        if not _verify_ecdsa(public_key, self.signature, chain.checkpoint_message(self.seq, self.head_hash, self.ts)):
            return f"the checkpoint you kept (record {self.seq}) does not carry a valid signature of the audit key"
        return ""


def checkpoint_file(seq: int, head_hash: str, ts: str, signature: bytes, certificate_sha256: str) -> bytes:
    """The one-line file an auditor keeps (``verify-export --after``); ``certificate_sha256``: the
    audit certificate's (DER) SHA-256, hex."""
    return encode_line(
        {
            "format": CHECKPOINT_FORMAT,
            "seq": seq,
            "head_hash": head_hash,
            "ts": ts,
            "signature": base64.b64encode(signature).decode("ascii"),
            "audit_certificate_sha256": certificate_sha256,
        }
    )


def read_checkpoint_file(raw: bytes) -> KeptCheckpoint:
    """Strict, like an export line; ValueError with a one-line reason."""
    if not raw.endswith(b"\n") or raw.count(b"\n") != 1:
        raise ValueError("a checkpoint file is one line ending in a newline")
    try:
        obj = _DECODER.decode(raw[:-1].decode("utf-8"))
        entry = _CHECKPOINT_FILE(obj)
    except UnicodeDecodeError:
        raise ValueError("the checkpoint file is not UTF-8 text") from None
    except _Bad as exc:
        raise ValueError(f"the checkpoint file: {exc.describe()}") from None
    except (ValueError, RecursionError):
        raise ValueError("the checkpoint file is not valid JSON") from None
    if encode_line(entry) != raw:
        raise ValueError("the checkpoint file is not written as rsign writes it")
    return KeptCheckpoint(
        entry["seq"],
        entry["head_hash"],
        entry["ts"],
        base64.b64decode(entry["signature"]),
        entry["audit_certificate_sha256"],
    )
