"""WebAuthn ceremonies with py_webauthn: registration and assertion options, and their verification.

py_webauthn checks what WebAuthn defines (client data type, challenge, origin, RP id hash, user
presence and verification flags, the signature over authenticator data and client data, the
counter against the stored one); a failure is a ``PermissionDenied`` naming what failed. The
rules that are rsign's (whose passkey, which approval, once) are the domain's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from webauthn import (
    generate_authentication_options,
    generate_registration_options,
    options_to_json,
    verify_authentication_response,
    verify_registration_response,
)
from webauthn.helpers import parse_authentication_credential_json
from webauthn.helpers.exceptions import InvalidAuthenticationResponse, InvalidJSONStructure, InvalidRegistrationResponse
from webauthn.helpers.structs import (
    AuthenticatorSelectionCriteria,
    PublicKeyCredentialDescriptor,
    ResidentKeyRequirement,
    UserVerificationRequirement,
)

from rsign.domain.approvals import PasskeyView, VerifiedAssertion
from rsign.domain.errors import InvalidRequest, PermissionDenied
from rsign.domain.records import UserView

TIMEOUT_MS = 120_000


@dataclass(frozen=True)
class RelyingParty:
    """Who the passkeys are for: the RP id (a registrable domain: ``localhost`` in development)
    and the exact origin the pages are served from; an assertion made elsewhere is refused."""

    rp_id: str
    origin: str
    name: str = "rsign"


def registration_options(rp: RelyingParty, user: UserView, challenge: bytes, existing: tuple[bytes, ...]) -> Any:
    options = generate_registration_options(
        rp_id=rp.rp_id,
        rp_name=rp.name,
        user_id=user.user_id.encode("utf-8"),
        user_name=user.user_id,
        user_display_name=user.name,
        challenge=challenge,
        timeout=TIMEOUT_MS,
        # User verification required: the passkey stands for the official (device PIN or
        # biometrics), not merely for whoever holds the phone.
        authenticator_selection=AuthenticatorSelectionCriteria(
            resident_key=ResidentKeyRequirement.PREFERRED, user_verification=UserVerificationRequirement.REQUIRED
        ),
        exclude_credentials=[PublicKeyCredentialDescriptor(id=c) for c in existing],
    )
    return json.loads(options_to_json(options))


def verify_registration(rp: RelyingParty, credential: Any, challenge: bytes) -> tuple[bytes, bytes, int]:
    """(credential id, COSE public key, sign count) of a verified registration."""
    try:
        v = verify_registration_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp.rp_id,
            expected_origin=rp.origin,
            require_user_verification=True,
        )
    except (InvalidRegistrationResponse, InvalidJSONStructure) as exc:
        raise PermissionDenied(f"passkey registration refused: {exc}") from None
    return v.credential_id, v.credential_public_key, v.sign_count


def assertion_options(rp: RelyingParty, challenge: bytes, keys: list[PasskeyView]) -> Any:
    options = generate_authentication_options(
        rp_id=rp.rp_id,
        challenge=challenge,
        timeout=TIMEOUT_MS,
        allow_credentials=[PublicKeyCredentialDescriptor(id=k.credential_id) for k in keys],
        user_verification=UserVerificationRequirement.REQUIRED,
    )
    return json.loads(options_to_json(options))


def credential_id_of(credential: Any) -> bytes:
    try:
        return bytes(parse_authentication_credential_json(credential).raw_id)
    except (InvalidJSONStructure, InvalidAuthenticationResponse, ValueError, TypeError, KeyError):
        raise InvalidRequest("the passkey response is not a WebAuthn assertion") from None


def verify_assertion(rp: RelyingParty, credential: Any, challenge: bytes, key: PasskeyView) -> VerifiedAssertion:
    """Verified against ``challenge`` (the approval's commitment), the origin, the RP id, with
    user verification required and the stored counter."""
    try:
        v = verify_authentication_response(
            credential=credential,
            expected_challenge=challenge,
            expected_rp_id=rp.rp_id,
            expected_origin=rp.origin,
            credential_public_key=key.public_key,
            credential_current_sign_count=key.sign_count,
            require_user_verification=True,
        )
    except (InvalidAuthenticationResponse, InvalidJSONStructure) as exc:
        raise PermissionDenied(f"passkey approval refused: {exc}") from None
    return VerifiedAssertion(bytes(v.credential_id), int(v.new_sign_count), bool(v.user_verified))
