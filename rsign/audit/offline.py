"""Offline verification of an audit export: needs the file and nothing else (no database, no HSM,
no network). Imports only the pure chain functions, the pure line format
(``rsign.audit.export_format``: schemas, field checks, the one encoding), the pure key eras
(``rsign.audit.eras``: which audit key signed which checkpoints, the hand-overs) and ``cryptography``.

Export format (JSON Lines, UTF-8, every line ending in a newline), in this order:

    {"type": "header", "format": "rsign-audit-export/2", "exported_at": T, "exported_by": U, "scope": S,
     "filter": {...}, "head": {"seq": N, "hash": H},
     "anchor": {"epoch": E, "seq": A, "head_hash": H, "ts": T, "signature": <base64 DER ECDSA>} | null,
     "audit_certificate": <base64 DER>, "issuer_certificates": [<base64 DER>, ...], "warning": W}
    {"type": "checkpoint", "seq": S, "head_hash": H, "ts": T, "signature": <base64 DER ECDSA>}   ...
    {"type": "record", <content fields>, "prev_hash": P, "hash": H}                               ...
    {"type": "link", "seq": S, "content_hash": C, "hash": H}      (a record outside the export's filter)
    {"type": "signature", "sha256": <hex of every byte above>, "signature": <base64 DER ECDSA>}

Format 3 is format 2 once the audit checkpoint key was rotated: the header also carries, before
"warning", ``"previous_audit_certificates": [{"certificate": <base64 DER>, "issuer_certificates":
[...], "last_seq": N}, ...]``, oldest first: each signed the checkpoints up to its ``last_seq`` (after
the previous one's), the current ``audit_certificate`` those after, and the export itself. The
header is covered by the closing signature, so the current key vouches for the list; the old key
vouched for its successor itself, in the ``audit.key_rotate`` record naming the new certificate,
which its own last checkpoint covers (checked when present in full, and required when the pinned
``--audit-cert`` is an earlier one).

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
the bytes rsign writes for its entry (``export_format``: one encoding, keys in order, no unknown
or missing field, canonical base64, fixed-width UTC times, integers in range), so the closing line,
which its own signature cannot cover, has no bits an attacker may change unseen. Any damage is
reported as one line naming the line and field, never as an exception. The price of strictness: a
new field needs a new format version, which older verifiers refuse.
"""

from __future__ import annotations

import base64
import hashlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.utils import CryptographyDeprecationWarning

from rsign.audit import chain
from rsign.audit.eras import Era, handover_problems
from rsign.audit.export_format import (
    CHECKPOINT_FORMAT,
    KEY_ROTATE,
    Malformed,
    encode_line,
    export_signature_message,
    read_checkpoint_line,
    read_lines,
)


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
    previous_certificates_sha256: list[str] = field(default_factory=list)  # keys rotated out (format 3)
    anchor: dict[str, Any] | None = None  # the header's HSM anchor (format 2), when it has one
    last_checkpoint: dict[str, Any] | None = None  # the export's highest checkpoint entry
    last_checkpoint_certificate_sha256: str = ""  # the certificate of the key that signed it

    @property
    def ok(self) -> bool:
        return not self.problems


# -- reading --------------------------------------------------------------------------------


def _certificate(b64: str, what: str) -> x509.Certificate:
    der = base64.b64decode(b64)
    try:
        # The header carries DER only (the PEM branch is for --audit-cert files).
        cert = None if b"-----BEGIN" in der else _load_certificate(der)
    except ValueError:
        cert = None
    if cert is None:
        raise Malformed(f"line 1 (header): the {what} is not a readable X.509 certificate")
    return cert


@dataclass
class _Export:
    header: dict[str, Any]
    cert_der: bytes
    public_key: ec.EllipticCurvePublicKey
    eras: list[Era]  # oldest first, the current key last
    checkpoints: list[dict[str, Any]]
    chain: list[dict[str, Any]]  # records and links, in file order
    closing: dict[str, Any]
    body: bytes  # every byte the closing signature covers


def _p256(cert: x509.Certificate, what: str) -> ec.EllipticCurvePublicKey:
    try:
        public_key = cert.public_key()
    except (ValueError, UnsupportedAlgorithm):
        public_key = None
    if not isinstance(public_key, ec.EllipticCurvePublicKey) or not isinstance(public_key.curve, ec.SECP256R1):
        raise Malformed(f"line 1 (header): the {what} does not hold an ECDSA P-256 key")
    return public_key


def _read(raw: bytes) -> _Export:
    entries, body = read_lines(raw)
    header = entries[0]
    cert = _certificate(header["audit_certificate"], "audit certificate")
    for n, issuer in enumerate(header["issuer_certificates"]):
        _certificate(issuer, f"issuer certificate {n}")
    public_key = _p256(cert, "audit certificate")
    eras: list[Era] = []
    for n, prev in enumerate(header.get("previous_audit_certificates", ())):
        what = f"previous audit certificate {n}"
        prev_key = _p256(_certificate(prev["certificate"], what), what)
        for m, issuer in enumerate(prev["issuer_certificates"]):
            _certificate(issuer, f"issuer certificate {m} of {what}")
        if eras and prev["last_seq"] <= (eras[-1].last_seq or 0):
            raise Malformed(f"line 1 (header): {what} ends at checkpoint {prev['last_seq']}, not after the one before")
        eras.append(Era(base64.b64decode(prev["certificate"]), prev_key, prev["last_seq"]))
    cert_der = base64.b64decode(header["audit_certificate"])
    eras.append(Era(cert_der, public_key, None))
    return _Export(
        header=header,
        cert_der=cert_der,
        public_key=public_key,
        eras=eras,
        checkpoints=[e for e in entries if e["type"] == "checkpoint"],
        chain=[e for e in entries if e["type"] in ("record", "link")],
        closing=entries[-1],
        body=body,
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
    except Malformed as exc:
        rep.problems.append(exc.what)
        return rep
    rep.certificate_sha256 = hashlib.sha256(ex.cert_der).hexdigest()
    rep.previous_certificates_sha256 = [e.sha256 for e in ex.eras[:-1]]
    pinned_era = next((i for i, e in enumerate(ex.eras) if e.cert_der == pinned_certificate), None)
    if pinned_certificate is not None and pinned_era is None:
        rep.problems.append("the export is signed with a different audit certificate than the one given")

    def era_for(seq: int) -> Era:
        return next(e for e in ex.eras if e.last_seq is None or seq <= e.last_seq)

    def key_for(seq: int) -> ec.EllipticCurvePublicKey:
        return era_for(seq).public_key

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
    if rep.last_checkpoint is not None:
        rep.last_checkpoint_certificate_sha256 = era_for(rep.last_checkpoint["seq"]).sha256
    cp_at: dict[int, str] = {}
    prev_cp: dict[str, Any] | None = None
    for cp in ex.checkpoints:
        seq, head, ts = cp["seq"], cp["head_hash"], cp["ts"]
        if not _verify_ecdsa(key_for(seq), base64.b64decode(cp["signature"]), chain.checkpoint_message(seq, head, ts)):
            rep.problems.append(f"checkpoint {seq}: signature invalid")
        if prev_cp is not None and (seq <= prev_cp["seq"] or ts < prev_cp["ts"]):
            rep.problems.append(f"checkpoint {seq}: out of order after checkpoint {prev_cp['seq']} (rollback or fork)")
        cp_at[seq] = head
        prev_cp = cp
    anchor = rep.anchor = ex.header.get("anchor")
    anchor_signed = anchor is not None and _verify_ecdsa(
        key_for(anchor["seq"]),
        base64.b64decode(anchor["signature"]),
        chain.checkpoint_message(anchor["seq"], anchor["head_hash"], anchor["ts"]),
    )
    if anchor is not None and not anchor_signed:
        rep.problems.append(f"the header's HSM anchor (checkpoint {anchor['seq']}): signature invalid")

    # 3. The chain, from the first record, through records and links.
    wanted = {a["seq"] for a in (anchor,) if a is not None} | ({after.seq} if after is not None else set())
    hash_at: dict[int, str] = {}
    handovers: dict[int, dict[str, Any]] = {}  # audit.key_rotate records shown in full, by seq
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
            if o["action"] == KEY_ROTATE:
                handovers[seq] = o
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
    rep.problems.extend(handover_problems(ex.eras, handovers, pinned_era))
    if after is not None:
        era = next((e for e in ex.eras if e.sha256 == after.audit_certificate_sha256), ex.eras[-1])
        problem = after.check_signed(era.public_key, era.sha256) or _rollback(
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
    entry = read_checkpoint_line(raw)
    return KeptCheckpoint(
        entry["seq"],
        entry["head_hash"],
        entry["ts"],
        base64.b64decode(entry["signature"]),
        entry["audit_certificate_sha256"],
    )
