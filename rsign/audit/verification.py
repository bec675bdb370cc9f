"""Verification of the stored audit log on its own: the hash chain, the HSM-keyed MACs, the signed
checkpoints and truncation. (Whether the database is behind the HSM anchor is
``rsign.audit.anchoring``'s question.)"""

from __future__ import annotations

import hmac
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rsign.audit import chain
from rsign.audit.journal import AuditedStore
from rsign.audit.keys import AuditKeys
from rsign.domain.anchor import Anchor
from rsign.domain.records import AuditKeyView

_MAC_BATCH = 2000

# What verification and export read of each record: its content, then the chain and MAC columns.
ROW_COLUMNS = (*chain.CONTENT_FIELDS, "prev_hash", "hash", "mac")


@dataclass(frozen=True)
class LogReport:
    ok: bool
    records: int
    head_seq: int
    bad_seq: int | None
    problem: str
    checkpoints: int
    last_checkpoint_seq: int
    head_hash: str = ""
    anchor: Anchor | None = None  # the HSM anchor the database was checked against
    rolled_back: bool = False  # the problem is the HSM anchor's: the database is behind it


class LogVerifier:
    def __init__(self, store: AuditedStore, keys: AuditKeys) -> None:
        self._store = store
        self._keys = keys

    def verify(self, after: int = 0, start_hash: str = chain.GENESIS, contents: bool = True) -> LogReport:
        """The records after ``(after, start_hash)``: chain, MACs (recomputed in the HSM),
        checkpoints (signed, matching the records, none beyond the last record), truncation.

        ``contents=False``: the chain's stored links only, not each record's content against its
        hash (``chain.verify_links``); what is still checked in full is the MACs, the checkpoints and
        the truncation. That is what signing a checkpoint needs (``rsign.audit.checkpoints``);
        ``rsign audit verify`` and exports check contents."""
        with self._store.read() as t:
            head = t.audit_head() or (0, chain.GENESIS)
            cps = t.checkpoints()
            macs: list[tuple[int, str, str]] = []
            cp_hash = {cp.seq: cp.head_hash for cp in cps}
            seen_cp: dict[int, str] = {}

            def rows() -> Iterator[dict[str, Any]]:
                for r in t.audit_rows(ROW_COLUMNS, after):
                    if r["mac"]:
                        macs.append((int(r["seq"]), r["hash"], r["mac"]))
                    if r["seq"] in cp_hash:
                        seen_cp[int(r["seq"])] = r["hash"]
                    yield r

            def links() -> Iterator[tuple[int, str, str]]:
                for seq, prev, h, mac in t.audit_links(after):
                    if mac:
                        macs.append((int(seq), h, mac))
                    if seq in cp_hash:
                        seen_cp[int(seq)] = h
                    yield seq, prev, h

            start = (after, start_hash)
            rep = chain.verify(rows(), start=start) if contents else chain.verify_links(links(), start=start)
        problems: list[tuple[int, str]] = []
        if not rep.ok:
            problems.append((rep.bad_seq or 0, rep.problem))
        # Keyed integrity: recompute the MACs in the HSM, in batches, each under the key that
        # covered it (a rotated-out key covers the records up to its era's end).
        self._keys.reload()
        for i in range(0, len(macs), _MAC_BATCH):
            part = macs[i : i + _MAC_BATCH]
            failed = False
            for key, group in _by_key(part, self._keys.mac_key_for):
                want = self._keys.macs([chain.mac_message(seq, h) for seq, h, _ in group], key)
                for (seq, _, got), w in zip(group, want, strict=True):
                    if not hmac.compare_digest(got, w):
                        problems.append((seq, f"record {seq} fails its MAC (forged, or the chain was recomputed)"))
                        failed = True
                        break
                if failed:
                    break
            if failed:
                break
        truncated = any(cp.seq > rep.head_seq for cp in cps)  # reported below, more precisely
        if rep.ok and not truncated and rep.head_seq > after and (not macs or macs[-1][0] != rep.head_seq):
            problems.append(
                (
                    rep.head_seq,
                    f"record {rep.head_seq} ends the log without a MAC (records were removed after it,"
                    " or it was forged)",
                )
            )
        if rep.ok and (rep.head_seq, rep.head_hash) != head:
            problems.append((rep.head_seq, f"the records end at {rep.head_seq}, the log head says {head[0]}"))
        # Checkpoints: signed, consistent with the records, and none beyond the last record.
        # (Read only when there are some: with a real HSM the key may have no certificate yet.)
        self._keys.reload()  # another process may have imported a certificate, or rotated a key
        public_keys: dict[bytes, Any] = {}
        for cp in cps:
            key = self._keys.signing_key_for(cp.seq)
            if key.cka_id not in public_keys:
                public_keys[key.cka_id] = _public_key(key)
            cert = public_keys[key.cka_id]
            if cert is None:
                problems.append(
                    (cp.seq, f"checkpoint {cp.seq}: the audit checkpoint key has no certificate to check it")
                )
            elif not ecdsa_ok(cert, cp.signature, chain.checkpoint_message(cp.seq, cp.head_hash, cp.ts)):
                problems.append((cp.seq, f"checkpoint {cp.seq}: signature invalid"))
            elif cp.seq > rep.head_seq and rep.ok:
                problems.append(
                    (
                        rep.head_seq + 1,
                        f"records {rep.head_seq + 1}..{cp.seq} are missing: checkpoint"
                        f" {cp.seq} was signed over them (the log was truncated)",
                    )
                )
            elif cp.seq in seen_cp and seen_cp[cp.seq] != cp.head_hash:
                problems.append(
                    (
                        cp.seq,
                        f"checkpoint {cp.seq} does not match the log: the records up to {cp.seq}"
                        " differ from what was signed",
                    )
                )
        problems.sort(key=lambda p: p[0])
        bad_seq, problem = problems[0] if problems else (None, "")
        return LogReport(
            not problems,
            rep.records,
            rep.head_seq,
            bad_seq,
            problem,
            len(cps),
            cps[-1].seq if cps else 0,
            rep.head_hash,
        )

    def checkpoint_public_key(self, seq: int | None = None) -> Any:
        """The public key of the audit checkpoint key that signed checkpoint ``seq`` (None: the
        current key), from its certificate re-read from the database (another process may have
        imported it, or rotated the key); None while it has none."""
        self._keys.reload()
        return _public_key(self._keys.signing_key if seq is None else self._keys.signing_key_for(seq))


def _public_key(key: AuditKeyView) -> Any:
    from cryptography import x509

    # Checkpoints are only signed once the key is certified: none here means the record was altered.
    return x509.load_der_x509_certificate(key.certificate).public_key() if key.certificate else None


def _by_key(
    items: list[tuple[int, str, str]], key_for: Callable[[int], AuditKeyView]
) -> Iterator[tuple[AuditKeyView, list[tuple[int, str, str]]]]:
    """Consecutive runs of ``(seq, hash, mac)`` that one key covered (eras are ranges of seq)."""
    run: list[tuple[int, str, str]] = []
    key: AuditKeyView | None = None
    for item in items:
        k = key_for(item[0])
        if key is not None and k.cka_id != key.cka_id:
            yield key, run
            run = []
        key = k
        run.append(item)
    if key is not None:
        yield key, run


def ecdsa_ok(public_key: Any, signature: bytes, message: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        public_key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except (InvalidSignature, ValueError):
        return False
    return True
