"""Key and certificate lifecycle: generate in the HSM, CSR signed in the HSM, import a CA-issued
chain, rotate, disable/enable, revoke, destroy under dual control, expiry report; and the audit
checkpoint key's certification (CSR and import), which follows the same rules. CSRs, imports and
their trust-anchor validation are ``rsign.keys.certificates``'s.

Certificates come from the certificate issuer (``rsign.domain.certificates``): the development CA
with the embedded token, none with a real HSM, where a key waits for an imported certificate and
cannot sign until it has one."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography import x509

from rsign.audit.journal import AuditedStore
from rsign.domain import context
from rsign.domain.algorithms import KeyAlgorithm
from rsign.domain.certificates import CertificateIssuer, IssuedCertificate
from rsign.domain.clock import Clock
from rsign.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    PermissionDenied,
)
from rsign.domain.events import Action, Result, event
from rsign.domain.principal import CredentialKind, CredentialStatus, UserStatus
from rsign.domain.records import CredentialView, KeyVersionView
from rsign.domain.settings import Settings
from rsign.hsm.ports import Hsm
from rsign.keys.certificates import Certificates
from rsign.store import Tx

# Decree 68/2024: a certificate is revoked on job change, retirement, or at the agency's request.
REVOCATION_REASONS = ("job change", "retirement", "agency request", "key compromise", "other")


@dataclass(frozen=True)
class KeyRequest:
    credential_id: str
    algorithm: str
    holder_user_id: str = ""
    multisign: int | None = None
    seal_agency: str = ""
    seal_users: tuple[str, ...] = ()


def _issued(issued: IssuedCertificate | None) -> tuple[bytes, list[bytes], float]:
    """(certificate, chain, not_after); empty and 0 when nothing was issued (import pending)."""
    if issued is None:
        return b"", [], 0.0
    not_after = x509.load_der_x509_certificate(issued.certificate).not_valid_after_utc.timestamp()
    return issued.certificate, list(issued.chain), not_after


class DestroyRefused(PermissionDenied):
    """The same key officer approved a destruction twice. Its key.destroy failure record is written
    in the transaction that read the approvals, so callers that audit refusals skip it."""

    audited = True


class KeyService:
    def __init__(
        self, store: AuditedStore, hsm: Hsm, clock: Clock, settings: Settings, issuer: CertificateIssuer
    ) -> None:
        self._store = store
        self._hsm = hsm
        self._clock = clock
        self._settings = settings
        self._issuer = issuer
        self._certificates = Certificates(store, hsm, clock, settings, issuer)

    # -- lookups -----------------------------------------------------------------------------

    def get(self, credential_id: str) -> CredentialView:
        with self._store.read() as t:
            cred = t.get_credential(credential_id)
        if cred is None:
            raise NotFound(f"no credential {credential_id!r}")
        return cred

    def history(self, credential_id: str) -> list[KeyVersionView]:
        self.get(credential_id)
        with self._store.read() as t:
            return t.key_versions(credential_id)

    # -- generate ----------------------------------------------------------------------------

    def generate(
        self,
        credential_id: str,
        algorithm: str,
        holder_user_id: str = "",
        multisign: int | None = None,
        *,
        seal_agency: str = "",
        seal_users: Sequence[str] = (),
    ) -> CredentialView:
        """A person's credential (``holder_user_id``) or an organisation seal (``seal_agency`` and
        the users allowed to activate it)."""
        req = KeyRequest(credential_id, algorithm, holder_user_id, multisign, seal_agency, tuple(seal_users))
        return self.generate_many([req])[0]

    def generate_many(self, reqs: Sequence[KeyRequest]) -> list[CredentialView]:
        """Generate several credentials: one HSM job and one audited transaction for all of them
        (bulk provisioning: on SoftHSMv2 each object created by one process makes the others
        rescan the token, so fewer, larger steps keep 25,000 keys from costing O(n^2))."""
        prepared: list[tuple[KeyRequest, KeyAlgorithm, int, str, str, str]] = []
        with self._store.read() as t:
            for r in reqs:
                prepared.append((r, *self._validate(t, r)))
        items = [(alg, secrets.token_bytes(16), f"{r.credential_id.strip()}/v1") for r, alg, *_ in prepared]
        # If the database insert below fails, the HSM keeps orphan keys that no credential names:
        # they can never be used to sign, which is preferable to a credential without a key.
        spkis = self._hsm.generate_keypairs(items) if len(items) > 1 else [self._hsm.generate_keypair(*items[0])]
        certs = [
            _issued(self._issuer.issue(spki, name, uid or r.credential_id.strip(), agency))
            for (r, _alg, _ms, name, agency, uid), spki in zip(prepared, spkis, strict=True)
        ]
        actor = context.current().actor or "cli"
        with self._store.tx() as t:
            events = []
            for (r, alg, ms, _name, agency, uid), (_a, cka_id, _l), (cert, chain, not_after) in zip(
                prepared, items, certs, strict=True
            ):
                cid = r.credential_id.strip()
                kind = CredentialKind.SEAL if r.seal_agency else CredentialKind.PERSON
                t.add_credential(
                    cid,
                    uid,
                    agency,
                    alg.value,
                    ms,
                    cka_id,
                    cert,
                    chain,
                    self._clock.now(),
                    kind=kind,
                    not_after=not_after,
                )
                if kind == CredentialKind.SEAL:
                    t.set_seal_users(cid, list(r.seal_users))
                events.append(
                    event(
                        Action.KEY_GENERATE,
                        actor=actor,
                        agency=agency,
                        credential_id=cid,
                        key_version=1,
                        details={
                            "algorithm": alg.value,
                            "holder": uid,
                            "seal_users": list(r.seal_users),
                            "kind": kind,
                            "cka_id": cka_id.hex(),
                            "certificate": "issued" if cert else "none until one is imported",
                        },
                    )
                )
            t.append(*events)
            views = [t.get_credential(r.credential_id.strip()) for r, *_ in prepared]
        return [v for v in views if v is not None]

    def _validate(self, t: Tx, r: KeyRequest) -> tuple[KeyAlgorithm, int, str, str, str]:
        """(algorithm, multisign, subject name, agency, holder id) or a clear refusal."""
        alg = KeyAlgorithm.parse(r.algorithm)
        cid = r.credential_id.strip()
        if not cid or len(cid) > 128:
            raise InvalidRequest("a credential id is required (at most 128 characters)")
        ms = r.multisign or self._settings.multisign_default
        if not 1 <= ms <= self._settings.multisign_max:
            raise InvalidRequest(f"multisign must be between 1 and {self._settings.multisign_max}")
        seal = bool(r.seal_agency)
        if seal == bool(r.holder_user_id):
            raise InvalidRequest("name either a holder (personal credential) or an agency (organisation seal)")
        if t.get_credential(cid) is not None:
            raise AlreadyExists(f"credential {cid} already exists")
        if seal:
            for u in r.seal_users:
                su = t.get_user(u)
                if su is None:
                    raise NotFound(f"no user {u}")
                if su.agency != r.seal_agency:
                    raise InvalidRequest(f"user {u} is not in {r.seal_agency}; a seal's users must be")
            return alg, ms, r.seal_agency, r.seal_agency, ""
        holder = t.get_user(r.holder_user_id)
        if holder is None:
            raise NotFound(f"no user {r.holder_user_id}")
        if holder.status != UserStatus.ACTIVE:
            raise FailedPrecondition(f"user {r.holder_user_id} is {holder.status}")
        return alg, ms, holder.name, holder.agency, holder.user_id

    def set_seal_users(self, credential_id: str, users: Sequence[str]) -> None:
        cred = self.get(credential_id)
        if cred.kind != CredentialKind.SEAL:
            raise InvalidRequest(f"{credential_id} is a personal credential, not an organisation seal")
        with self._store.tx() as t:
            for u in users:
                su = t.get_user(u)
                if su is None or su.agency != cred.agency:
                    raise InvalidRequest(f"user {u} is not in {cred.agency}")
            t.set_seal_users(credential_id, list(users))
            t.append(
                event(
                    Action.KEY_SEAL_USERS,
                    agency=cred.agency,
                    credential_id=credential_id,
                    details={"users": list(users)},
                )
            )

    # -- CSR and certificate import (rsign.keys.certificates) --------------------------------

    def csr(self, credential_id: str) -> bytes:
        """PEM PKCS#10 request for the current key version, signed inside the HSM."""
        return self._certificates.csr(self.get(credential_id))

    def import_certificate(self, credential_id: str, chain_data: bytes) -> CredentialView:
        """Install a CA-issued certificate (leaf first, then intermediates) for the current key
        version. Refused unless it certifies this very key and chains to a trust anchor."""
        return self._certificates.import_certificate(self.get(credential_id), chain_data)

    def checkpoint_csr(self) -> bytes:
        """PEM PKCS#10 request for the audit checkpoint key, signed inside the HSM."""
        return self._certificates.checkpoint_csr()

    def import_checkpoint_certificate(self, chain_data: bytes) -> x509.Certificate:
        """Install the audit checkpoint key's certificate, under the credentials' rules."""
        return self._certificates.import_checkpoint_certificate(chain_data)

    # -- rotation and status -----------------------------------------------------------------

    def rotate(self, credential_id: str, algorithm: str | None = None) -> CredentialView:
        """New key version inside the HSM (with the embedded token, a development certificate until
        a CA-issued one is imported; with a real HSM, none: it cannot sign until one is imported);
        the previous version stops signing, its certificate stays for verification."""
        cred = self.get(credential_id)
        if cred.status != CredentialStatus.ACTIVE:
            raise FailedPrecondition(f"credential {credential_id} is {cred.status}; only an active one rotates")
        alg = KeyAlgorithm.parse(algorithm) if algorithm else KeyAlgorithm(cred.key_algorithm)
        if alg.value != cred.key_algorithm:
            raise InvalidRequest("rotation keeps the key algorithm; issue a new credential to change it")
        version = cred.key_version + 1
        cka_id = secrets.token_bytes(16)
        spki = self._hsm.generate_keypair(alg, cka_id, f"{credential_id}/v{version}")
        with self._store.read() as t:
            holder = t.get_user(cred.holder_user_id) if cred.holder_user_id else None
        cert, chain, not_after = _issued(
            self._issuer.issue(
                spki, holder.name if holder else cred.agency, holder.user_id if holder else credential_id, cred.agency
            )
        )
        with self._store.tx() as t:
            t.add_key_version(credential_id, version, cka_id, cert, chain, not_after, self._clock.now())
            t.append(
                event(
                    Action.KEY_ROTATE,
                    agency=cred.agency,
                    credential_id=credential_id,
                    key_version=version,
                    details={"previous_version": cred.key_version, "cka_id": cka_id.hex()},
                )
            )
            view = t.get_credential(credential_id)
        assert view is not None
        return view

    def set_enabled(self, credential_id: str, enabled: bool, reason: str = "") -> CredentialView:
        cred = self.get(credential_id)
        active, disabled = CredentialStatus.ACTIVE, CredentialStatus.DISABLED
        target, source = (active, (disabled,)) if enabled else (disabled, (active,))
        with self._store.tx() as t:
            if not t.set_credential_status(credential_id, target, reason, source):
                raise FailedPrecondition(f"credential {credential_id} is {cred.status}; cannot make it {target}")
            t.append(
                event(
                    Action.KEY_ENABLE if enabled else Action.KEY_DISABLE,
                    agency=cred.agency,
                    credential_id=credential_id,
                    key_version=cred.key_version,
                    reason=reason,
                )
            )
        return self.get(credential_id)

    def revoke(self, credential_id: str, reason: str) -> CredentialView:
        if reason not in REVOCATION_REASONS:
            raise InvalidRequest(f"reason must be one of: {', '.join(REVOCATION_REASONS)}")
        cred = self.get(credential_id)
        with self._store.tx() as t:
            if not t.set_credential_status(
                credential_id, CredentialStatus.REVOKED, reason, (CredentialStatus.ACTIVE, CredentialStatus.DISABLED)
            ):
                raise FailedPrecondition(f"credential {credential_id} is {cred.status}")
            t.append(
                event(
                    Action.KEY_REVOKE,
                    agency=cred.agency,
                    credential_id=credential_id,
                    key_version=cred.key_version,
                    reason=reason,
                )
            )
        return self.get(credential_id)

    def destroy(self, credential_id: str, officer: str) -> str:
        """Dual control: the first key officer's call records a request; a second, different
        officer's call destroys every key version in the HSM. Returns "requested" or "destroyed"."""
        cred = self.get(credential_id)
        if cred.status != CredentialStatus.REVOKED:
            raise FailedPrecondition(f"credential {credential_id} is {cred.status}; revoke it before destroying")
        with self._store.tx() as t:
            approvals = t.destroy_approvals(credential_id)
            if officer in approvals:
                t.append(
                    event(
                        Action.KEY_DESTROY,
                        Result.FAILURE,
                        agency=cred.agency,
                        credential_id=credential_id,
                        reason="the same officer approved twice",
                    )
                )
                refused = True
            else:
                refused = False
                t.add_destroy_approval(credential_id, officer, self._clock.now())
                if not approvals:
                    t.append(
                        event(
                            Action.KEY_DESTROY_REQUEST,
                            agency=cred.agency,
                            credential_id=credential_id,
                            details={"first_officer": officer},
                        )
                    )
                    return "requested"
        if refused:
            raise DestroyRefused("destroying keys needs a second, different key officer to approve")
        with self._store.read() as t:
            versions = t.key_versions(credential_id)
        destroyed = sum(self._hsm.destroy_keypair(v.cka_id) for v in versions)
        with self._store.tx() as t:
            t.set_credential_status(
                credential_id, CredentialStatus.DESTROYED, cred.status_reason, (CredentialStatus.REVOKED,)
            )
            t.mark_keys_destroyed(credential_id)
            t.append(
                event(
                    Action.KEY_DESTROY,
                    agency=cred.agency,
                    credential_id=credential_id,
                    details={
                        "approved_by": [*approvals, officer],
                        "objects_destroyed": destroyed,
                        "versions": [v.version for v in versions],
                    },
                )
            )
        return "destroyed"

    def expiring(self, days: int, agency: str = "") -> list[CredentialView]:
        """Active credentials whose current certificate expires within ``days`` days."""
        horizon = self._clock.now() + days * 86400
        with self._store.read() as t:
            found = t.search_credentials(agency=agency, status=CredentialStatus.ACTIVE, expires_before=horizon)
        return sorted(found, key=lambda c: c.not_after)
