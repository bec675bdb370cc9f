"""Per-request context (request id, client address, actor) carried in a ContextVar.

The API layer sets it for each RPC and the CLI for each command; the audit layer reads it, so
domain code never passes transport details around.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    client: str
    actor: str = ""
    agency: str = ""  # the actor's agency: audit records are scoped by it


_current: ContextVar[RequestContext | None] = ContextVar("rsign_request", default=None)


def current() -> RequestContext:
    ctx = _current.get()
    # Outside any RPC or CLI command (background threads, library use): the process itself.
    return ctx if ctx is not None else RequestContext(request_id=uuid.uuid4().hex, client="local", actor="system")


@contextlib.contextmanager
def request(client: str, request_id: str | None = None, actor: str = "") -> Iterator[RequestContext]:
    ctx = RequestContext(request_id=request_id or uuid.uuid4().hex, client=client, actor=actor)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        _current.reset(token)


def set_actor(actor: str, agency: str | None = None) -> None:
    ctx = current()
    _current.set(replace(ctx, actor=actor, agency=ctx.agency if agency is None else agency))
