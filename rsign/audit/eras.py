"""Audit checkpoint key eras in an export (format 3), for the offline verifier: which key signed
which checkpoints, and whether each key rotated out handed over to the next. Pure: the standard
library and ``cryptography`` only, like ``rsign.audit.offline``, which uses it."""

from __future__ import annotations

import hashlib
import itertools
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from cryptography.hazmat.primitives.asymmetric import ec


@dataclass(frozen=True)
class Era:
    """An audit checkpoint key: its certificate (DER), public key and the last checkpoint it signed
    (None: the current key)."""

    cert_der: bytes
    public_key: ec.EllipticCurvePublicKey
    last_seq: int | None

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.cert_der).hexdigest()


def handover_problems(eras: list[Era], records: Mapping[int, Mapping[str, Any]], pinned: int | None) -> list[str]:
    """Each key rotated out named its successor in an ``audit.key_rotate`` record that its own last
    checkpoint covers. Checked for every rotation whose record the export shows in full; required
    from the pinned certificate on (the pin is trusted, the keys after it only through it)."""
    problems = []
    for i, (old, new) in enumerate(itertools.pairwise(eras)):
        assert old.last_seq is not None
        named = [r for seq, r in records.items() if seq <= old.last_seq and _rotation_names(r, old.sha256, new.sha256)]
        if named:
            continue
        shown = [seq for seq, r in records.items() if seq <= old.last_seq and _rotation_of(r, old.sha256)]
        if shown or (pinned is not None and i >= pinned):
            problems.append(
                f"the audit key of checkpoints up to {old.last_seq} (SHA-256 {old.sha256[:16]}...) did not hand"
                f" over to the next one (SHA-256 {new.sha256[:16]}...): no audit.key_rotate record it signed"
                " names it"
            )
    return problems


def _rotation_of(record: Mapping[str, Any], old_sha256: str) -> bool:
    try:
        details = json.loads(record["details"])
    except ValueError:
        return False
    return isinstance(details, dict) and details.get("old_certificate_sha256") == old_sha256


def _rotation_names(record: Mapping[str, Any], old_sha256: str, new_sha256: str) -> bool:
    try:
        details = json.loads(record["details"])
    except ValueError:
        return False
    return (
        isinstance(details, dict)
        and details.get("old_certificate_sha256") == old_sha256
        and details.get("new_certificate_sha256") == new_sha256
    )
