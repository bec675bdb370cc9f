"""The one table from domain errors to an HTTP status and a CSC error code.

CSC bodies are ``{"error": code, "error_description": message}`` (CSC API v2 section 10). The
codes follow the CSC specification where it names one (``invalid_request``, ``invalid_otp``,
``access_denied``...) and OAuth 2.0 otherwise (``invalid_token``, ``temporarily_unavailable``).
"""

from __future__ import annotations

from rsign.domain import errors

CSC_ERRORS: list[tuple[type[errors.RsignError], int, str]] = [
    # Subclasses first: the first matching row wins.
    (errors.OtpRejected, 400, "invalid_otp"),
    # A correct code whose step was already used: still invalid for this request, with the wait in
    # the description and a Retry-After header (plumbing.error_response), not counted as a failure.
    (errors.CodeAlreadyUsed, 400, "invalid_otp"),
    (errors.StreamIdle, 408, "request_timeout"),
    (errors.InvalidRequest, 400, "invalid_request"),
    (errors.AuthenticationFailed, 401, "invalid_token"),
    # Another user's credential, a SAD refused (reused, other hashes, expired): forbidden, with
    # the message naming which.
    (errors.PermissionDenied, 403, "access_denied"),
    (errors.NotFound, 404, "not_found"),
    # A locked user, a disabled or revoked credential: the request is right, the state forbids it.
    (errors.FailedPrecondition, 409, "invalid_state"),
    (errors.AlreadyExists, 409, "already_exists"),
    (errors.ResourceExhausted, 429, "too_many_requests"),
    (errors.DeadlineExceeded, 504, "timeout"),
    (errors.Unavailable, 503, "temporarily_unavailable"),
    # Stored data is corrupt; never heals by retrying. The message (the cure) is shown, as on gRPC.
    (errors.AuditIntegrityError, 500, "data_integrity_error"),
    (errors.SecretIntegrityError, 500, "data_integrity_error"),
    (errors.ConfigurationError, 500, "server_error"),
]

INTERNAL = (500, "server_error")
INTERNAL_MESSAGE = "internal error; the request was not completed (see the server log)"


def csc_error(exc: errors.RsignError) -> tuple[int, str]:
    for cls, status, code in CSC_ERRORS:
        if isinstance(exc, cls):
            return status, code
    return INTERNAL


def hides_message(exc: errors.RsignError) -> bool:
    """A configuration error (or an unlisted class) says "bug" to the caller: its text stays in the log."""
    return csc_error(exc) == INTERNAL
