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

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import JSONResponse

from rsign.domain import context
from rsign.domain.errors import CodeAlreadyUsed, InvalidRequest, RsignError
from rsign.domain.events import Action, Result, event
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
    rid = request.headers.get("x-request-id", "")
    return rid if 0 < len(rid) <= 64 else None


async def json_body(request: Request) -> dict[str, Any]:
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > MAX_BODY:
        raise BadRequest(f"request body over {MAX_BODY} bytes")
    raw = bytearray()
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > MAX_BODY:
            raise BadRequest(f"request body over {MAX_BODY} bytes")
    if not raw.strip():
        return {}
    try:
        data = json.loads(bytes(raw))
    except (ValueError, UnicodeDecodeError):
        raise BadRequest("the request body is not valid JSON") from None
    if not isinstance(data, dict):
        raise BadRequest("the request body must be a JSON object")
    return data


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
    with app.journal.tx() as t:
        t.append(
            event(
                Action.REQUEST_REFUSE,
                Result.FAILURE,
                actor=who.user_id,
                agency=who.agency,
                credential_id=credential_id if isinstance(credential_id, str) else "",
                reason=exc.message,
                details={"method": path, "field": exc.field},
            )
        )


async def serve(app: App, request: Request, handler: Handler, *, public: bool = False) -> JSONResponse:
    """Run ``handler(principal, body)`` for one request and answer JSON (or a CSC error)."""
    early: BadRequest | None = None
    body: dict[str, Any] = {}
    try:
        body = await json_body(request)
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
