"""The passkey pages: self-service enrolment (after PIN + TOTP) and the approval page an official
opens on their phone, plus the JSON endpoints their scripts call.

Pages are small, self-contained HTML (no external assets) in UTF-8, with a strict Content
Security Policy: scripts and styles only by nonce, no framing (an approval button inside
someone else's frame could be clicked by deception), requests only to this origin.
"""

from __future__ import annotations

import html
import secrets
from typing import Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from rsign.domain.approvals import ApprovalState
from rsign.domain.errors import InvalidRequest, PermissionDenied, RsignError
from rsign.domain.principal import Principal
from rsign.http import ceremony, fields
from rsign.http.ceremony import RelyingParty
from rsign.http.errors import csc_error
from rsign.http.i18n import TEXT, language
from rsign.http.plumbing import BadRequest, serve
from rsign.http.templates import APPROVE_BODY, ENROL_BODY, PAGE, SCRIPT, STYLE
from rsign.runtime.app import App


def _page(request: Request, title: str, body: str, lang: str, status: int = 200) -> Response:
    nonce = secrets.token_urlsafe(16)
    t = TEXT[lang]
    switch = f'<a class="lang" href="?lang={t["other_code"]}">{t["other_lang"]}</a>'
    doc = PAGE.format(
        lang=lang, title=html.escape(title), nonce=nonce, body=body, switch=switch, style=STYLE, script=SCRIPT
    )
    csp = (
        f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
    headers = {"Content-Security-Policy": csp, "Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    return HTMLResponse(doc, status_code=status, headers=headers)


class Pages:
    def __init__(self, app: App, rp: RelyingParty) -> None:
        self._app = app
        self._rp = rp

    # -- approval --------------------------------------------------------------------------------

    async def approve_page(self, request: Request) -> Response:
        lang = language(request)
        t = TEXT[lang]
        approval_id = request.path_params["approval_id"]
        try:
            row, _ = await run_in_threadpool(self._app.approvals.get, approval_id)
        except RsignError as exc:
            failed = f'<p class="err">{t["failed"]}: {html.escape(exc.message)}</p>'
            return _page(request, t["approve_title"], failed, lang, csc_error(exc)[0])
        left = int(row.expires_at - self._app.clock.now())
        labels = row.labels or ("",) * len(row.hashes)
        items = "".join(
            f'<li>{html.escape(label) if label else t["no_label"]}<span class="hash">{d.hex()[:16]}…</span></li>'
            for label, d in zip(labels, row.hashes, strict=True)
        )
        state = ""
        if row.state != ApprovalState.PENDING:
            state = t["state_approved"]
        elif left <= 0:
            state = t["state_expired"]
        body = APPROVE_BODY.format(
            t=t,
            user=html.escape(row.user_id),
            credential=html.escape(row.credential_id),
            key_version=row.key_version,
            count=len(row.hashes),
            hash_alg=html.escape(row.hash_alg),
            left=max(0, left),
            description=f"<p>{html.escape(row.description)}</p>" if row.description else "",
            items=items,
            state=state,
            disabled="disabled" if state else "",
        )
        return _page(request, t["approve_title"], body, lang)

    def approval_options(self, _who: Principal | None, body: dict[str, Any], approval_id: str) -> dict[str, Any]:
        row, keys = self._app.approvals.get(approval_id)
        if row.state != ApprovalState.PENDING:
            raise PermissionDenied("this signing request was already approved")
        # The challenge is the approval's commitment to credential, key version, hash algorithm
        # and ordered hashes (rsign.domain.approvals), recomputed again when the answer comes.
        return dict(ceremony.assertion_options(self._rp, row.challenge, keys))

    def approval_finish(self, _who: Principal | None, body: dict[str, Any], approval_id: str) -> dict[str, Any]:
        credential = body.get("credential")
        if not isinstance(credential, dict):
            raise BadRequest("credential (the WebAuthn assertion) is required", "credential")
        row, keys = self._app.approvals.get(approval_id)
        try:
            raw_id = ceremony.credential_id_of(credential)
            key = next((k for k in keys if k.credential_id == raw_id), None)
            if key is None:
                raise PermissionDenied("this passkey is not enrolled for the official who must approve")
            verified = ceremony.verify_assertion(self._rp, credential, row.challenge, key)
        except (PermissionDenied, InvalidRequest) as exc:
            self._app.approvals.refuse(row, exc)
        self._app.approvals.approve(approval_id, verified)
        return {"state": str(ApprovalState.APPROVED)}

    # -- enrolment -------------------------------------------------------------------------------

    async def enrol_page(self, request: Request) -> Response:
        lang = language(request)
        t = TEXT[lang]
        return _page(request, t["enrol_title"], ENROL_BODY.format(t=t), lang)

    def register_options(self, who: Principal | None, body: dict[str, Any]) -> dict[str, Any]:
        assert who is not None
        start = self._app.passkeys.start_enrolment(who)
        options = ceremony.registration_options(self._rp, start.user, start.challenge, start.existing)
        return {"challengeId": start.challenge_id, "publicKey": options}

    def register_finish(self, who: Principal | None, body: dict[str, Any]) -> dict[str, Any]:
        assert who is not None
        challenge_id = fields.text(body, "challengeId", limit=64)
        label = fields.text(body, "label", required=False, limit=128)
        credential = body.get("credential")
        if not isinstance(credential, dict):
            raise BadRequest("credential (the WebAuthn registration) is required", "credential")
        challenge = self._app.passkeys.take_challenge(who, challenge_id)
        try:
            cid, public_key, count = ceremony.verify_registration(self._rp, credential, challenge)
        except PermissionDenied as exc:
            self._app.passkeys.refused(who, exc)
            raise
        return {"passkeyId": self._app.passkeys.add(who, cid, public_key, count, label)}


def routes(app: App, rp: RelyingParty) -> list[Route]:
    pages = Pages(app, rp)

    def with_id(handler: Any) -> Any:
        async def run(request: Request) -> JSONResponse:
            approval_id = request.path_params["approval_id"]
            return await serve(app, request, lambda who, body: handler(who, body, approval_id), public=True)

        return run

    async def reg_options(request: Request) -> JSONResponse:
        return await serve(app, request, pages.register_options)

    async def reg_finish(request: Request) -> JSONResponse:
        return await serve(app, request, pages.register_finish)

    return [
        Route("/approve/{approval_id}", pages.approve_page, methods=["GET"]),
        Route("/approve/{approval_id}/options", with_id(pages.approval_options), methods=["POST"]),
        Route("/approve/{approval_id}/finish", with_id(pages.approval_finish), methods=["POST"]),
        Route("/passkeys", pages.enrol_page, methods=["GET"]),
        Route("/passkeys/register/options", reg_options, methods=["POST"]),
        Route("/passkeys/register/finish", reg_finish, methods=["POST"]),
    ]
