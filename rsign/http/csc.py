"""The Cloud Signature Consortium API (v2 names, and pyHanko's v1.0.4 names) over the domain services.

Served under ``/csc/v2/`` and ``/csc/v1/``: both prefixes accept both spellings (``hashes`` or
``hash``, ``hashAlgorithmOID`` or ``hashAlgo``, ``authData`` or a top-level ``OTP``), because
pyHanko keeps its v1.0.4 body names whatever the URL says. Each endpoint reads its fields,
calls the same service method as the gRPC servicer, and shapes the answer; nothing else.
"""

from __future__ import annotations

import base64
from typing import Any

from cryptography import x509
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from rsign.domain.algorithms import KeyAlgorithm
from rsign.domain.approvals import PendingApproval
from rsign.domain.limits import ID_MAX, OTP_MAX, PIN_MAX, TOKEN_MAX
from rsign.domain.principal import CredentialStatus, Principal
from rsign.domain.records import CredentialView
from rsign.http import fields
from rsign.http.plumbing import Answer, BadRequest, Handler, serve
from rsign.runtime.app import App
from rsign.signing.activation import Authorization

SPECS = "2.0.0.2"
METHODS = [
    "auth/login",
    "auth/revoke",
    "credentials/list",
    "credentials/info",
    "credentials/authorize",
    "credentials/authorizeCheck",
    "signatures/signHash",
]


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _otp(body: dict[str, Any]) -> str:
    """The one-time code: top-level ``OTP`` (v1) or the ``OTP`` object of ``authData`` (v2)."""
    otp = fields.text(body, "OTP", required=False, limit=OTP_MAX)
    data = body.get("authData")
    if data is not None:
        if not isinstance(data, list) or not all(isinstance(o, dict) for o in data):
            raise BadRequest("authData must be a list of {id, value} objects", "authData")
        for obj in data:
            if obj.get("id") == "OTP":
                otp = fields.text(obj, "value", limit=OTP_MAX)
    return otp


class Csc:
    def __init__(self, app: App, origin: str) -> None:
        self._app = app
        self._origin = origin  # where officials open the approval pages

    # -- service and session -----------------------------------------------------------------

    def info(self, _who: Principal | None, body: dict[str, Any]) -> dict[str, Any]:
        oids = sorted({o for a in KeyAlgorithm for o in a.signature_algorithm_oids()})
        return {
            "specs": SPECS,
            "name": "rsign",
            "logo": "",
            "region": "VN",
            "lang": "vi-VN",
            "description": "rsign remote signing service (keys in a PKCS#11 HSM)",
            "authType": ["basic"],
            "methods": METHODS,
            "asynchronousOperationMode": True,
            "signAlgorithms": {"algos": oids, "algoParams": []},
        }

    def login(self, _who: Principal | None, body: dict[str, Any], basic: tuple[str, str] | None) -> dict[str, Any]:
        # The user id and PIN come in HTTP Basic (CSC v2 auth/login) or in the body; the fresh
        # one-time code always in the body: PIN + OTP, as on gRPC Login.
        source = {"userID": basic[0], "PIN": basic[1]} if basic else body
        user, pin = fields.text(source, "userID", limit=ID_MAX), fields.text(source, "PIN", "password", limit=PIN_MAX)
        token, expires = self._app.auth.login(user, pin, _otp(body))
        return {"access_token": token, "token_type": "Bearer", "expires_in": int(expires - self._app.clock.now())}

    def revoke(self, who: Principal | None, _body: dict[str, Any]) -> dict[str, Any]:
        assert who is not None
        self._app.auth.logout(who)
        return {}

    # -- credentials ---------------------------------------------------------------------------

    def list(self, who: Principal | None, body: dict[str, Any]) -> dict[str, Any]:
        assert who is not None
        user = fields.text(body, "userID", required=False, limit=ID_MAX)
        if user and user != who.user_id:
            raise BadRequest("userID must be empty or the session's own user", "userID")
        creds = self._app.signing.list_credentials(who)
        out: dict[str, Any] = {"credentialIDs": [c.credential_id for c in creds]}
        if fields.flag(body, "credentialInfo"):
            out["credentialInfos"] = [self._describe(c, body) | {"credentialID": c.credential_id} for c in creds]
        return out

    def credential_info(self, who: Principal | None, body: dict[str, Any]) -> dict[str, Any]:
        assert who is not None
        cid = fields.text(body, "credentialID", limit=ID_MAX)
        return self._describe(self._app.signing.get_credential(who, cid), body)

    def _describe(self, c: CredentialView, body: dict[str, Any]) -> dict[str, Any]:
        alg = KeyAlgorithm(c.key_algorithm)
        which = fields.text(body, "certificates", required=False, limit=16) or "single"
        if which not in ("none", "single", "chain"):
            raise BadRequest("certificates must be none, single or chain", "certificates")
        chain = [c.certificate, *c.chain] if c.certificate else []
        certs = {"none": [], "single": chain[:1], "chain": chain}[which]
        key: dict[str, Any] = {
            "status": "enabled" if c.status == CredentialStatus.ACTIVE else "disabled",
            # Combined signature-algorithm OIDs (sha256WithRSAEncryption, RSASSA-PSS,
            # ecdsa-with-SHA256...): a client picks its signAlgo from these.
            "algo": alg.signature_algorithm_oids(),
            "len": alg.rsa_bits if alg.is_rsa else int(alg.value[-3:]),
        }
        if not alg.is_rsa:
            key["curve"] = fields.CURVE_OIDS[alg]
        cert: dict[str, Any] = {
            "status": {CredentialStatus.REVOKED: "revoked", CredentialStatus.DESTROYED: "revoked"}.get(
                c.status, "valid"
            ),
            "certificates": [_b64(d) for d in certs],
        }
        if fields.flag(body, "certInfo") and c.certificate:
            cert |= _cert_info(c.certificate)
        return {
            "description": f"{c.kind} credential of {c.holder_user_id or c.agency}, key version {c.key_version}",
            "key": key,
            "cert": cert,
            # Explicit: the signing software relays the one-time code; with a passkey the
            # official approves on their own device instead (authorize answers 202 + handle).
            "authMode": "explicit",
            "auth": {"mode": "explicit", "expression": "OTP", "objects": [{"type": "OTP", "id": "OTP"}]},
            "OTP": {"presence": "true", "type": "online", "format": "N", "label": "TOTP", "ID": "OTP"},
            "PIN": {"presence": "false"},
            # Every SAD is bound to the exact hashes it activates (sole control, SCAL2).
            "SCAL": "2",
            "multisign": min(c.multisign, self._app.settings.multisign_max),
        }

    # -- activation and signing ----------------------------------------------------------------

    def authorize(self, who: Principal | None, body: dict[str, Any]) -> Answer:
        assert who is not None
        cid = fields.text(body, "credentialID", limit=ID_MAX)
        digests = fields.hashes(body, self._app.settings.multisign_max)
        count = fields.integer(body, "numSignatures")
        if count != len(digests):
            raise BadRequest(f"numSignatures is {count} but {len(digests)} hashes were sent", "numSignatures")
        alg = fields.hash_alg(body, digests)
        # A PIN field is not a second check here: the PIN opened this session (auth/login);
        # the activation factor is the fresh one-time code, or the passkey approval.
        otp = _otp(body)
        if otp:
            return self._sad(self._app.signing.authorize(who, cid, alg, digests, otp))
        # No code: the asynchronous mode. The official approves on their passkey (the page at
        # approvalURL); the signing software polls credentials/authorizeCheck with the handle.
        labels = body.get("labels", [])
        if not isinstance(labels, list) or not all(isinstance(x, str) for x in labels):
            raise BadRequest("labels must be a list of strings, one per hash", "labels")
        description = fields.text(body, "description", required=False, limit=500)
        pending = self._app.approvals.request(who, cid, alg, digests, labels, description)
        return self._pending(pending)

    def authorize_check(self, who: Principal | None, body: dict[str, Any]) -> Answer:
        assert who is not None
        out = self._app.approvals.check(who, fields.text(body, "handle", limit=TOKEN_MAX))
        return self._pending(out) if isinstance(out, PendingApproval) else self._sad(out)

    def _sad(self, auth: Authorization) -> Answer:
        return Answer({"SAD": auth.sad, "expiresIn": max(1, int(auth.expires_at - self._app.clock.now()))})

    def _pending(self, p: PendingApproval) -> Answer:
        left = max(0, int(p.expires_at - self._app.clock.now()))
        return Answer({"handle": p.handle, "approvalURL": self._origin + p.path, "expiresIn": left}, 202)

    def sign_hash(self, who: Principal | None, body: dict[str, Any]) -> dict[str, Any]:
        assert who is not None
        cid = fields.text(body, "credentialID", limit=ID_MAX)
        sad = fields.text(body, "SAD", limit=TOKEN_MAX)
        if fields.text(body, "operationMode", required=False, limit=4) not in ("", "S"):
            raise BadRequest("only the synchronous operationMode S is served", "operationMode")
        digests = fields.hashes(body, self._app.settings.multisign_max)
        scheme, alg, salt = fields.sign_algorithm(body, digests)
        signed = self._app.signing.sign_hash(who, cid, sad, alg, scheme, digests, salt)
        # Same order as the request's hashes; ECDSA values are DER ECDSA-Sig-Value.
        return {"signatures": [_b64(s) for s in signed.signatures]}


def _cert_info(der: bytes) -> dict[str, Any]:
    cert = x509.load_der_x509_certificate(der)
    return {
        "issuerDN": cert.issuer.rfc4514_string(),
        "subjectDN": cert.subject.rfc4514_string(),
        "serialNumber": format(cert.serial_number, "x"),
        "validFrom": cert.not_valid_before_utc.strftime("%Y%m%d%H%M%SZ"),
        "validTo": cert.not_valid_after_utc.strftime("%Y%m%d%H%M%SZ"),
    }


def _basic(request: Request) -> tuple[str, str] | None:
    value = request.headers.get("authorization", "")
    if not value.startswith("Basic "):
        return None
    try:
        user, sep, pin = base64.b64decode(value[6:], validate=True).decode("utf-8").partition(":")
    except (ValueError, UnicodeDecodeError):
        return None
    # NUL is no character PostgreSQL stores; such a header is no credential (as a missing one).
    return (user, pin) if sep and "\x00" not in user + pin else None


def routes(app: App, origin: str) -> list[Route]:
    """The CSC endpoints under both prefixes."""
    csc = Csc(app, origin)

    def endpoint(handler: Handler, public: bool = False) -> Any:
        async def run(request: Request) -> JSONResponse:
            return await serve(app, request, handler, public=public)

        return run

    async def login(request: Request) -> JSONResponse:
        basic = _basic(request)
        return await serve(app, request, lambda who, body: csc.login(who, body, basic), public=True)

    table: list[tuple[str, Any]] = [
        ("info", endpoint(csc.info, public=True)),
        ("auth/login", login),
        ("auth/revoke", endpoint(csc.revoke)),
        ("credentials/list", endpoint(csc.list)),
        ("credentials/info", endpoint(csc.credential_info)),
        ("credentials/authorize", endpoint(csc.authorize)),
        ("credentials/authorizeCheck", endpoint(csc.authorize_check)),
        ("signatures/signHash", endpoint(csc.sign_hash)),
    ]
    return [Route(f"/csc/{ver}/{path}", fn, methods=["POST"]) for ver in ("v1", "v2") for path, fn in table]
