"""The one table from domain errors to gRPC status codes."""

from __future__ import annotations

import grpc

from rsign.domain import errors

STATUS: list[tuple[type[errors.RsignError], grpc.StatusCode]] = [
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.AuthenticationFailed, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    # ABORTED: gRPC's code for a failed sequencer check, which this is (a TOTP step not later than
    # the last one accepted), and the only error mapped to it, so a client can branch on the code.
    # Not UNAVAILABLE or RESOURCE_EXHAUSTED: retry policies resend those, and this code never
    # works again; not PERMISSION_DENIED: the code was right. The wait is in trailing metadata.
    (errors.CodeAlreadyUsed, grpc.StatusCode.ABORTED),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.AuditIntegrityError, grpc.StatusCode.DATA_LOSS),
    # DATA_LOSS, not UNAVAILABLE (which clients retry: this never heals by itself) nor INTERNAL
    # (which says "bug" and whose message the interceptor hides): stored data is corrupt, and the
    # message tells the user the cure (an authenticator reset). Reached only with the right PIN
    # or a valid session, so it tells a guesser nothing.
    (errors.SecretIntegrityError, grpc.StatusCode.DATA_LOSS),
    (errors.ConfigurationError, grpc.StatusCode.INTERNAL),
]

INTERNAL_MESSAGE = "internal error; the request was not completed (see the server log)"


# Trailing metadata key for CodeAlreadyUsed: whole seconds until the next code (as HTTP's Retry-After).
RETRY_AFTER = "retry-after"


def trailers_for(exc: errors.RsignError) -> tuple[tuple[str, str | bytes], ...]:
    """Machine-readable details sent with the status, beside the message meant for a person."""
    if isinstance(exc, errors.CodeAlreadyUsed):
        return ((RETRY_AFTER, str(exc.retry_after)),)
    return ()


def status_for(exc: errors.RsignError) -> grpc.StatusCode:
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL
