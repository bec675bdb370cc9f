"""Per-RPC plumbing in one place: request context, bearer authentication, error mapping, and the
record of each call for the access log and the metrics.

Servicer methods receive an authenticated ``Principal`` (for RPCs that need one) through
``current_principal()``, and raise domain errors; this interceptor turns those into statuses.
Every call it ends is reported to its observers as a ``CallRecord``: method, status, duration,
request id, principal and client, never anything the caller sent (no PIN, OTP, token or SAD).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import grpc

from rsign.api.capacity import Admission
from rsign.api.decoding import tolerant
from rsign.api.errors import INTERNAL_MESSAGE, status_for, trailers_for
from rsign.api.listener import client_identity
from rsign.api.streams import OpenStreams
from rsign.auth.service import AuthService
from rsign.domain import context
from rsign.domain.errors import AuthenticationFailed, RsignError
from rsign.domain.principal import Principal

log = logging.getLogger(__name__)

_principal: ContextVar[Principal | None] = ContextVar("rsign_principal", default=None)

# RPCs callable without a session.
PUBLIC_METHODS = frozenset(
    {
        "/rsign.v1.AuthService/Login",
        "/grpc.health.v1.Health/Check",
        "/grpc.health.v1.Health/Watch",
        "/grpc.health.v1.Health/List",
        # Server reflection, when enabled (``start_server``): the API's schema, public in the
        # .proto files anyway; unregistered (UNIMPLEMENTED) when it is off.
        "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
        "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    }
)


@dataclass(frozen=True)
class CallRecord:
    method: str
    code: str  # the gRPC status name: OK, PERMISSION_DENIED, ...
    seconds: float
    request_id: str
    principal: str  # the authenticated user id; "" for a public call or one refused before
    role: str
    client: str
    streaming: bool


CallObserver = Callable[[CallRecord], None]


def current_principal() -> Principal:
    p = _principal.get()
    if p is None:  # only reachable if a public RPC asks for a principal: a programming error
        raise AuthenticationFailed("no session")
    return p


def _bearer(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str:
    for key, value in metadata or ():
        if key == "authorization" and isinstance(value, str) and value.startswith("Bearer "):
            return value[len("Bearer ") :].strip()
    return ""


def _request_id(metadata: tuple[tuple[str, str | bytes], ...] | None) -> str | None:
    for key, value in metadata or ():
        if key == "x-request-id":
            return context.client_request_id(value)
    return None


class ServiceInterceptor(grpc.ServerInterceptor):  # type: ignore[misc,type-arg]
    def __init__(self, auth: AuthService, admission: Admission, observers: Sequence[CallObserver] = ()) -> None:
        self._auth = auth
        self.streams = OpenStreams()  # closed when their call ends; shutdown waits for them
        self._admission = admission
        self._observers = tuple(observers)
        # The wrapped handler of each method, built on its first call: gRPC asks for it on every
        # call, and rebuilding it cost a measurable share of a unary call. Bounded: only the
        # server's registered methods have a handler (an unknown method gets None, not cached).
        self._handlers: dict[str, Any] = {}

    def intercept_service(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        method: str = details.method
        handler = self._handlers.get(method)
        if handler is None:
            handler = self._wrap(continuation, details)
            if handler is not None:
                self._handlers[method] = handler
        return handler

    def _wrap(self, continuation: Callable[[Any], Any], details: Any) -> Any:
        handler = continuation(details)
        if handler is None:
            return None
        method: str = details.method
        public = method in PUBLIC_METHODS

        def setup(ctx: grpc.ServicerContext) -> Any:
            md = ctx.invocation_metadata()
            rc = context.request(client_identity(ctx), _request_id(md), cancelled=lambda: not ctx.is_active())
            rc.__enter__()
            if not public:
                _principal.set(self._auth.authenticate(_bearer(md)))
            return rc

        def fail(ctx: grpc.ServicerContext, exc: BaseException) -> None:
            if isinstance(exc, RsignError):
                code = status_for(exc)
                if code is grpc.StatusCode.INTERNAL:
                    log.error("%s failed: %s", method, exc.message)
                    ctx.abort(code, INTERNAL_MESSAGE)
                trailers = trailers_for(exc)
                if trailers:
                    ctx.set_trailing_metadata(trailers)
                ctx.abort(code, exc.message)
            log.exception("%s failed with an unexpected error", method)
            ctx.abort(grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE)

        @contextlib.contextmanager
        def rpc(ctx: grpc.ServicerContext, streaming: bool) -> Iterator[None]:
            """Admission, request context and principal for the call; domain errors become statuses."""
            rc = None
            started = time.monotonic()
            outcome = "OK"
            try:
                with contextlib.ExitStack() as held:
                    if not public:
                        # Server-wide budgets before authentication (which reads the database);
                        # public calls (Health.Check, Login) are never refused here.
                        held.callback(self._admission.admit_server(streaming))
                    rc = setup(ctx)
                    if not public:
                        held.callback(self._admission.admit_caller(current_principal(), streaming))
                    yield
            except GeneratorExit:
                outcome = "CANCELLED"  # a stream closed before its end: the caller went away
                raise
            except Exception as exc:
                outcome = "UNKNOWN"  # unless abort() below (or the servicer's) set the status
                if _is_abort(exc):
                    raise
                fail(ctx, exc)
            finally:
                if self._observers:
                    self._report(ctx, method, streaming, time.monotonic() - started, outcome)
                _principal.set(None)
                if rc is not None:
                    rc.__exit__(None, None, None)

        if handler.unary_unary:
            inner = handler.unary_unary

            def unary_unary(request: Any, ctx: grpc.ServicerContext) -> Any:
                with rpc(ctx, streaming=False):
                    return inner(request, ctx)

            return grpc.unary_unary_rpc_method_handler(
                unary_unary, tolerant(method, handler.request_deserializer), handler.response_serializer
            )
        # Streaming responses: the generator runs the whole call inside the context.
        for kind, make in (
            ("stream_stream", grpc.stream_stream_rpc_method_handler),
            ("unary_stream", grpc.unary_stream_rpc_method_handler),
        ):
            inner_stream = getattr(handler, kind)
            if not inner_stream or (public and kind == "unary_stream"):
                continue

            def streaming(request: Any, ctx: grpc.ServicerContext, _inner: Any = inner_stream) -> Iterator[Any]:
                with rpc(ctx, streaming=True):
                    yield from _inner(request, ctx)

            guarded = self.streams.wrap(streaming)  # closed when the call ends, even if gRPC abandons it
            return make(guarded, tolerant(method, handler.request_deserializer), handler.response_serializer)
        if not public:
            # Fail closed: an RPC shape this interceptor cannot authenticate is never served.
            raise RuntimeError(f"{method}: unsupported RPC shape for an authenticated method")
        # Health Watch (unary-stream): public, unwrapped. grpcio-health serves it without holding a
        # thread (non-blocking handler), so it needs no stream slot either.
        return handler


    def _report(self, ctx: grpc.ServicerContext, method: str, streaming: bool, seconds: float, outcome: str) -> None:
        # Set by abort() (domain errors included) or by the servicer; grpc-stubs lack code().
        code = ctx.code()  # type: ignore[attr-defined]
        rc = context.current()  # the call's (setup entered it first thing)
        who = _principal.get()
        record = CallRecord(
            method=method,
            code=code.name if code is not None else outcome,
            seconds=seconds,
            request_id=rc.request_id,
            principal=who.user_id if who is not None else "",
            role=str(who.role) if who is not None else "",
            client=rc.client,
            streaming=streaming,
        )
        for observe in self._observers:
            try:
                observe(record)
            except Exception:  # an observer never fails a call
                log.exception("call observer failed")


def _is_abort(exc: BaseException) -> bool:
    # ServicerContext.abort raises a bare Exception subclass private to grpc; let it through.
    return type(exc).__module__.startswith("grpc")
