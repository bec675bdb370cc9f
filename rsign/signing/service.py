"""Credentials, signing activation (Authorize -> SAD) and signing (SignHash).

Order of checks in ``sign_hash``: request shape -> credential and ownership -> SAD binding ->
atomic SAD consumption (committed with its audit record and its in-flight row) -> HSM ->
signature audit records committed (the in-flight row deleted) -> signatures returned. The HSM is
called only after the SAD is consumed, and no signature leaves before its audit record is
committed; consumed occurrences whose outcome never got committed are settled by
``rsign.signing.recovery``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import NoReturn

from rsign.audit.journal import AuditedStore
from rsign.auth.service import AuthService, token_hash
from rsign.domain.algorithms import HashAlg, KeyAlgorithm, Scheme, SignSpec, check_digests, sign_spec
from rsign.domain.clock import Clock
from rsign.domain.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidRequest,
    NotFound,
    PermissionDenied,
    RsignError,
    StreamIdle,
    Unavailable,
)
from rsign.domain.events import Action, Result, event
from rsign.domain.policy import check_use_credential
from rsign.domain.principal import CredentialKind, CredentialStatus, Principal
from rsign.domain.records import CredentialView, SadView
from rsign.domain.settings import Settings
from rsign.hsm.ports import Hsm, ItemFailure
from rsign.signing.activation import Activator, ApprovalMethod, Authorization, occurrences
from rsign.signing.batch import BatchRun, StreamChunk
from rsign.signing.recovery import Recovery, StreamEnd, Superseded, caller


@dataclass(frozen=True)
class Signed:
    signatures: list[bytes]
    key_version: int


def hashes_fingerprint(hashes: Sequence[bytes]) -> str:
    """One audit-friendly value for an ordered list of digests."""
    h = hashlib.sha256()
    for d in hashes:
        h.update(d)
    return h.hexdigest()


class SigningService:
    def __init__(self, store: AuditedStore, hsm: Hsm, clock: Clock, settings: Settings, auth: AuthService) -> None:
        self._store = store
        self._hsm = hsm
        self._clock = clock
        self._settings = settings
        self._auth = auth
        # This process as a signing replica: the in-flight ledger and its reconciliation.
        self.recovery = Recovery(store, clock, settings.replica_lease_seconds)
        # Checks and SAD issuing shared by every approval method (TOTP here, passkeys elsewhere).
        self.activation = Activator(store, clock, settings, self._usable, self._refused)

    # -- credentials -------------------------------------------------------------------------

    def list_credentials(self, who: Principal) -> list[CredentialView]:
        with self._store.read() as t:
            return t.list_credentials(who.user_id)

    def get_credential(self, who: Principal, credential_id: str) -> CredentialView:
        try:
            return self._credential(who, credential_id)
        except RsignError as exc:
            self._refused("credential.get", credential_id, "", exc)

    def _credential(self, who: Principal, credential_id: str) -> CredentialView:
        with self._store.read() as t:
            cred = t.get_credential(credential_id)
            # An organisation seal: any of its authorized users activates it, each with their own
            # fresh TOTP; the audit records who.
            seal_users = t.seal_users(credential_id) if cred and cred.kind == CredentialKind.SEAL else []
        if cred is None:
            raise NotFound(f"no credential {credential_id!r}")
        check_use_credential(who, cred, seal_users)
        return cred

    def _usable(self, who: Principal, credential_id: str) -> CredentialView:
        cred = self._credential(who, credential_id)
        if cred.status != CredentialStatus.ACTIVE:
            raise FailedPrecondition(f"credential {credential_id} is {cred.status}")
        if not cred.certificate:
            # With a real HSM a new key (or key version) has no certificate until a key officer
            # imports the CA-issued one; a signature nobody can tie to a certificate is refused.
            raise FailedPrecondition(
                f"credential {credential_id} has no certificate imported yet (key version {cred.key_version})"
            )
        return cred

    # -- Authorize ---------------------------------------------------------------------------

    def authorize(
        self, who: Principal, credential_id: str, hash_alg: HashAlg, hashes: Sequence[bytes], otp: str
    ) -> Authorization:
        fp = hashes_fingerprint(hashes)
        cred = self.activation.check(who, credential_id, hash_alg, hashes, fp)
        step = self._auth.check_fresh_otp(who.user_id, otp, Action.SAD_ISSUE)
        auth = self.activation.issue(
            who, cred, hash_alg, hashes, fp, ApprovalMethod.TOTP, lambda t: t.accept_otp_step(who.user_id, step)
        )
        if auth is None:
            self._auth.otp_replayed(who.user_id, Action.SAD_ISSUE)
        return auth

    # -- SignHash ----------------------------------------------------------------------------

    def sign_hash(
        self,
        who: Principal,
        credential_id: str,
        sad: str,
        hash_alg: HashAlg,
        scheme: Scheme,
        hashes: Sequence[bytes],
        pss_salt_len: int | None = None,
    ) -> Signed:
        fp = hashes_fingerprint(hashes)
        try:
            if not hashes:
                raise InvalidRequest("at least one hash is required")
            check_digests(hash_alg, list(hashes))
            if len(hashes) > self._settings.multisign_max:
                raise InvalidRequest(f"at most {self._settings.multisign_max} hashes per request")
            cred = self._usable(who, credential_id)
            spec = sign_spec(KeyAlgorithm(cred.key_algorithm), hash_alg, scheme, pss_salt_len)
            sad_id, ledger = self._consume_sad(who, cred, sad, hash_alg, hashes, fp)
        except RsignError as exc:
            self._refused(Action.SAD_CONSUME, credential_id, fp, exc)

        settled = False
        try:
            signed = self._sign_consumed(cred, spec, sad_id, ledger, scheme, hash_alg, hashes, fp)
            settled = True
            return signed
        finally:
            if not settled:
                # Whatever went wrong (the audit store above all), the occurrences are consumed and
                # no signature left: the reconciler records and releases them once it can.
                self.recovery.orphaned([ledger], None)

    def _sign_consumed(
        self,
        cred: CredentialView,
        spec: SignSpec,
        sad_id: int,
        ledger: int,
        scheme: Scheme,
        hash_alg: HashAlg,
        hashes: Sequence[bytes],
        fp: str,
    ) -> Signed:
        try:
            results = self._hsm.sign(cred.cka_id, spec, hashes)
        except RsignError as exc:
            self._audit_sign_failure(cred, fp, sad_id, ledger, exc.message, len(hashes))
            raise
        failures = [r for r in results if isinstance(r, ItemFailure)]
        if failures:
            self._audit_sign_failure(cred, fp, sad_id, ledger, failures[0].reason, len(hashes))
            raise Unavailable(f"the HSM failed to sign {len(failures)} of {len(hashes)} hashes; nothing was returned")
        sigs = [r for r in results if isinstance(r, bytes)]
        # Commit one record per signature before any signature leaves the service. If this
        # commit fails the signatures are discarded and the client gets UNAVAILABLE; the
        # in-flight row stays, and the reconciler records the items as interrupted and releases them.
        with self._store.tx() as t:
            if t.end_inflight([ledger]) != 1:
                raise Superseded()
            t.append(
                *[
                    event(
                        Action.SIGN,
                        credential_id=cred.credential_id,
                        agency=cred.agency,
                        key_version=cred.key_version,
                        digest=d.hex(),
                        details={
                            "sad_id": sad_id,
                            "scheme": scheme.value,
                            "hash_algorithm": hash_alg.value,
                            "signature_sha256": hashlib.sha256(s).hexdigest(),
                        },
                    )
                    for d, s in zip(hashes, sigs, strict=True)
                ]
            )
        return Signed(sigs, cred.key_version)

    def _check_sad(self, who: Principal, cred: CredentialView, sad: str, hash_alg: HashAlg) -> SadView:
        """Every binding of the SAD except the hashes; raises ``PermissionDenied`` on any mismatch."""
        now = self._clock.now()
        with self._store.read() as t:
            row = t.get_sad(token_hash(sad), hash_alg.digest_size) if sad else None
        if row is None:
            raise PermissionDenied("the SAD is not valid; authorize again")
        if row.user_id != who.user_id or row.session_id != who.session_id:
            raise PermissionDenied("the SAD was issued to another user or session")
        if row.credential_id != cred.credential_id or row.key_version != cred.key_version:
            raise PermissionDenied("the SAD was issued for another credential or key version")
        if row.consumed_at is not None:
            raise PermissionDenied("the SAD has already been used; authorize again")
        if now >= row.expires_at:
            raise PermissionDenied("the SAD has expired; authorize again")
        if row.hash_alg != hash_alg.value:
            raise PermissionDenied("the SAD was issued for another hash algorithm")
        return row

    def _consume_sad(
        self, who: Principal, cred: CredentialView, sad: str, hash_alg: HashAlg, hashes: Sequence[bytes], fp: str
    ) -> tuple[int, int]:
        """Consume the SAD and the request's hash occurrences; returns the SAD id and the request's
        in-flight row."""
        row = self._check_sad(who, cred, sad, hash_alg)
        if len(hashes) != len(row.hashes):
            raise PermissionDenied(f"the SAD authorizes {len(row.hashes)} hashes, the request has {len(hashes)}")
        if not all(hmac.compare_digest(a, b) for a, b in zip(hashes, row.hashes, strict=True)):
            raise PermissionDenied("the hashes differ from those the SAD was issued for")
        try:
            ledger = self._start(row, cred, fp, batch=False, consume=occurrences(hashes))
        except AlreadyExists:
            raise PermissionDenied("a hash of this request was already signed with this credential") from None
        return row.id, ledger

    def _start(
        self, row: SadView, cred: CredentialView, fp: str, batch: bool, consume: Sequence[tuple[bytes, int]] = ()
    ) -> int:
        """Consume the SAD exactly once (conditional UPDATE), and ``consume`` hash occurrences,
        and audit it, in one transaction, with the ledger row that makes it recoverable: the
        request's in-flight row (unary), or the stream's open-stream row (batch). Returns its id."""
        now = self._clock.now()
        with self.recovery.tx() as t:
            if not t.consume_sad(row.id, now):
                # Lost a race with a concurrent request using the same SAD, or it just expired.
                raise PermissionDenied("the SAD has already been used or has expired; authorize again")
            t.consume_hashes(cred.credential_id, row.id, 0, consume)
            rid = self.recovery.replica_id
            if batch:
                ledger = t.add_stream(
                    rid, row.id, cred.credential_id, cred.key_version, fp, len(row.hashes), caller(), now
                )
            else:
                ledger = t.add_inflight(
                    rid, None, row.id, cred.credential_id, cred.key_version, row.hash_alg, 0, len(consume),
                    caller(), now,
                )  # fmt: skip
            evs = [
                event(
                    Action.SAD_CONSUME,
                    credential_id=cred.credential_id,
                    agency=cred.agency,
                    key_version=cred.key_version,
                    digest=fp,
                    details={"sad_id": row.id, "count": len(row.hashes)},
                )
            ]
            if batch:
                evs.append(
                    event(
                        Action.BATCH_START,
                        credential_id=cred.credential_id,
                        agency=cred.agency,
                        key_version=cred.key_version,
                        digest=fp,
                        details={"sad_id": row.id, "authorized": len(row.hashes)},
                    )
                )
            t.append(*evs)
        return ledger

    # -- SignHashStream ------------------------------------------------------------------------

    def sign_stream(
        self,
        who: Principal,
        credential_id: str,
        sad: str,
        hash_alg: HashAlg,
        scheme: Scheme,
        chunks: Iterable[Sequence[bytes]],
        deadline_passed: Callable[[float], bool] = lambda _slack: False,
        idle_seconds: float | None = None,
        shutting_down: Callable[[], bool] = lambda: False,
    ) -> Iterator[StreamChunk]:
        """Sign a stream of hash chunks that must follow the SAD's ordered list.

        Per chunk: the hash occurrences are consumed (committed) before the HSM sees them; the
        chunk's signature audit records are committed before its signatures are yielded. Up to
        ``stream_inflight_chunks`` chunks are at the HSM at once (back-pressure: the next request
        message is read only when there is room). Whatever ends the stream, chunks already at the
        HSM are awaited and audited, and a batch.end record says how it ended (``StreamEnd``:
        ``deadline_passed`` and ``shutting_down`` tell a deadline and a server stopping from a
        client's cancel, which gRPC all show the same way). A client that sends
        nothing for ``idle_seconds`` (default ``stream_idle_seconds``) while the service waits on
        it ends the stream with ``StreamIdle``.
        """
        try:
            cred = self._usable(who, credential_id)
            spec = sign_spec(KeyAlgorithm(cred.key_algorithm), hash_alg, scheme)
            row = self._check_sad(who, cred, sad, hash_alg)
            fp = hashes_fingerprint(row.hashes)
            stream_id = self._start(row, cred, fp, batch=True)
        except RsignError as exc:
            self._refused(Action.SAD_CONSUME, credential_id, "", exc)

        run = BatchRun(
            store=self._store,
            hsm=self._hsm,
            recovery=self.recovery,
            stream_id=stream_id,
            cred=cred,
            spec=spec,
            sad=row,
            keys=occurrences(row.hashes),
            hash_alg=hash_alg,
            scheme=scheme,
            fingerprint=fp,
            limit=max(1, self._settings.stream_inflight_chunks),
            deadline_passed=deadline_passed,
            shutting_down=shutting_down,
            idle_seconds=self._settings.stream_idle_seconds if idle_seconds is None else idle_seconds,
        )
        return run.run(chunks)

    def stream_idle_before_start(self, who: Principal, exc: StreamIdle) -> None:
        """A SignHashStream whose first message never came (nothing named, authorized or
        consumed): its batch.end failure record, so that the abandoned stream is on the log."""
        with self._store.tx() as t:
            t.append(
                event(
                    Action.BATCH_END,
                    Result.FAILURE,
                    actor=who.user_id,
                    agency=who.agency,
                    reason=f"{StreamEnd.IDLE}: {exc.message}",
                    details={"ended_by": str(StreamEnd.IDLE), "received": 0, "idle_seconds": exc.seconds},
                )
            )

    # -- audit helpers -----------------------------------------------------------------------

    def _refused(self, stage: str, credential_id: str, fp: str, exc: RsignError) -> NoReturn:
        """Audit a refusal in its own transaction, then re-raise. If even that cannot be written,
        the audit store's error wins (fail closed)."""
        with self._store.tx() as t:
            t.append(
                event(
                    Action.SAD_REFUSE,
                    Result.FAILURE,
                    credential_id=credential_id,
                    digest=fp,
                    reason=exc.message,
                    details={"stage": str(stage), "error": type(exc).__name__},
                )
            )
        raise exc

    def _audit_sign_failure(
        self, cred: CredentialView, fp: str, sad_id: int, ledger: int, reason: str, count: int
    ) -> None:
        """No signature of the request is returned, so its hash occurrences are released."""
        with self._store.tx() as t:
            if t.end_inflight([ledger]) != 1:
                raise Superseded()
            t.release_hashes(cred.credential_id, sad_id, list(range(count)))
            t.append(
                event(
                    Action.SIGN,
                    Result.FAILURE,
                    credential_id=cred.credential_id,
                    agency=cred.agency,
                    key_version=cred.key_version,
                    digest=fp,
                    reason=reason,
                    details={"sad_id": sad_id},
                )
            )
