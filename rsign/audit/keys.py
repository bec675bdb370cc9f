"""The HSM keys that protect the audit log: a MAC key (integrity of every append) and an
ECDSA P-256 key (signed checkpoints and exports), both generated in the HSM and recorded by
CKA_ID in the database, so every replica and CLI process uses the same keys.

Both rotate (``rsign keys rotate-internal audit-mac|audit-checkpoint``): the key rotated out is
kept as an era (``AuditKeyEra``) with the last record (MAC key) or checkpoint (checkpoint key) it
covered, so older records, checkpoints and exports still verify; ``mac_key_for`` and
``signing_key_for`` name the key that covered a sequence number.

The checkpoint key's certificate comes from the certificate issuer: with the embedded development
token the development CA issues it at once; with a real HSM it has none until a key officer imports
one (``rsign audit csr``, the CA, ``rsign audit import-certificate``), and until then checkpoints
and exports are refused (the MAC protects every append meanwhile)."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass, field

from rsign.domain.algorithms import HashAlg, KeyAlgorithm, Scheme, sign_spec
from rsign.domain.certificates import CertificateIssuer
from rsign.domain.clock import Clock
from rsign.domain.errors import AlreadyExists, FailedPrecondition, HsmUnavailable
from rsign.domain.records import AuditKeyEra, AuditKeyView
from rsign.hsm.ports import Hsm, ItemFailure
from rsign.store import Store

_CHECKPOINT_SPEC = sign_spec(KeyAlgorithm.EC_P256, HashAlg.SHA256, Scheme.ECDSA)
UNCERTIFIED = (
    "the audit checkpoint key has no certificate yet: run `rsign audit csr`, have your CA certify it,"
    " then `rsign audit import-certificate CHAIN.pem` (see hsm_config/README.md)"
)


@dataclass
class AuditKeys:
    hsm: Hsm
    mac_key: AuditKeyView
    signing_key: AuditKeyView
    store: Store
    mac_eras: list[AuditKeyEra] = field(default_factory=list)
    signing_eras: list[AuditKeyEra] = field(default_factory=list)

    @classmethod
    def ensure(cls, store: Store, hsm: Hsm, issuer: CertificateIssuer, clock: Clock) -> AuditKeys:
        """Load the audit keys, generating them on first use (serialised by the database)."""
        for _ in range(3):
            try:
                with store.tx() as t:
                    mac = t.audit_key("mac")
                    if mac is None:
                        cka = secrets.token_bytes(16)
                        hsm.generate_mac_key(cka, "rsign-audit-mac")
                        t.add_audit_key("mac", cka, b"", [], clock.now())
                        mac = t.audit_key("mac")
                    sig = t.audit_key("checkpoint")
                    if sig is None:
                        cka = secrets.token_bytes(16)
                        spki = hsm.generate_keypair(KeyAlgorithm.EC_P256, cka, "rsign-audit-checkpoint")
                        issued = issuer.issue_audit(spki)
                        cert, chain = (issued.certificate, issued.chain) if issued else (b"", ())
                        t.add_audit_key("checkpoint", cka, cert, chain, clock.now())
                        sig = t.audit_key("checkpoint")
                assert mac is not None and sig is not None
                keys = cls(hsm, mac, sig, store)
                keys.reload()
                return keys
            except AlreadyExists:
                continue  # another process created them first: read them
        raise HsmUnavailable("could not set up the audit keys")

    def mac(self, message: bytes) -> str:
        return self.hsm.mac(self.mac_key.cka_id, [message])[0].hex()

    def macs(self, messages: Sequence[bytes], key: AuditKeyView | None = None) -> list[str]:
        return [m.hex() for m in self.hsm.mac((key or self.mac_key).cka_id, messages)]

    def sign(self, message: bytes, key: AuditKeyView | None = None) -> bytes:
        """DER ECDSA P-256 / SHA-256 over ``message`` with the audit key (or ``key``)."""
        cka = (key or self.signing_key).cka_id
        (result,) = self.hsm.sign(cka, _CHECKPOINT_SPEC, [hashlib.sha256(message).digest()])
        if isinstance(result, ItemFailure):
            raise HsmUnavailable(f"the HSM could not sign the audit checkpoint: {result.reason}")
        return result

    def reload(self) -> None:
        """Re-read the key records: the checkpoint key's certificate may have been imported (or
        renewed, same key), or a key rotated, by another process since this one started."""
        with self.store.read() as t:
            sig = t.audit_key("checkpoint")
            mac = t.audit_key("mac")
            self.mac_eras = t.audit_key_eras("mac")
            self.signing_eras = t.audit_key_eras("checkpoint")
        if sig is not None:
            self.signing_key = sig
        if mac is not None:
            self.mac_key = mac

    @staticmethod
    def _for(seq: int, eras: list[AuditKeyEra], current: AuditKeyView) -> AuditKeyView:
        for era in eras:
            if seq <= era.last_seq:
                return era.key
        return current

    def mac_key_for(self, seq: int) -> AuditKeyView:
        """The MAC key that covered record ``seq`` (as of the last ``reload``)."""
        return self._for(seq, self.mac_eras, self.mac_key)

    def signing_key_for(self, seq: int) -> AuditKeyView:
        """The checkpoint key that signed checkpoint ``seq`` (as of the last ``reload``)."""
        return self._for(seq, self.signing_eras, self.signing_key)

    def require_certificate(self) -> None:
        """Refuse (FAILED_PRECONDITION) while the checkpoint key has no certificate: a checkpoint
        or export nobody can tie to a certified key proves nothing to an auditor."""
        self.reload()
        if not self.signing_key.certificate:
            raise FailedPrecondition(UNCERTIFIED)

    @property
    def certificates(self) -> list[bytes]:
        """The audit certificate, then its issuers (DER); empty while it has none."""
        if not self.signing_key.certificate:
            return []
        return [self.signing_key.certificate, *self.signing_key.chain]
