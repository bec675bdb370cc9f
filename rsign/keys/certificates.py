"""Certification of keys held in the HSM: CSRs signed inside the HSM, and the import of a CA-issued
chain, refused unless it certifies that very key, is valid now and chains to a trust anchor. The
same rules hold for a credential's current key version and for the audit checkpoint key.

Trust anchors: the certificate issuer's roots (``rsign.domain.certificates``: the development CA,
with the embedded token only) and the files in ``<state-dir>/trust-anchors/``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC
from pathlib import Path

from asn1crypto import x509 as ax509
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from rsign.audit.journal import AuditedStore
from rsign.domain.algorithms import KeyAlgorithm, SignSpec
from rsign.domain.certificates import CertificateIssuer
from rsign.domain.clock import Clock
from rsign.domain.errors import FailedPrecondition, HsmUnavailable, InvalidRequest
from rsign.domain.events import Action, event
from rsign.domain.principal import CredentialStatus
from rsign.domain.records import CredentialView
from rsign.domain.settings import Settings
from rsign.hsm.ports import Hsm, ItemFailure
from rsign.keys.csr import build_csr, subject_name

AUDIT_SIGNER_NAME = "rsign audit log signer"


def load_certificates(data: bytes) -> list[x509.Certificate]:
    """PEM (one or more) or a single DER certificate."""
    if b"-----BEGIN CERTIFICATE-----" in data:
        return x509.load_pem_x509_certificates(data)
    try:
        return [x509.load_der_x509_certificate(data)]
    except ValueError:
        raise InvalidRequest("not a certificate: expected PEM or DER") from None


class Certificates:
    def __init__(
        self, store: AuditedStore, hsm: Hsm, clock: Clock, settings: Settings, issuer: CertificateIssuer
    ) -> None:
        self._store = store
        self._hsm = hsm
        self._clock = clock
        self._settings = settings
        self._issuer = issuer

    # -- credentials --------------------------------------------------------------------------

    def csr(self, cred: CredentialView) -> bytes:
        """PEM PKCS#10 request for the credential's current key version, signed inside the HSM."""
        if cred.status in (CredentialStatus.REVOKED, CredentialStatus.DESTROYED):
            raise FailedPrecondition(f"credential {cred.credential_id} is {cred.status}")
        alg = KeyAlgorithm(cred.key_algorithm)
        with self._store.read() as t:
            holder = t.get_user(cred.holder_user_id) if cred.holder_user_id else None
        name = holder.name if holder else cred.agency
        subject = subject_name(name, cred.agency, user_id=holder.user_id if holder else "")
        pem = _hsm_csr(self._hsm, cred.cka_id, subject, alg)
        with self._store.tx() as t:
            t.append(
                event(
                    Action.KEY_CSR, agency=cred.agency, credential_id=cred.credential_id, key_version=cred.key_version
                )
            )
        return pem

    def import_certificate(self, cred: CredentialView, chain_data: bytes) -> CredentialView:
        """Install a CA-issued certificate (leaf first, then intermediates) for the credential's
        current key version. Refused unless it certifies this very key and chains to a trust anchor."""
        credential_id = cred.credential_id
        if cred.status in (CredentialStatus.REVOKED, CredentialStatus.DESTROYED):
            raise FailedPrecondition(f"credential {credential_id} is {cred.status}")
        leaf, path = self._validate_chain(
            self._hsm.public_key(cred.cka_id), chain_data, f"{credential_id}'s key (version {cred.key_version})"
        )
        with self._store.tx() as t:
            t.set_certificate(
                credential_id,
                cred.key_version,
                leaf.public_bytes(serialization.Encoding.DER),
                [c.public_bytes(serialization.Encoding.DER) for c in path],
                leaf.not_valid_after_utc.timestamp(),
            )
            t.append(
                event(
                    Action.KEY_IMPORT_CERT,
                    agency=cred.agency,
                    credential_id=credential_id,
                    key_version=cred.key_version,
                    details=_described(leaf),
                )
            )
            view = t.get_credential(credential_id)
        assert view is not None
        return view

    # -- the audit checkpoint key -----------------------------------------------------------

    def checkpoint_csr(self) -> bytes:
        """PEM PKCS#10 request for the audit checkpoint key, signed inside the HSM (with a real
        HSM the key has no certificate until the operator's CA certifies it)."""
        keys = self._store.keys
        subject = subject_name(AUDIT_SIGNER_NAME, "")
        pem = _hsm_csr(keys.hsm, keys.signing_key.cka_id, subject, KeyAlgorithm.EC_P256)
        with self._store.tx() as t:
            t.append(event(Action.KEY_CSR, details={"key": "audit checkpoint"}))
        return pem

    def import_checkpoint_certificate(self, chain_data: bytes) -> x509.Certificate:
        """Install the audit checkpoint key's certificate (leaf first, then intermediates), under
        the credentials' rules: it certifies this very key and chains to a trust anchor. Replacing
        one (renewal) keeps the key, so earlier checkpoints still verify."""
        keys = self._store.keys
        cka = keys.signing_key.cka_id
        leaf, path = self._validate_chain(keys.hsm.public_key(cka), chain_data, "the audit checkpoint key")
        with self._store.tx() as t:
            t.set_audit_key_certificate(
                "checkpoint",
                leaf.public_bytes(serialization.Encoding.DER),
                [c.public_bytes(serialization.Encoding.DER) for c in path],
            )
            t.append(event(Action.KEY_IMPORT_CERT, details={"key": "audit checkpoint", **_described(leaf)}))
        keys.reload()
        return leaf

    # -- validation ---------------------------------------------------------------------------

    def trust_anchors(self) -> list[x509.Certificate]:
        """The issuer's roots (the development CA, with the embedded token only) and
        ``<state-dir>/trust-anchors/``, read on every import so that added files count at once."""
        anchors = self._issuer.trust_anchors()
        folder: Path = self._settings.state_dir / "trust-anchors"
        if folder.is_dir():
            for f in sorted(folder.iterdir()):
                if f.suffix.lower() in (".pem", ".crt", ".cer", ".der"):
                    anchors += load_certificates(f.read_bytes())
        return anchors

    def _validate_chain(
        self, spki: bytes, chain_data: bytes, whose: str
    ) -> tuple[x509.Certificate, list[x509.Certificate]]:
        """(leaf, its issuers up to a trust anchor), or a clear refusal: the leaf must certify
        ``spki``, be valid now and chain to a trust anchor."""
        certs = load_certificates(chain_data)
        leaf = certs[0]
        leaf_spki = leaf.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        if leaf_spki != spki:
            raise InvalidRequest(f"the certificate is not for {whose}")
        now = self._clock.now()
        if not leaf.not_valid_before_utc.timestamp() <= now < leaf.not_valid_after_utc.timestamp():
            raise InvalidRequest("the certificate is not valid now")
        return leaf, self._chain_to_anchor(leaf, certs[1:])

    def _chain_to_anchor(self, leaf: x509.Certificate, given: Sequence[x509.Certificate]) -> list[x509.Certificate]:
        anchors = self.trust_anchors()
        pool = list(given) + anchors
        path: list[x509.Certificate] = []
        current = leaf
        for _ in range(8):
            if any(current == a for a in anchors) and current is not leaf:
                return path
            issuer = next((c for c in pool if c.subject == current.issuer and _issued_by(current, c)), None)
            if issuer is None:
                break
            path.append(issuer)
            if any(issuer == a for a in anchors):
                return path
            current = issuer
        # Name where the chain ended: e.g. a development CA's root offered to a real-HSM deployment.
        top = path[-1] if path else leaf
        raise InvalidRequest(
            "the certificate does not chain to a configured trust anchor"
            f" ({self._settings.state_dir / 'trust-anchors'}): its chain ends at {top.issuer.rfc4514_string()!r}"
        )


def _described(leaf: x509.Certificate) -> dict[str, str]:
    """What the import record says of the certificate."""
    return {
        "subject": leaf.subject.rfc4514_string(),
        "issuer": leaf.issuer.rfc4514_string(),
        "serial": format(leaf.serial_number, "x"),
        "not_after": leaf.not_valid_after_utc.astimezone(UTC).isoformat(),
    }


def _hsm_csr(hsm: Hsm, cka_id: bytes, subject: ax509.Name, alg: KeyAlgorithm) -> bytes:
    """PEM PKCS#10 request for the key ``cka_id``, signed inside the HSM."""

    def hsm_sign(spec: SignSpec, digest: bytes) -> bytes:
        (result,) = hsm.sign(cka_id, spec, [digest])
        if isinstance(result, ItemFailure):
            raise HsmUnavailable(f"the HSM could not sign the CSR: {result.reason}")
        return result

    der = build_csr(hsm.public_key(cka_id), subject, alg, hsm_sign)
    return x509.load_der_x509_csr(der).public_bytes(serialization.Encoding.PEM)


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, Exception):  # InvalidSignature and friends
        return False
    return True
