"""Per-request plumbing of the HTTP face, in one place: the request context (client, request id),
bearer authentication, JSON bodies, and domain errors turned into CSC error bodies.

The domain services block (database, HSM workers), so each request's work runs in Starlette's
thread pool, inside ``rsign.domain.context.request`` exactly as a gRPC call runs inside it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import anyio
from starlette.concurrency import run_in_threadpool
from starlette.datastructures import MutableHeaders
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from rsign.audit.refusals import record_request_refusal
from rsign.domain import context
from rsign.domain.errors import CodeAlreadyUsed, InvalidRequest, RsignError
from rsign.domain.principal import Principal
from rsign.http.errors import INTERNAL_MESSAGE, csc_error, hides_message
from rsign.runtime.app import App

log = logging.getLogger(__name__)

# A CSC request holds at most a few thousand base64 digests; anything larger is refused unread.
MAX_BODY = 2 * 1024 * 1024
CLIENT_MAX = 128  # the audit record's client column


class BadRequest(InvalidRequest):
    """A request the HTTP face refused before any domain call (malformed JSON, a missing or
    mistyped field); recorded as request.refuse when the caller is known."""

    def __init__(self, message: str, field: str = "") -> None:
        super().__init__(message)
        self.field = field


@dataclass
class Answer:
    body: dict[str, Any] = field(default_factory=dict)
    status: int = 200


Handler = Callable[[Principal | None, dict[str, Any]], Answer | dict[str, Any]]


def client_of(request: Request) -> str:
    c = request.client
    return (f"http:{c.host}:{c.port}" if c else "http")[:CLIENT_MAX]


def bearer(request: Request) -> str:
    value = request.headers.get("authorization", "")
    return value[len("Bearer ") :].strip() if value.startswith("Bearer ") else ""


def _request_id(request: Request) -> str | None:
    return context.client_request_id(request.headers.get("x-request-id", ""))


class BodyTooLarge(BadRequest):
    """A body over ``MAX_BODY``: answered 413 as soon as it shows (declared, or read that far)."""


class BodyTooSlow(BadRequest):
    """A body not complete within the read deadline: answered 408."""


async def json_body(request: Request, seconds: float) -> dict[str, Any]:
    """The body as a JSON object; at most ``MAX_BODY`` bytes, all of it within ``seconds`` (a body
    trickled a byte at a time would otherwise hold one of the face's requests in progress for ever)."""
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise BodyTooLarge(f"request body over {MAX_BODY} bytes")
    raw = bytearray()
    with anyio.move_on_after(seconds) as deadline:
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY:
                raise BodyTooLarge(f"request body over {MAX_BODY} bytes")
    if deadline.cancelled_caught:
        raise BodyTooSlow(f"the request body did not arrive within {seconds:g} s")
    if not raw.strip():
        return {}
    try:
        data = json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError, RecursionError):
        # RecursionError: arrays nested deeper than the parser's stack (a few kB of "[[[[").
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    _check_strings(data)
    return data


def _check_strings(data: dict[str, Any]) -> None:
    """JSON may escape a lone UTF-16 surrogate ("\\ud800") or NUL: neither is text that UTF-8,
    PostgreSQL or an audit record can hold, so a request carrying one is refused here (gRPC never
    sees one: protobuf strings are valid UTF-8). Iterative: the depth is the parser's to bound."""
    stack: list[Any] = [data]
    while stack:
        value = stack.pop()
        if isinstance(value, dict):
            stack.extend(value.keys())
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise BadRequest("the request body holds a string that is not valid Unicode") from None
            if "\x00" in value:
                raise BadRequest("the request body holds a string with a NUL character")


# On every answer unless the handler set its own (the pages set a nonce CSP): API answers carry
# bearer tokens and SADs, which no browser or proxy cache may keep; nothing here is meant to be
# framed (clickjacking an approval button), sniffed into another type, or leak its URL (the
# approval link is a capability) in a Referer.
SECURITY_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "x-frame-options": "DENY",
    "referrer-policy": "no-referrer",
    "content-security-policy": "default-src 'none'; frame-ancestors 'none'",
}


class SecurityHeaders:
    """ASGI middleware adding ``SECURITY_HEADERS`` to every response (404 and 405 included)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    headers.setdefault(name, value)
            await send(message)

        await self.app(scope, receive, send_with_headers)


def error_response(exc: RsignError) -> JSONResponse:
    status, code = csc_error(exc)
    if hides_message(exc):
        log.error("HTTP request failed: %s", exc.message)
        return JSONResponse({"error": code, "error_description": INTERNAL_MESSAGE}, status_code=status)
    headers = {"WWW-Authenticate": 'Bearer error="invalid_token"'} if status == 401 else None
    if isinstance(exc, CodeAlreadyUsed):
        headers = {"Retry-After": str(exc.retry_after)}
    return JSONResponse({"error": code, "error_description": exc.message}, status_code=status, headers=headers)


def audit_refusal(app: App, who: Principal, path: str, exc: BadRequest, credential_id: Any) -> None:
    record_request_refusal(
        app.journal, who, method=path, field=exc.field, reason=exc.message, credential_id=credential_id
    )


async def serve(app: App, request: Request, handler: Handler, *, public: bool = False) -> JSONResponse:
    """Run ``handler(principal, body)`` for one request and answer JSON (or a CSC error)."""
    early: BadRequest | None = None
    body: dict[str, Any] = {}
    try:
        body = await json_body(request, app.settings.stream_idle_seconds)
    except ClientDisconnect:
        # Gone before its body was complete: nobody to answer, nothing worth a traceback in the log.
        return JSONResponse({"error": "invalid_request", "error_description": "client disconnected"}, 400)
    except (BodyTooLarge, BodyTooSlow) as exc:
        # Like gRPC's message size limit and idle streams: refused by the transport, before
        # authentication and unrecorded (a flood of them would otherwise fill the audit log).
        status, code = (413, "invalid_request") if isinstance(exc, BodyTooLarge) else (408, "request_timeout")
        return JSONResponse({"error": code, "error_description": exc.message}, status_code=status)
    except BadRequest as exc:
        early = exc
    client, rid, path = client_of(request), _request_id(request), request.url.path

    def work() -> Answer | dict[str, Any]:
        with context.request(client, rid):
            who = None if public else app.auth.authenticate(bearer(request))
            try:
                if early is not None:
                    raise early
                return handler(who, body)
            except BadRequest as exc:
                if who is not None:
                    audit_refusal(app, who, path, exc, body.get("credentialID"))
                raise

    try:
        out = await run_in_threadpool(work)
    except RsignError as exc:
        return error_response(exc)
    except Exception:
        log.exception("%s failed with an unexpected error", path)
        return JSONResponse({"error": "server_error", "error_description": INTERNAL_MESSAGE}, status_code=500)
    answer = out if isinstance(out, Answer) else Answer(out)
    return JSONResponse(answer.body, status_code=answer.status)
