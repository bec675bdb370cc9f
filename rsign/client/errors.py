"""What the SDK raises when the server refuses: the gRPC status and the server's own message."""

from __future__ import annotations

import time
from collections.abc import Callable

import grpc

# The server's trailing metadata key on an already used one-time code (whole seconds).
RETRY_AFTER = "retry-after"


class RsignError(Exception):
    """A call the server refused or could not complete. ``code`` is the gRPC status; ``message`` is
    the server's explanation, written for a person."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(f"{code.name}: {message}")
        self.code = code
        self.message = message


class CodeAlreadyUsed(RsignError):
    """The one-time code was right but already used (ABORTED): wait ``retry_after`` seconds for the
    authenticator's next code. Not counted as a failed attempt by the server."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(grpc.StatusCode.ABORTED, message)
        self.retry_after = retry_after


class BadServerAnswer(RsignError):
    """The server answered something that cannot be right: a signature that does not verify
    against the credential's certificate, or not one signature per hash. Nothing is written from
    such an answer (a signed file with a broken signature is worse than none)."""

    def __init__(self, message: str) -> None:
        super().__init__(grpc.StatusCode.INTERNAL, message)


def from_rpc(err: grpc.RpcError) -> RsignError:
    """The SDK exception for a failed call."""
    code: grpc.StatusCode = err.code()  # type: ignore[attr-defined]
    message = str(err.details() or code.name)  # type: ignore[attr-defined]
    if code == grpc.StatusCode.ABORTED:
        # (key, value) pairs at run time, whatever grpc-stubs' _Metadatum says.
        trailers: tuple[tuple[str, str | bytes], ...] = err.trailing_metadata() or ()  # type: ignore[attr-defined,assignment]
        for key, value in trailers:
            if key == RETRY_AFTER and isinstance(value, str) and value.isdigit():
                return CodeAlreadyUsed(message, int(value))
    return RsignError(code, message)


def count_down(seconds: int, tick: Callable[[int], None], sleep: Callable[[float], None] = time.sleep) -> None:
    """Call ``tick(remaining)`` once a second until ``seconds`` have passed (then ``tick(0)``): what a
    client shows instead of waiting in silence for the next one-time code."""
    for remaining in range(max(seconds, 0), 0, -1):
        tick(remaining)
        sleep(1.0)
    tick(0)
