"""The HSM keys that protect the audit log: a MAC key (integrity of every append) and an
ECDSA P-256 key (signed checkpoints and exports), both generated in the HSM and recorded by
CKA_ID in the database, so every replica and CLI process uses the same keys."""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from rsign.dev.devca import DevCA
from rsign.domain.algorithms import HashAlg, KeyAlgorithm, Scheme, sign_spec
from rsign.domain.clock import Clock
from rsign.domain.errors import AlreadyExists, HsmUnavailable
from rsign.domain.records import AuditKeyView
from rsign.hsm.ports import Hsm, ItemFailure
from rsign.store import Store

_CHECKPOINT_SPEC = sign_spec(KeyAlgorithm.EC_P256, HashAlg.SHA256, Scheme.ECDSA)


@dataclass
class AuditKeys:
    hsm: Hsm
    mac_key: AuditKeyView
    signing_key: AuditKeyView

    @classmethod
    def ensure(cls, store: Store, hsm: Hsm, ca: DevCA, clock: Clock) -> AuditKeys:
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
                        cert = ca.issue_audit(spki)
                        t.add_audit_key("checkpoint", cka, cert, [ca.certificate_der], clock.now())
                        sig = t.audit_key("checkpoint")
                assert mac is not None and sig is not None
                return cls(hsm, mac, sig)
            except AlreadyExists:
                continue  # another process created them first: read them
        raise HsmUnavailable("could not set up the audit keys")

    def mac(self, message: bytes) -> str:
        return self.hsm.mac(self.mac_key.cka_id, [message])[0].hex()

    def macs(self, messages: Sequence[bytes]) -> list[str]:
        return [m.hex() for m in self.hsm.mac(self.mac_key.cka_id, messages)]

    def sign(self, message: bytes) -> bytes:
        """DER ECDSA P-256 / SHA-256 over ``message`` with the audit key."""
        (result,) = self.hsm.sign(self.signing_key.cka_id, _CHECKPOINT_SPEC, [hashlib.sha256(message).digest()])
        if isinstance(result, ItemFailure):
            raise HsmUnavailable(f"the HSM could not sign the audit checkpoint: {result.reason}")
        return result

    @property
    def certificates(self) -> list[bytes]:
        """The audit certificate, then its issuers (DER)."""
        return [self.signing_key.certificate, *self.signing_key.chain]
