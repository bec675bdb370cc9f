"""The audit anchor: the latest signed checkpoint, kept in the HSM where a database administrator
cannot write (a private token data object, ``CKA_VALUE`` = ``Anchor.encode()``).

Shared by the HSM adapter, which orders anchors to keep only the highest, and the audit service,
which checks the database against it. ``epoch`` counts accepted rollbacks (``rsign audit
accept-rollback``): a reset anchor gets a higher epoch, so anchors are ordered by (epoch, seq) and
that order never goes backwards, even across a reset.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from typing import Any

FORMAT = "rsign-audit-anchor/1"
_FIELDS = ("format", "epoch", "seq", "head_hash", "ts", "signature")
_HEX64 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Anchor:
    epoch: int
    seq: int
    head_hash: str
    ts: str
    signature: bytes  # the audit key's DER ECDSA over rsign.audit.chain.checkpoint_message

    @property
    def order(self) -> tuple[int, int]:
        return (self.epoch, self.seq)

    def encode(self) -> bytes:
        """Compact JSON, fields in a fixed order: about 250 bytes, readable with pkcs11-tool."""
        obj = {
            "format": FORMAT,
            "epoch": self.epoch,
            "seq": self.seq,
            "head_hash": self.head_hash,
            "ts": self.ts,
            "signature": base64.b64encode(self.signature).decode("ascii"),
        }
        return json.dumps(obj, separators=(",", ":")).encode("ascii")

    @classmethod
    def decode(cls, raw: bytes) -> Anchor:
        """Strict: exactly what ``encode`` writes; ValueError (one line) otherwise."""
        try:
            obj: Any = json.loads(raw.decode("ascii"))
        except (UnicodeDecodeError, ValueError):
            raise ValueError("the HSM anchor is not JSON text") from None
        if type(obj) is not dict or tuple(obj) != _FIELDS or obj["format"] != FORMAT:
            raise ValueError(f"the HSM anchor is not in format {FORMAT} (written by another rsign version?)")
        epoch, seq, head, ts, sig = obj["epoch"], obj["seq"], obj["head_hash"], obj["ts"], obj["signature"]
        if type(epoch) is not int or type(seq) is not int or epoch < 0 or seq < 1:
            raise ValueError("the HSM anchor's epoch or sequence number is not a valid integer")
        if type(head) is not str or not _HEX64.fullmatch(head) or type(ts) is not str or type(sig) is not str:
            raise ValueError("the HSM anchor's head hash, time or signature is malformed")
        try:
            signature = base64.b64decode(sig, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("the HSM anchor's signature is not base64") from None
        anchor = cls(epoch, seq, head, ts, signature)
        if anchor.encode() != raw:
            raise ValueError("the HSM anchor is not written as rsign writes it")
        return anchor

    def with_epoch(self, epoch: int) -> Anchor:
        return Anchor(epoch, self.seq, self.head_hash, self.ts, self.signature)

    def summary(self) -> dict[str, Any]:
        """What an audit record says about an anchor (the signature is in the checkpoints table)."""
        return {"epoch": self.epoch, "seq": self.seq, "head_hash": self.head_hash, "ts": self.ts}
