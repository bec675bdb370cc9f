"""Passkey enrolment: an official, logged in with PIN + TOTP, registers a WebAuthn credential.

The WebAuthn ceremony itself (attestation parsing, origin and RP id checks) is the transport's,
done with py_webauthn; this service owns the rules: who may enrol, the registration challenge
(random, single use, bound to the session, short-lived), and the audited record.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass

from rsign.audit.journal import AuditedStore
from rsign.domain.approvals import PasskeyView
from rsign.domain.clock import Clock
from rsign.domain.errors import AlreadyExists, InvalidRequest, PermissionDenied, RsignError
from rsign.domain.events import Action, Result, event
from rsign.domain.principal import Principal
from rsign.domain.records import UserView

CHALLENGE_TTL = 300.0  # seconds to complete an enrolment on the device


@dataclass(frozen=True)
class EnrolmentStart:
    challenge_id: str
    challenge: bytes
    user: UserView
    existing: tuple[bytes, ...]  # credential ids the authenticator should not register twice


class PasskeyService:
    def __init__(self, store: AuditedStore, clock: Clock) -> None:
        self._store = store
        self._clock = clock

    def start_enrolment(self, who: Principal) -> EnrolmentStart:
        if who.local:
            raise PermissionDenied("the local operator has no passkey; a signer enrols in their own session")
        with self._store.read() as t:
            user = t.get_user(who.user_id)
            existing = tuple(p.credential_id for p in t.list_passkeys(who.user_id))
        if user is None:
            raise PermissionDenied("invalid session; log in again")
        cid, challenge = secrets.token_urlsafe(16), secrets.token_bytes(32)
        now = self._clock.now()
        with self._store.tx() as t:
            t.add_passkey_challenge(cid, who.user_id, who.session_id, challenge, now + CHALLENGE_TTL, now)
            # Using it (take_challenge) ends in passkey.enrol, success or failure.
            t.append(
                event(Action.PASSKEY_CHALLENGE, actor=who.user_id, agency=who.agency, details={"challenge_id": cid})
            )
        return EnrolmentStart(cid, challenge, user, existing)

    def take_challenge(self, who: Principal, challenge_id: str) -> bytes:
        """The registration challenge, once (marked used whatever the outcome of the ceremony)."""
        with self._store.tx() as t:
            challenge = t.take_passkey_challenge(challenge_id, who.user_id, who.session_id, self._clock.now())
        if challenge is None:
            self.refused(who, "unknown, used or expired enrolment challenge")
            raise InvalidRequest("this enrolment has expired or was already used; start again")
        return challenge

    def add(self, who: Principal, credential_id: bytes, public_key: bytes, sign_count: int, label: str) -> int:
        label = label.strip()[:128]
        try:
            with self._store.tx() as t:
                pid = t.add_passkey(who.user_id, credential_id, public_key, sign_count, label, self._clock.now())
                t.append(
                    event(
                        Action.PASSKEY_ENROL,
                        actor=who.user_id,
                        agency=who.agency,
                        details={"passkey_id": pid, "label": label, "credential_id": credential_id.hex()[:64]},
                    )
                )
        except AlreadyExists:
            self.refused(who, "this passkey is already enrolled")
            raise AlreadyExists("this passkey is already enrolled") from None
        return pid

    def list(self, who: Principal) -> list[PasskeyView]:
        with self._store.read() as t:
            return t.list_passkeys(who.user_id)

    def refused(self, who: Principal, reason: str | RsignError) -> None:
        text = reason.message if isinstance(reason, RsignError) else reason
        with self._store.tx() as t:
            t.append(event(Action.PASSKEY_ENROL, Result.FAILURE, actor=who.user_id, agency=who.agency, reason=text))
