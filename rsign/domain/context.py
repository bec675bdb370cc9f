"""Per-request context (request id, client address, actor) carried in a ContextVar.

The API layer sets it for each RPC and the CLI for each command; the audit layer reads it, so
domain code never passes transport details around.
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from dataclasses import dataclass, field, replace

from rsign.domain.limits import AUDIT_FIELD_MAX


def _never() -> bool:
    return False


@dataclass(frozen=True)
class RequestContext:
    request_id: str
    client: str
    actor: str = ""
    agency: str = ""  # the actor's agency: audit records are scoped by it
    # True once the caller is gone (call cancelled, deadline passed, server shutting down): long
    # work (a SignHashStream run) stops taking new work instead of signing for nobody.
    cancelled: Callable[[], bool] = field(default=_never, compare=False, repr=False)


_current: ContextVar[RequestContext | None] = ContextVar("rsign_request", default=None)


def current() -> RequestContext:
    ctx = _current.get()
    # Outside any RPC or CLI command (background threads, library use): the process itself.
    return ctx if ctx is not None else RequestContext(request_id=uuid.uuid4().hex, client="local", actor="system")


def client_request_id(value: object) -> str | None:
    """The caller's own request id (``x-request-id``, gRPC metadata or HTTP header alike), kept when
    it is a string that fits the audit column; otherwise None, and rsign makes one."""
    if isinstance(value, str) and 0 < len(value) <= AUDIT_FIELD_MAX["request_id"]:
        return value
    return None


@contextlib.contextmanager
def request(
    client: str, request_id: str | None = None, actor: str = "", cancelled: Callable[[], bool] = _never
) -> Iterator[RequestContext]:
    ctx = RequestContext(request_id=request_id or uuid.uuid4().hex, client=client, actor=actor, cancelled=cancelled)
    token = _current.set(ctx)
    try:
        yield ctx
    finally:
        try:
            _current.reset(token)
        except ValueError:
            # Left in a copy of the context it was entered in (a response stream closed after
            # its call ended, by rsign.api.streams): that copy is discarded, nothing to restore.
            _current.set(None)


def set_actor(actor: str, agency: str | None = None) -> None:
    ctx = current()
    _current.set(replace(ctx, actor=actor, agency=ctx.agency if agency is None else agency))
