"""The one table from domain errors to gRPC status codes."""

from __future__ import annotations

import grpc

from rsign.domain import errors

STATUS: list[tuple[type[errors.RsignError], grpc.StatusCode]] = [
    (errors.InvalidRequest, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.AuthenticationFailed, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.AuditIntegrityError, grpc.StatusCode.DATA_LOSS),
    (errors.ConfigurationError, grpc.StatusCode.INTERNAL),
]

INTERNAL_MESSAGE = "internal error; the request was not completed (see the server log)"


def status_for(exc: errors.RsignError) -> grpc.StatusCode:
    for cls, code in STATUS:
        if isinstance(exc, cls):
            return code
    return grpc.StatusCode.INTERNAL
