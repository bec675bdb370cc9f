"""Rotating the audit log's own HSM keys (``rsign keys rotate-internal audit-mac|audit-checkpoint``).

The key rotated out is kept, as an era (``rsign.audit.keys``), with what it covered, so that older
records, checkpoints and exports verify as before:

* **MAC key**: one transaction on the locked chain head checks the last record's MAC with the old
  key, appends the ``audit.key_rotate`` record MAC'd with the new one, and moves the old key to
  the eras (it covered every record before that one). Processes still holding the old key find
  the new one on their next append (``AuditedStore.append``).
* **Checkpoint key**: the new key pair is made and certified first; an ``audit.key_rotate`` record
  naming both certificates is appended, and the OLD key signs a checkpoint over it: the old key
  itself hands over to the new one, which is what lets a verifier who pinned the old certificate
  trust the new. Then, in one transaction with the key row locked (a checkpoint still being signed
  with the old key is serialised on it), the old key's era ends at the last checkpoint it signed,
  the new key becomes current, and a second ``audit.key_rotate`` record says so. Exports name
  every era's certificate and range (format 3: ``rsign.audit.offline``).
"""

from __future__ import annotations

import hashlib
import secrets
from dataclasses import dataclass

from rsign.audit.checkpoints import Checkpoints
from rsign.audit.journal import AuditedStore
from rsign.audit.keys import AuditKeys
from rsign.domain.algorithms import KeyAlgorithm
from rsign.domain.certificates import CertificateIssuer
from rsign.domain.clock import Clock
from rsign.domain.errors import AuditIntegrityError, FailedPrecondition
from rsign.domain.events import Action, event
from rsign.domain.records import AuditKeyView


@dataclass(frozen=True)
class RotatedKey:
    purpose: str
    old_key: str  # CKA_ID, hex
    new_key: str
    record_seq: int  # the audit.key_rotate record that made the new key current
    old_last_seq: int  # the old key covered the records (MAC) or checkpoints up to this one
    new_certificate_sha256: str = ""


def _sha256(der: bytes) -> str:
    return hashlib.sha256(der).hexdigest()


class AuditKeyRotation:
    def __init__(
        self,
        store: AuditedStore,
        keys: AuditKeys,
        checkpoints: Checkpoints,
        issuer: CertificateIssuer,
        clock: Clock,
    ) -> None:
        self._store = store
        self._keys = keys
        self._checkpoints = checkpoints
        self._issuer = issuer
        self._clock = clock

    def rotate_mac(self) -> RotatedKey:
        self._keys.reload()
        old = self._keys.mac_key
        cka = secrets.token_bytes(16)
        # Made before the transaction: if that fails, an unused key stays on the token (harmless:
        # nothing refers to it), which beats holding the chain head during an HSM key generation.
        self._keys.hsm.generate_mac_key(cka, "rsign-audit-mac")
        new = AuditKeyView("mac", cka, b"", ())
        seq = self._store.rotate_mac_key(
            new,
            event(
                Action.AUDIT_KEY_ROTATE, details={"purpose": "mac", "old_key": old.cka_id.hex(), "new_key": cka.hex()}
            ),
            self._clock.now(),
        )
        return RotatedKey("mac", old.cka_id.hex(), cka.hex(), seq, seq - 1)

    def rotate_checkpoint(self) -> RotatedKey:
        self._keys.require_certificate()  # the old key must be able to sign its handover
        old = self._keys.signing_key
        cka = secrets.token_bytes(16)
        spki = self._keys.hsm.generate_keypair(KeyAlgorithm.EC_P256, cka, "rsign-audit-checkpoint")
        issued = self._issuer.issue_audit(spki)
        if issued is None:
            self._keys.hsm.destroy_keypair(cka)
            raise FailedPrecondition(
                "rotating the audit checkpoint key needs a certificate for the new key at once, which only the"
                " embedded development CA issues; with your own CA this is not supported yet"
            )
        old_sha, new_sha = _sha256(old.certificate), _sha256(issued.certificate)
        details = {"purpose": "checkpoint", "old_key": old.cka_id.hex(), "new_key": cka.hex()}
        with self._store.tx() as t:
            t.append(
                event(
                    Action.AUDIT_KEY_ROTATE,
                    details={**details, "old_certificate_sha256": old_sha, "new_certificate_sha256": new_sha},
                )
            )
        announced = t.last_seq
        self._checkpoints.checkpoint()  # the old key's last checkpoint: it covers the announcement
        with self._store.tx() as t:
            current = t.audit_key("checkpoint", lock=True)
            if current is None or current.cka_id != old.cka_id:
                raise FailedPrecondition("the audit checkpoint key was rotated by another process meanwhile")
            last = t.last_checkpoint()
            if last is None or last.seq < announced:
                raise AuditIntegrityError(
                    f"the old audit key did not sign a checkpoint over record {announced}; nothing rotated"
                )
            t.rotate_audit_key("checkpoint", last.seq, cka, issued.certificate, issued.chain, self._clock.now())
            t.append(event(Action.AUDIT_KEY_ROTATE, details={**details, "old_key_last_checkpoint": last.seq}))
        self._keys.reload()
        return RotatedKey("checkpoint", old.cka_id.hex(), cka.hex(), t.last_seq, last.seq, new_sha)
