"""Offline verification of an audit export: needs the file and nothing else (no database, no HSM,
no network). Imports only the pure chain functions and ``cryptography``.

Export format (JSON Lines, UTF-8), in this order:

    {"type": "header", "format": "rsign-audit-export/1", "head": {"seq": N, "hash": H},
     "audit_certificate": <base64 DER>, "issuer_certificates": [...], ...}
    {"type": "checkpoint", "seq": S, "head_hash": H, "ts": T, "signature": <base64 DER ECDSA>}   ...
    {"type": "record", <content fields>, "prev_hash": P, "hash": H}                               ...
    {"type": "link", "seq": S, "content_hash": C, "hash": H}      (a record outside the export's filter)
    {"type": "signature", "sha256": <hex of every byte above>, "signature": <base64 DER ECDSA>}
"""

from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from rsign.audit import chain

FORMAT = "rsign-audit-export/1"


def export_signature_message(sha256_hex: str) -> bytes:
    return f"{FORMAT}\n{sha256_hex}\n".encode("ascii")


@dataclass
class ExportReport:
    problems: list[str] = field(default_factory=list)
    records: int = 0
    links: int = 0
    checkpoints: int = 0
    head_seq: int = 0
    certificate_sha256: str = ""

    @property
    def ok(self) -> bool:
        return not self.problems


def _verify_ecdsa(public_key: Any, signature: bytes, message: bytes) -> bool:
    try:
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True


def verify_export(path: Path, pinned_certificate: bytes | None = None) -> ExportReport:
    rep = ExportReport()
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    objs: list[dict[str, Any]] = []
    for i, line in enumerate(lines, 1):
        try:
            obj = json.loads(line)
            if not isinstance(obj, dict) or "type" not in obj:
                raise ValueError
        except ValueError:
            rep.problems.append(f"line {i} is not a valid export entry (the file was altered or truncated)")
            return rep
        objs.append(obj)
    if not objs or objs[0]["type"] != "header" or objs[0].get("format") != FORMAT:
        rep.problems.append(f"not an rsign audit export (expected a {FORMAT} header)")
        return rep
    header = objs[0]
    try:
        cert_der = base64.b64decode(header["audit_certificate"])
        cert = x509.load_der_x509_certificate(cert_der)
        public_key = cert.public_key()
    except (KeyError, ValueError):
        rep.problems.append("the header's audit certificate is missing or unreadable")
        return rep
    rep.certificate_sha256 = hashlib.sha256(cert_der).hexdigest()
    if pinned_certificate is not None and pinned_certificate != cert_der:
        rep.problems.append("the export is signed with a different audit certificate than the one given")

    # 1. The file as a whole: signed by the audit key at export time.
    if objs[-1]["type"] != "signature":
        rep.problems.append("the export's closing signature is missing (the file was truncated)")
    else:
        body = b"".join(line + b"\n" for line in lines[:-1])
        digest = hashlib.sha256(body).hexdigest()
        sig_obj = objs[-1]
        if sig_obj.get("sha256") != digest:
            rep.problems.append("the export's content does not match its signed digest (the file was altered)")
        elif not _verify_ecdsa(
            public_key, base64.b64decode(sig_obj.get("signature", "")), export_signature_message(digest)
        ):
            rep.problems.append("the export's signature is invalid (the file was altered)")

    # 2. Checkpoints: each signed by the audit key, in increasing order.
    cps = [o for o in objs if o["type"] == "checkpoint"]
    rep.checkpoints = len(cps)
    cp_at: dict[int, str] = {}
    prev_cp: dict[str, Any] | None = None
    for cp in cps:
        seq, head, ts = int(cp["seq"]), str(cp["head_hash"]), str(cp["ts"])
        if not _verify_ecdsa(
            public_key, base64.b64decode(cp.get("signature", "")), chain.checkpoint_message(seq, head, ts)
        ):
            rep.problems.append(f"checkpoint {seq}: signature invalid")
        if prev_cp is not None and (seq <= int(prev_cp["seq"]) or ts < str(prev_cp["ts"])):
            rep.problems.append(f"checkpoint {seq}: out of order after checkpoint {prev_cp['seq']} (rollback or fork)")
        cp_at[seq] = head
        prev_cp = cp

    # 3. The chain, from the first record, through records and links.
    prev_seq, prev_hash = 0, chain.GENESIS
    chain_problem = ""
    for o in objs:
        if o["type"] not in ("record", "link"):
            continue
        seq = int(o["seq"])
        if seq != prev_seq + 1:
            chain_problem = (
                f"record {prev_seq + 1} is missing (the next record present is {seq})"
                if seq > prev_seq + 1
                else f"record {seq} appears twice or out of order"
            )
            break
        if o["type"] == "record":
            rep.records += 1
            if o.get("prev_hash") != prev_hash:
                chain_problem = f"record {seq} does not link to record {seq - 1}"
                break
            content = chain.content_hash(o)
        else:
            rep.links += 1
            content = str(o["content_hash"])
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
        prev_seq, prev_hash = seq, h
    rep.head_seq = prev_seq
    if chain_problem:
        rep.problems.append(chain_problem)
        return rep

    # 4. Truncation and coverage.
    want = header.get("head", {})
    if cps and int(cps[-1]["seq"]) > prev_seq:
        rep.problems.append(
            f"records {prev_seq + 1}..{cps[-1]['seq']} are missing: checkpoint {cps[-1]['seq']} was signed over"
            " them (the log was truncated)"
        )
    elif (int(want.get("seq", -1)), str(want.get("hash", ""))) != (prev_seq, prev_hash):
        rep.problems.append("the records do not end at the head the header announces")
    last_cp = int(cps[-1]["seq"]) if cps else 0
    if prev_seq > last_cp:
        rep.problems.append(
            f"records {last_cp + 1}..{prev_seq} are not covered by a signed checkpoint, so their integrity"
            " cannot be proven offline"
            + (f" (the service refused to sign one: {header['warning']})" if header.get("warning") else "")
        )
    return rep
