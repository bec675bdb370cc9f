"""One tree of domain errors.

Domain packages raise these; ``rsign.api.errors`` maps each class to a gRPC status in one table.
Messages are written for a person calling the API: they never carry secrets or internals.
"""

from __future__ import annotations


class RsignError(Exception):
    """Root of every error rsign raises on purpose."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidRequest(RsignError):
    """The request itself is malformed (bad digest length, unknown enum, too many hashes)."""


class AuthenticationFailed(RsignError):
    """No, expired or revoked session, or failed login."""


class PermissionDenied(RsignError):
    """Authenticated, but not allowed: SAD refused, foreign credential, wrong OTP."""


class OtpRejected(PermissionDenied):
    """A wrong or expired one-time code (its own class so that the CSC face can answer
    ``invalid_otp``; gRPC sees a PermissionDenied like before)."""


class CodeAlreadyUsed(RsignError):
    """A correct one-time code whose time step was already used (by this caller's previous step or a
    concurrent request). Not a wrong code: the caller knows the seed, it only has to wait for the
    authenticator's next code, ``retry_after`` seconds from now."""

    def __init__(self, retry_after: int) -> None:
        super().__init__(
            f"this code was already used; the next one appears in {retry_after} s"
            if retry_after > 0
            else "this code was already used; enter the one your authenticator shows now"
        )
        self.retry_after = retry_after


class NotFound(RsignError):
    """The named object does not exist."""


class FailedPrecondition(RsignError):
    """The object exists but is in a state that forbids the operation (locked user, disabled key)."""


class AlreadyExists(RsignError):
    """Creating something that already exists."""


class ResourceExhausted(RsignError):
    """A configured limit was hit."""


class DeadlineExceeded(RsignError):
    """The caller's deadline passed; work not yet started is abandoned."""


class StreamIdle(DeadlineExceeded):
    """The client sent nothing on a stream for the configured idle time, so the server closed it
    (the server's own deadline on the client: DEADLINE_EXCEEDED, a status every client handles)."""

    def __init__(self, seconds: float) -> None:
        super().__init__(f"no message for {seconds:g} s: stream closed")
        self.seconds = seconds


class Unavailable(RsignError):
    """A dependency rsign cannot work without is down: the HSM or the audit store."""


class HsmUnavailable(Unavailable):
    """The HSM (or the worker process holding the request) failed."""


class AuditUnavailable(Unavailable):
    """The audit record could not be committed; the operation is refused (fail closed)."""


class AuditHalted(AuditUnavailable):
    """The audit log was found behind its HSM anchor (rolled back or trimmed) while serving: every
    operation is refused, as when the store is down, until an operator accepts or repairs it."""


class AuditIntegrityError(RsignError):
    """The audit log failed verification: rsign will not sign a checkpoint over it."""


class AuditRollback(AuditIntegrityError):
    """The database's audit log is behind, or differs from, the checkpoint anchored in the HSM."""


class SecretIntegrityError(RsignError):
    """A sealed secret (a user's TOTP seed) failed its integrity check: the stored blob was altered,
    truncated or copied from another record. Retrying cannot help; an administrator must re-enrol
    the secret (reset the authenticator)."""


class ConfigurationError(RsignError):
    """The configuration is incomplete or contradictory."""
