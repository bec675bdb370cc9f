"""The offline export verifier reads strictly (no token needed): an export built here with a real
P-256 key and certificate, re-signed after each alteration so that only the alteration shows, must
be refused with one line naming the line and field, never with an exception. Also: the header's HSM
anchor (format 2), format 1 exports, and the checkpoint files auditors keep (``--after``)."""

from __future__ import annotations

import base64
import dataclasses
import datetime
import hashlib
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from rsign.audit import chain
from rsign.audit.export_format import (
    FILTER_KEYS,
    FORMAT_1,
    KEY_ROTATE,
    closing_line,
    encode_line,
    export_signature_message,
)
from rsign.audit.offline import (
    checkpoint_file,
    read_certificate,
    read_checkpoint_file,
    verify_export,
    verify_export_bytes,
)
from rsign.domain.events import Action, EventFilter

TS = "2026-11-26T10:00:00.000000Z"


def _certificate(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test audit log signer")])
    now = datetime.datetime(2026, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=365))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(Encoding.DER)


KEY = ec.generate_private_key(ec.SECP256R1())
CERT = _certificate(KEY)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _sign(message: bytes) -> bytes:
    return KEY.sign(message, ec.ECDSA(hashes.SHA256()))


def entries() -> list[dict[str, Any]]:
    """Header, checkpoint, two records and a link: every entry type but the closing signature."""
    out: list[dict[str, Any]] = []
    prev = chain.GENESIS
    for seq in (1, 2):
        fields: dict[str, Any] = {
            "seq": seq, "ts": TS, "actor": "tester", "agency": "Sở Y tế", "action": "user.enrol",
            "result": "success", "credential_id": "", "key_version": 0, "digest": "", "reason": "",
            "request_id": "r1", "client": "test", "details": "{}",
        }  # fmt: skip
        h = chain.link(prev, chain.content_hash(fields))
        out.append({"type": "record", **fields, "prev_hash": prev, "hash": h})
        prev = h
    other = hashlib.sha256(b"another agency's record").hexdigest()
    head = chain.link(prev, other)
    out.append({"type": "link", "seq": 3, "content_hash": other, "hash": head})
    cp = {"type": "checkpoint", "seq": 3, "head_hash": head, "ts": TS,
          "signature": _b64(_sign(chain.checkpoint_message(3, head, TS)))}  # fmt: skip
    anchor = {"epoch": 0, **{k: cp[k] for k in ("seq", "head_hash", "ts", "signature")}}
    header = {
        "type": "header", "format": "rsign-audit-export/2", "exported_at": TS, "exported_by": "local operator",
        "scope": "province", "filter": {"agency": "Sở Y tế"}, "head": {"seq": 3, "hash": head}, "anchor": anchor,
        "audit_certificate": _b64(CERT), "issuer_certificates": [], "warning": "",
    }  # fmt: skip
    return [header, cp, *out]


def signed(lines: list[bytes]) -> bytes:
    """The body lines (each ending in a newline) and a valid closing signature over them."""
    body = b"".join(lines)
    hexd = hashlib.sha256(body).hexdigest()
    fmt = (
        json.loads(lines[0])["format"] if lines and lines[0].startswith(b'{"type":"header"') else "rsign-audit-export/2"
    )
    return body + closing_line(hexd, _sign(export_signature_message(hexd, fmt)))


def lines() -> list[bytes]:
    return [encode_line(e) for e in entries()]


def only_problem(raw: bytes) -> str:
    rep = verify_export_bytes(raw)
    assert len(rep.problems) == 1, rep.problems
    assert "\n" not in rep.problems[0]
    return rep.problems[0]


def test_the_export_built_here_verifies() -> None:
    rep = verify_export_bytes(signed(lines()))
    assert rep.ok, rep.problems
    assert (rep.records, rep.links, rep.checkpoints, rep.head_seq) == (2, 1, 1, 3)


def test_filter_keys_are_the_event_filter_fields() -> None:
    assert FILTER_KEYS == tuple(f.name for f in dataclasses.fields(EventFilter))


def test_key_rotation_action_is_the_domain_one() -> None:
    assert KEY_ROTATE == Action.AUDIT_KEY_ROTATE


def _set(line: int, path: tuple[str, ...], value: Any) -> Callable[[list[dict[str, Any]]], None]:
    def mutate(es: list[dict[str, Any]]) -> None:
        obj = es[line - 1]
        for k in path[:-1]:
            obj = obj[k]
        obj[path[-1]] = value

    return mutate


def _drop(line: int, key: str) -> Callable[[list[dict[str, Any]]], None]:
    return lambda es: es[line - 1].pop(key) and None


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (_set(3, ("seq",), "1"), "line 3 (record): field 'seq' is not an integer"),
        (_set(3, ("seq",), 1.0), "line 3 (record): field 'seq' is not an integer"),
        (_set(3, ("seq",), True), "line 3 (record): field 'seq' is not an integer"),
        (_set(3, ("seq",), 2**63), "line 3 (record): field 'seq' is out of range"),
        (_set(3, ("seq",), 0), "line 3 (record): field 'seq' is out of range"),
        (_set(4, ("key_version",), -1), "line 4 (record 2): field 'key_version' is out of range"),
        (_set(4, ("actor",), None), "line 4 (record 2): field 'actor' is not a string"),
        (_set(4, ("details",), {"a": 1}), "line 4 (record 2): field 'details' is not a string"),
        (_set(4, ("hash",), "AB" * 32), "line 4 (record 2): field 'hash' is not 64 lowercase hex digits"),
        (_set(4, ("prev_hash",), "ab" * 31), "line 4 (record 2): field 'prev_hash' is not 64 lowercase hex"),
        (_set(4, ("ts",), "2026-11-26T10:00:00Z"), "line 4 (record 2): field 'ts' is not a UTC time"),
        (_set(4, ("ts",), "2026-13-26T10:00:00.000000Z"), "line 4 (record 2): field 'ts' is not a UTC time"),
        (_set(4, ("extra",), ""), "line 4 (record 2): field 'extra' is not expected here"),
        (_drop(4, "digest"), "line 4 (record 2): field 'digest' is missing"),
        (_set(5, ("content_hash",), 7), "line 5 (link 3): field 'content_hash' is not a string"),
        (_set(2, ("signature",), "not base64!"), "line 2 (checkpoint 3): field 'signature' is not base64"),
        (_set(2, ("signature",), ""), "line 2 (checkpoint 3): field 'signature' is not canonical base64"),
        (_set(1, ("format",), "rsign-audit-export/4"), "line 1 (header): field 'format' is 'rsign-audit-export/4'"),
        # Found by the property test: an unhashable format raised TypeError instead of a message.
        (_set(1, ("format",), []), "line 1 (header): field 'format'"),
        (_set(1, ("format",), {"v": 2}), "line 1 (header): field 'format'"),
        (_set(1, ("anchor", "epoch"), -1), "line 1 (header): field 'anchor.epoch' is out of range"),
        (_set(1, ("anchor", "seq"), "3"), "line 1 (header): field 'anchor.seq' is not an integer"),
        (_set(1, ("anchor", "note"), ""), "line 1 (header): field 'anchor.note' is not expected here"),
        (_set(1, ("anchor",), []), "line 1 (header): field 'anchor' is not an object"),
        (_drop(1, "anchor"), "line 1 (header): field 'anchor' is missing"),
        (_set(1, ("head", "seq"), "3"), "line 1 (header): field 'head.seq' is not an integer"),
        (_set(1, ("filter", "user"), "x"), "line 1 (header): field 'filter.user' is not expected here"),
        (_set(1, ("issuer_certificates",), "x"), "line 1 (header): field 'issuer_certificates' is not a list"),
        (_set(1, ("issuer_certificates",), [_b64(b"junk")]), "the issuer certificate 0 is not a readable X.509"),
        (_set(1, ("audit_certificate",), _b64(b"\x30\x03\x02\x01\x00")), "audit certificate is not a readable"),
        (
            _set(1, ("audit_certificate",), _b64(_certificate(rsa.generate_private_key(65537, 2048)))),
            "the audit certificate does not hold an ECDSA P-256 key",
        ),
        (_set(1, ("type",), "headr"), "line 1 is not an rsign audit export header"),
        (_set(3, ("type",), "recrod"), "line 3 is not an export entry"),
        (lambda es: es.insert(3, es[1]), "line 4 (checkpoint 3) is out of place"),
        (lambda es: es.insert(2, es[0]), "line 3 (header) is out of place"),
    ],
)
def test_damaged_field_is_named(mutate: Callable[[list[dict[str, Any]]], None], expected: str) -> None:
    es = entries()
    mutate(es)
    assert expected in only_problem(signed([encode_line(e) for e in es]))


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda b: b.replace(b'"seq":1,', b'"seq":1,"seq":1,'), "line 3: field 'seq' appears twice"),
        (lambda b: b.replace(b'"key_version":0', b'"key_version":NaN'), "line 3: a value is NaN"),
        (lambda b: b.replace(b'"key_version":0', b'"key_version":' + b"9" * 5000), "line 3 is not valid JSON"),
        (lambda b: b.replace(b'"key_version":0', b'"key_version":1e999'), "field 'key_version' is not an integer"),
        (lambda b: b.replace(b'"key_version":0', b'"key_version":' + b"[" * 100_000), "line 3 is not valid JSON"),
        (lambda b: b.replace(b'"seq":1,', b'"seq": 1,'), "line 3 (record 1) is not written as rsign writes it"),
        (lambda b: b.replace(b'"actor":"tester"', b'"actor":"\\u0074ester"'), "line 3 (record 1) is not written"),
        (lambda b: b.replace(b'"actor":"tester"', b'"actor":"\\ud800"'), "line 3 (record 1) is not written"),
        (lambda b: b.replace(b'"reason":""', b'"reason":"\xff"'), "line 3 is not UTF-8 text"),
        (lambda b: b.replace(b"}\n", b"}\n\n", 1), "line 2 is empty"),
        (lambda b: b.replace(b"}\n", b"}\n[1]\n", 1), "line 2 is not an export entry"),
    ],
)
def test_damaged_line_is_named(damage: Callable[[bytes], bytes], expected: str) -> None:
    body = damage(b"".join(lines()))
    assert expected in only_problem(signed(body.splitlines(keepends=True)))


def test_closing_signature_must_be_canonical() -> None:
    body = b"".join(lines())
    hexd = hashlib.sha256(body).hexdigest()
    while True:  # DER ECDSA signatures vary in length: take one whose base64 ends in padding
        closing = closing_line(hexd, _sign(export_signature_message(hexd)))
        sig = json.loads(closing)["signature"]
        if pad := len(sig) - len(sig.rstrip("=")):
            break
    assert verify_export_bytes(body + closing).ok
    # A non-zero padding bit: b64decode alone yields the same signature, so it would "verify".
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    last = sig[-pad - 1]
    twin = sig[: -pad - 1] + alphabet[alphabet.index(last) ^ 1] + "=" * pad
    assert base64.b64decode(twin) == base64.b64decode(sig)
    assert "line 6 (closing signature): field 'signature' is not canonical base64" in only_problem(
        body + closing.replace(sig.encode(), twin.encode())
    )
    for other, expected in (
        (closing.replace(b'", "', b'","'), "is not written as rsign writes it"),
        (closing.replace(b'{"type": "signature", ', b"{")[:-2] + b', "type": "signature"}\n', "is not written"),
        (closing[:-2] + b', "note": ""}\n', "field 'note' is not expected here"),
        (closing.replace(b'"sha256": "', b'"sha256": "0'), "field 'sha256' is not 64 lowercase hex digits"),
    ):
        assert expected in only_problem(body + other), other


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (b"", "the file is empty"),
        (b"\n", "line 1 is empty"),
        (b"\xff\xfe{}\n", "line 1 is not UTF-8 text"),
        (b"hello\n", "line 1 is not valid JSON"),
        (b"[]\n", "line 1 is not an rsign audit export header"),
        (b'{"type":"header"}', "does not end with a newline"),
    ],
)
def test_not_an_export(raw: bytes, expected: str) -> None:
    assert expected in only_problem(raw)


def test_truncated_at_a_line_boundary_or_within_a_line() -> None:
    raw = signed(lines())
    assert "closing signature is missing" in only_problem(b"".join(lines()[:3]))
    assert "does not end with a newline" in only_problem(raw[:-10])
    assert "closing signature is missing" in only_problem(b"".join(lines()[:1]))


def test_signature_line_in_the_middle_is_out_of_place() -> None:
    raw = signed(lines())
    closing = raw[raw.rindex(b"\n", 0, -1) + 1 :]
    assert "line 3 (closing signature) is out of place" in only_problem(signed([*lines()[:2], closing, *lines()[2:]]))


def test_warning_stays_on_one_line() -> None:
    es = entries()
    es[0]["warning"] = "first line\nsecond line"
    del es[1]  # no checkpoint: the records are not covered, and the warning says why
    rep = verify_export_bytes(signed([encode_line(e) for e in es]))
    assert rep.problems and all("\n" not in p for p in rep.problems)
    assert any("first line second line" in p for p in rep.problems)


def test_read_certificate_pem_der_and_garbage(tmp_path: Path) -> None:
    pem = x509.load_der_x509_certificate(CERT).public_bytes(Encoding.PEM)
    assert read_certificate(CERT) == CERT == read_certificate(b"Subject: test\n" + pem)
    for junk in (b"", b"junk", b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"):
        with pytest.raises(ValueError, match=r"not an X\.509 certificate"):
            read_certificate(junk)


def test_unreadable_file(tmp_path: Path) -> None:
    rep = verify_export(tmp_path / "missing.jsonl")
    assert not rep.ok and rep.problems[0].startswith("cannot read")


# -- the HSM anchor (format 2) and format 1 -------------------------------------------------------


def test_format_1_without_anchor_still_verifies() -> None:
    es = entries()
    es[0]["format"] = FORMAT_1
    del es[0]["anchor"]
    rep = verify_export_bytes(signed([encode_line(e) for e in es]))
    assert rep.ok and rep.anchor is None, rep.problems
    es[0]["anchor"] = None  # format 1 has no such field
    assert "field 'anchor' is not expected here" in only_problem(signed([encode_line(e) for e in es]))


def test_no_anchor_yet_verifies() -> None:
    es = entries()
    es[0]["anchor"] = None
    assert verify_export_bytes(signed([encode_line(e) for e in es])).ok


def _anchored_at(seq: int, head_hash: str) -> dict[str, Any]:
    return {"epoch": 0, "seq": seq, "head_hash": head_hash, "ts": TS,
            "signature": _b64(_sign(chain.checkpoint_message(seq, head_hash, TS)))}  # fmt: skip


def test_export_behind_its_anchor_is_a_rollback() -> None:
    es = entries()
    es[0]["anchor"] = _anchored_at(9, "ab" * 32)
    assert "the HSM anchor is at record 9, the export ends at 3 (the log was rolled back)" in only_problem(
        signed([encode_line(e) for e in es])
    )


def test_anchored_record_rewritten_is_a_rollback() -> None:
    es = entries()
    es[0]["anchor"] = _anchored_at(2, "cd" * 32)
    assert "record 2's hash differs from the anchored one" in only_problem(signed([encode_line(e) for e in es]))


def test_anchored_checkpoint_missing_or_different() -> None:
    es = entries()
    record2 = es[3]["hash"]
    es[0]["anchor"] = _anchored_at(2, record2)  # a record the export holds, but no checkpoint 2
    assert "checkpoint 2 is missing (the HSM anchor holds it" in only_problem(signed([encode_line(e) for e in es]))
    es = entries()
    es[0]["anchor"]["ts"] = "2026-11-26T10:00:01.000000Z"
    es[0]["anchor"]["signature"] = _b64(_sign(chain.checkpoint_message(3, es[1]["head_hash"], es[0]["anchor"]["ts"])))
    assert "checkpoint 3 differs from the anchored one" in only_problem(signed([encode_line(e) for e in es]))


def test_anchor_signature_is_checked() -> None:
    es = entries()
    es[0]["anchor"]["signature"] = _b64(_sign(b"something else"))
    assert "the header's HSM anchor (checkpoint 3): signature invalid" in only_problem(
        signed([encode_line(e) for e in es])
    )


# -- checkpoint files: --after ---------------------------------------------------------------------


def _kept(cp: dict[str, Any], cert: bytes = CERT) -> bytes:
    sig = base64.b64decode(cp["signature"])
    return checkpoint_file(cp["seq"], cp["head_hash"], cp["ts"], sig, hashlib.sha256(cert).hexdigest())


def test_export_extending_the_kept_checkpoint_verifies() -> None:
    es = entries()
    kept = read_checkpoint_file(_kept(es[1]))
    rep = verify_export_bytes(signed(lines()), after=kept)
    assert rep.ok, rep.problems
    # A kept checkpoint at an earlier record (no checkpoint line of its own in this export) is fine too.
    record2 = es[3]["hash"]
    earlier = {
        "seq": 2,
        "head_hash": record2,
        "ts": TS,
        "signature": _b64(_sign(chain.checkpoint_message(2, record2, TS))),
    }
    assert verify_export_bytes(signed(lines()), after=read_checkpoint_file(_kept(earlier))).ok


def test_export_not_extending_the_kept_checkpoint_is_refused() -> None:
    later = _anchored_at(7, "ef" * 32)
    assert (
        "the checkpoint you kept is at record 7, the export ends at 3"
        " (the log was rolled back, or this export is older than it)" in only_problem_after(later)
    )
    other = _anchored_at(2, "ef" * 32)
    assert "record 2's hash differs from the checkpoint you kept" in only_problem_after(other)
    forged = {**entries()[1], "signature": _b64(_sign(b"not the checkpoint"))}
    assert "does not carry a valid signature of the audit key" in only_problem_after(forged)
    other_key = ec.generate_private_key(ec.SECP256R1())
    assert "was signed under another audit certificate" in only_problem_after(entries()[1], _certificate(other_key))


def only_problem_after(cp: dict[str, Any], cert: bytes = CERT) -> str:
    rep = verify_export_bytes(signed(lines()), after=read_checkpoint_file(_kept(cp, cert)))
    assert len(rep.problems) == 1, rep.problems
    return rep.problems[0]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda b: b[:-1], "one line ending in a newline"),
        (lambda b: b + b"\n", "one line ending in a newline"),
        (lambda b: b.replace(b'"seq":3', b'"seq":"3"'), "field 'seq' is not an integer"),
        (lambda b: b.replace(b'"seq":3', b'"seq": 3'), "not written as rsign writes it"),
        (lambda b: b.replace(b"checkpoint/1", b"checkpoint/2"), "field 'format' is 'rsign-audit-checkpoint/2'"),
        (lambda b: b.replace(b'{"format"', b'{"x":1,"format"'), "field 'x' is not expected here"),
        (lambda b: b"\xff" + b, "not UTF-8 text"),
        (lambda b: b"[" + b, "not valid JSON"),
    ],
)
def test_checkpoint_file_is_read_strictly(damage: Callable[[bytes], bytes], expected: str) -> None:
    good = _kept(entries()[1])
    assert read_checkpoint_file(good).seq == 3
    with pytest.raises(ValueError, match=expected):
        read_checkpoint_file(damage(good))


# -- format 3: the audit checkpoint key rotated ------------------------------------------------

NEW_KEY = ec.generate_private_key(ec.SECP256R1())
NEW_CERT = _certificate(NEW_KEY)


def rotated_export(handover: dict[str, Any] | None, cp2_key: ec.EllipticCurvePrivateKey = KEY) -> bytes:
    """Record 1, record 2 (the rotation's announcement, with ``handover`` as its details, or an
    ordinary record), checkpoint 2 by the old key, record 3, checkpoint 3 and the closing
    signature by the new key."""
    recs: list[dict[str, Any]] = []
    prev = chain.GENESIS
    for seq in (1, 2, 3):
        rotation = seq == 2 and handover is not None
        fields: dict[str, Any] = {
            "seq": seq, "ts": TS, "actor": "cli:operator", "agency": "",
            "action": "audit.key_rotate" if rotation else "user.enrol", "result": "success",
            "credential_id": "", "key_version": 0, "digest": "", "reason": "", "request_id": "r", "client": "cli",
            "details": json.dumps(handover, sort_keys=True, separators=(",", ":")) if rotation else "{}",
        }  # fmt: skip
        h = chain.link(prev, chain.content_hash(fields))
        recs.append({"type": "record", **fields, "prev_hash": prev, "hash": h})
        prev = h

    def cp(seq: int, key: ec.EllipticCurvePrivateKey) -> dict[str, Any]:
        head = recs[seq - 1]["hash"]
        sig = key.sign(chain.checkpoint_message(seq, head, TS), ec.ECDSA(hashes.SHA256()))
        return {"type": "checkpoint", "seq": seq, "head_hash": head, "ts": TS, "signature": _b64(sig)}

    header = {
        "type": "header", "format": "rsign-audit-export/3", "exported_at": TS, "exported_by": "local operator",
        "scope": "province", "filter": {}, "head": {"seq": 3, "hash": prev}, "anchor": None,
        "audit_certificate": _b64(NEW_CERT), "issuer_certificates": [],
        "previous_audit_certificates": [{"certificate": _b64(CERT), "issuer_certificates": [], "last_seq": 2}],
        "warning": "",
    }  # fmt: skip
    body = b"".join(encode_line(e) for e in [header, cp(2, cp2_key), cp(3, NEW_KEY), *recs])
    hexd = hashlib.sha256(body).hexdigest()
    sig = NEW_KEY.sign(export_signature_message(hexd, "rsign-audit-export/3"), ec.ECDSA(hashes.SHA256()))
    return body + closing_line(hexd, sig)


HANDOVER = {
    "purpose": "checkpoint",
    "old_certificate_sha256": hashlib.sha256(CERT).hexdigest(),
    "new_certificate_sha256": hashlib.sha256(NEW_CERT).hexdigest(),
}


def test_rotated_export_verifies_under_each_eras_key_whichever_certificate_is_pinned() -> None:
    raw = rotated_export(HANDOVER)
    for pin in (None, CERT, NEW_CERT):
        rep = verify_export_bytes(raw, pinned_certificate=pin)
        assert rep.ok, rep.problems
    assert rep.previous_certificates_sha256 == [hashlib.sha256(CERT).hexdigest()]
    assert rep.last_checkpoint_certificate_sha256 == hashlib.sha256(NEW_CERT).hexdigest()


def test_rotated_export_problems() -> None:
    # A checkpoint of the old era signed by the new key: not the old key's.
    assert verify_export_bytes(rotated_export(HANDOVER, cp2_key=NEW_KEY)).problems == [
        "checkpoint 2: signature invalid"
    ]
    # No hand-over record: fine unless the auditor trusts the old certificate only.
    assert verify_export_bytes(rotated_export(None)).ok
    (problem,) = verify_export_bytes(rotated_export(None), pinned_certificate=CERT).problems
    assert "did not hand over to the next one" in problem
    # A hand-over naming another certificate than the export's current one.
    forged = {**HANDOVER, "new_certificate_sha256": "0" * 64}
    (problem,) = verify_export_bytes(rotated_export(forged)).problems
    assert "did not hand over to the next one" in problem
