"""Signing activation approved with the official's passkey instead of a one-time code.

1. The driving software asks (``request``): the same checks as a TOTP activation run
   (``Activator.check``: credential, ownership, status, multisign, hashes not yet signed), then a
   pending approval is stored, bound to its session, credential, key version, hash algorithm and
   ordered hashes. It gets a poll handle (a secret) and the approval page's path.
2. The official opens the page on their phone or PC; the WebAuthn challenge commits to all of the
   above (``rsign.domain.approvals.approval_challenge``). The transport verifies the assertion
   with py_webauthn (origin, RP id, user verification, signature), then ``approve`` applies the
   rules that are ours: the passkey is the official's, user verification happened, the signature
   counter moved forward, and the approval is still pending (once).
3. The driving software polls (``check``): once approved, the SAD is minted by the same code as a
   TOTP activation (``Activator.issue``), in the transaction that marks the approval delivered, so
   an approval yields one SAD, bound to the approved hashes. Nothing waits on a 30-second step.
"""

from __future__ import annotations

import logging
import secrets
import threading
import time
from collections.abc import Sequence
from typing import NoReturn

from rsign.audit.journal import AuditedStore
from rsign.auth.service import token_hash
from rsign.domain.algorithms import HashAlg
from rsign.domain.approvals import ApprovalState, ApprovalView, PasskeyView, PendingApproval, VerifiedAssertion
from rsign.domain.clock import Clock
from rsign.domain.errors import FailedPrecondition, InvalidRequest, NotFound, PermissionDenied, RsignError
from rsign.domain.events import Action, Result, event
from rsign.domain.principal import Principal
from rsign.domain.settings import Settings
from rsign.signing.activation import Activator, ApprovalMethod, Authorization
from rsign.signing.service import hashes_fingerprint

log = logging.getLogger(__name__)

LABEL_MAX = 200
DESCRIPTION_MAX = 500
POLL_INTERVAL = 0.2
# Refused approvals recorded per approval and server process. The approval page and its
# endpoints need no session (whoever holds the link may try), so without a bound anyone holding
# a link could append audit records as fast as they can post. The first few are recorded (an
# official or auditor sees someone tried); later ones are only logged. Still refused, and a
# genuine approval still succeeds: the budget limits records, not attempts (so a link holder
# cannot lock the official out). Per process: a cluster records at most this many per replica.
REFUSALS_RECORDED = 5


class ApprovalService:
    def __init__(self, store: AuditedStore, clock: Clock, settings: Settings, activation: Activator) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings
        self._activation = activation
        self._refusals: dict[str, tuple[int, float]] = {}  # approval id -> (refusals, expires_at)
        self._refusals_lock = threading.Lock()

    # -- the driving software --------------------------------------------------------------------

    def request(
        self,
        who: Principal,
        credential_id: str,
        hash_alg: HashAlg,
        hashes: Sequence[bytes],
        labels: Sequence[str] = (),
        description: str = "",
    ) -> PendingApproval:
        fp = hashes_fingerprint(hashes)
        cred = self._activation.check(who, credential_id, hash_alg, hashes, fp)
        try:
            if labels and len(labels) != len(hashes):
                raise InvalidRequest(f"{len(labels)} labels for {len(hashes)} hashes: give one label per hash, or none")
            if any(len(label) > LABEL_MAX for label in labels) or len(description) > DESCRIPTION_MAX:
                raise InvalidRequest(f"labels are at most {LABEL_MAX} characters, the description {DESCRIPTION_MAX}")
            with self._store.read() as t:
                has_passkey = bool(t.list_passkeys(who.user_id))
            if not has_passkey:
                raise FailedPrecondition(
                    "no passkey is enrolled for this user: send a one-time code, or enrol a passkey first"
                )
        except RsignError as exc:
            self._audit(Action.APPROVAL_REQUEST, who.user_id, who.agency, credential_id, fp, exc.message)
            raise
        handle, approval_id, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(16), secrets.token_bytes(32)
        now = self._clock.now()
        expires = now + self._settings.sad_ttl_seconds
        with self._store.tx() as t:
            t.add_approval(
                approval_id, token_hash(handle), who.user_id, who.session_id, credential_id, cred.key_version,
                hash_alg.value, hashes, labels, description, nonce, now, expires,
            )  # fmt: skip
            t.append(
                event(
                    Action.APPROVAL_REQUEST,
                    credential_id=credential_id,
                    agency=cred.agency,
                    key_version=cred.key_version,
                    digest=fp,
                    details={"approval_id": approval_id, "count": len(hashes), "hash_algorithm": hash_alg.value},
                )
            )
        return PendingApproval(handle, approval_id, expires)

    def check(self, who: Principal, handle: str) -> Authorization | PendingApproval:
        """The SAD once approved (handed out once), else the same pending approval."""
        with self._store.read() as t:
            row = t.approval_by_handle(token_hash(handle)) if handle else None
        if row is None:
            raise NotFound("no such pending authorization (unknown handle)")
        fp = hashes_fingerprint(row.hashes)
        try:
            if row.user_id != who.user_id or row.session_id != who.session_id:
                raise PermissionDenied("this authorization was requested by another user or session")
            if row.state == ApprovalState.DELIVERED:
                raise PermissionDenied("the SAD of this approval was already handed out; authorize again")
            if self._clock.now() >= row.expires_at:
                raise PermissionDenied("the approval request expired; authorize again")
        except RsignError as exc:
            self._audit(Action.SAD_ISSUE, who.user_id, who.agency, row.credential_id, fp, exc.message)
            raise
        if row.state == ApprovalState.PENDING:
            return PendingApproval(handle, row.approval_id, row.expires_at)
        hash_alg = HashAlg(row.hash_alg)
        # The credential may have changed since the request (disabled, rotated, hashes signed).
        cred = self._activation.check(who, row.credential_id, hash_alg, row.hashes, fp)
        if cred.key_version != row.key_version:
            self._audit(Action.SAD_ISSUE, who.user_id, who.agency, row.credential_id, fp, "key rotated since approval")
            raise PermissionDenied("the credential's key was rotated since the approval; authorize again")
        now = self._clock.now()
        auth = self._activation.issue(
            who, cred, hash_alg, row.hashes, fp, ApprovalMethod.PASSKEY,
            lambda t: t.move_approval(row.id, ApprovalState.APPROVED, ApprovalState.DELIVERED, now),
            {"approval_id": row.approval_id, "passkey_id": row.passkey_id},
        )  # fmt: skip
        if auth is None:
            raise PermissionDenied("the SAD of this approval was already handed out; authorize again")
        return auth

    def wait(self, who: Principal, handle: str, seconds: float) -> Authorization | PendingApproval:
        """``check`` until approved or ``seconds`` (wall time) pass."""
        deadline = time.monotonic() + max(0.0, seconds)
        while True:
            out = self.check(who, handle)
            if isinstance(out, Authorization) or time.monotonic() >= deadline:
                return out
            time.sleep(POLL_INTERVAL)

    # -- the official's device -----------------------------------------------------------------

    def get(self, approval_id: str) -> tuple[ApprovalView, list[PasskeyView]]:
        """The approval (what the page shows and the challenge) and its official's passkeys.
        Whoever has the page's link may see what is being signed; only the official's passkey,
        with user verification, can approve it."""
        with self._store.read() as t:
            row = t.get_approval(approval_id)
            keys = t.list_passkeys(row.user_id) if row else []
        if row is None:
            raise NotFound("no such signing approval")
        return row, keys

    def approve(self, approval_id: str, verified: VerifiedAssertion) -> ApprovalView:
        row, keys = self.get(approval_id)
        fp = hashes_fingerprint(row.hashes)
        key = next((k for k in keys if k.credential_id == verified.credential_id), None)
        try:
            if row.state != ApprovalState.PENDING:
                raise PermissionDenied("this signing request was already approved")
            if self._clock.now() >= row.expires_at:
                raise PermissionDenied("this signing request has expired; ask for a new one")
            if key is None:
                raise PermissionDenied("this passkey is not enrolled for the official who must approve")
            if not verified.user_verified:
                raise PermissionDenied("the authenticator did not verify the user (PIN or biometrics required)")
            if verified.new_sign_count <= key.sign_count and (verified.new_sign_count or key.sign_count):
                # A counter that does not move forward: a cloned authenticator, or a replay.
                raise PermissionDenied("the passkey's signature counter went backwards; approval refused")
            now = self._clock.now()
            with self._store.tx() as t:
                if not t.move_approval(row.id, ApprovalState.PENDING, ApprovalState.APPROVED, now, key.id):
                    raise PermissionDenied("this signing request was already approved")
                if not t.advance_sign_count(key.id, key.sign_count, verified.new_sign_count, now):
                    raise PermissionDenied("the passkey was used concurrently; approve again")
                t.append(
                    event(
                        Action.APPROVAL_PASSKEY,
                        actor=row.user_id,
                        agency=self._agency(row.user_id),
                        credential_id=row.credential_id,
                        key_version=row.key_version,
                        digest=fp,
                        details={"approval_id": approval_id, "passkey_id": key.id, "count": len(row.hashes)},
                    )
                )
        except RsignError as exc:
            self.refuse(row, exc)
        return row

    def refuse(self, row: ApprovalView, exc: RsignError) -> NoReturn:
        """Audit a refused approval (a failed WebAuthn check included), then raise it."""
        seen = self._count_refusal(row)
        if seen > REFUSALS_RECORDED:
            log.warning("approval %s refused again (%d times), not recorded: %s", row.approval_id, seen, exc.message)
            raise exc
        fp = hashes_fingerprint(row.hashes)
        details: dict[str, object] = {"approval_id": row.approval_id}
        if seen == REFUSALS_RECORDED:
            details["later_refusals"] = "not recorded"
        self._audit(Action.APPROVAL_PASSKEY, row.user_id, self._agency(row.user_id), row.credential_id, fp, exc.message,
                    details)  # fmt: skip
        raise exc

    def _count_refusal(self, row: ApprovalView) -> int:
        now = self._clock.now()
        with self._refusals_lock:
            if len(self._refusals) > 1024:  # forget approvals that expired (they refuse anyway)
                self._refusals = {k: v for k, v in self._refusals.items() if v[1] > now}
            seen = self._refusals.get(row.approval_id, (0, row.expires_at))[0] + 1
            self._refusals[row.approval_id] = (seen, row.expires_at)
        return seen

    # -- helpers -------------------------------------------------------------------------------

    def _agency(self, user_id: str) -> str:
        with self._store.read() as t:
            user = t.get_user(user_id)
        return user.agency if user else ""

    def _audit(
        self, action: Action, actor: str, agency: str, credential_id: str, fp: str, reason: str,
        details: dict[str, object] | None = None,
    ) -> None:  # fmt: skip
        ev = event(
            action, Result.FAILURE, actor=actor, agency=agency, credential_id=credential_id, digest=fp, reason=reason,
            details=details or {},
        )  # fmt: skip
        with self._store.tx() as t:
            t.append(ev)
