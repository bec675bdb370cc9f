"""What every request may carry: one table of rules per request type, checked before the servicer
runs, so nothing oversized, out of range or unknown reaches the database or the HSM.

The limits and the checker are in ``rsign.domain.limits``; this module names the fields of each
rsign.v1 request. ``guarded`` puts the check in front of every RPC method of a servicer class;
a request that cannot be decoded arrives as ``Unparsable`` (``rsign.api.decoding``) and is refused
like any other bad field. A refusal is ``RequestRejected`` (INVALID_ARGUMENT through the one
error table); when the caller is authenticated it is audited (``request.refuse``), in a record
whose size ``AuditEvent`` bounds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any, Protocol, TypeVar

from google.protobuf.message import Message

from rsign.api.decoding import Unparsable
from rsign.api.interceptors import PUBLIC_METHODS, current_principal
from rsign.audit.refusals import record_request_refusal
from rsign.domain.limits import (
    ACTION_MAX,
    CERT_CHAIN_MAX,
    DIGEST_MAX,
    EXPIRY_DAYS_MAX,
    ID_MAX,
    KEYWORD_MAX,
    NAME_MAX,
    OTP_MAX,
    PIN_MAX,
    REASON_MAX,
    SEARCH_MAX,
    TOKEN_MAX,
    USER_IDS_MAX,
    Blob,
    Blobs,
    Choice,
    Coerced,
    IntRange,
    Nested,
    RequestRejected,
    Rules,
    Text,
    Texts,
    UnixTime,
    check,
)
from rsign.domain.settings import Settings
from rsign.runtime.app import App
from rsign.signing.approvals import DESCRIPTION_MAX, LABEL_MAX
from rsign.v1 import rsign_pb2 as pb


def _multisign(s: Settings) -> int:
    return s.multisign_max


def _names(enum: Any, *, unspecified: bool) -> dict[int, str]:
    return {v.number: v.name for v in enum.DESCRIPTOR.values if unspecified or v.number != 0}


HASHES = _names(pb.HashAlgorithm, unspecified=False)
SCHEMES = _names(pb.SignatureScheme, unspecified=False)

_FILTER = Rules(
    {
        "from_time": UnixTime(),
        "to_time": UnixTime(),
        "user_id": Text(ID_MAX),
        "credential_id": Text(ID_MAX),
        "agency": Text(NAME_MAX),
        "action": Text(ACTION_MAX),
        "result": Text(KEYWORD_MAX),
    }
)
_DIGESTS = Blobs(_multisign, DIGEST_MAX)

REQUESTS: Mapping[type[Message], Rules] = {
    # AuthService
    pb.LoginRequest: Rules({"user_id": Text(ID_MAX, required=True), "pin": Text(PIN_MAX), "otp": Text(OTP_MAX)}),
    pb.LogoutRequest: Rules(),
    # SigningService
    pb.ListCredentialsRequest: Rules(),
    pb.GetCredentialRequest: Rules({"credential_id": Text(ID_MAX, required=True)}),
    pb.AuthorizeRequest: Rules(
        {
            "credential_id": Text(ID_MAX, required=True),
            "hash_algorithm": Choice(HASHES),
            "hashes": _DIGESTS,
            "otp": Text(OTP_MAX),
            "passkey": Coerced(),
            "labels": Texts(_multisign, LABEL_MAX),
            "description": Text(DESCRIPTION_MAX),
        }
    ),
    pb.AuthorizeCheckRequest: Rules({"handle": Text(TOKEN_MAX, required=True), "wait_seconds": IntRange(0, 60)}),
    pb.SignHashRequest: Rules(
        {
            "credential_id": Text(ID_MAX, required=True),
            "sad": Text(TOKEN_MAX),
            "hash_algorithm": Choice(HASHES),
            "signature_scheme": Choice(SCHEMES),
            "hashes": _DIGESTS,
        }
    ),
    # Every message of the stream; the first one also meets STREAM_FIRST.
    pb.SignHashStreamRequest: Rules(
        {
            "credential_id": Text(ID_MAX),
            "sad": Text(TOKEN_MAX),
            "hash_algorithm": Choice(_names(pb.HashAlgorithm, unspecified=True)),
            "signature_scheme": Choice(_names(pb.SignatureScheme, unspecified=True)),
            "hashes": _DIGESTS,
        }
    ),
    # AuditService
    pb.ListEventsRequest: Rules({"filter": Nested(_FILTER), "page_size": Coerced(), "page_token": Text(TOKEN_MAX)}),
    pb.ExportEventsRequest: Rules({"filter": Nested(_FILTER)}),
    pb.VerifyLogRequest: Rules(),
    # AdminService
    pb.EnrolUserRequest: Rules(
        {
            "user_id": Text(ID_MAX, required=True),
            "name": Text(NAME_MAX),
            "agency": Text(NAME_MAX),
            "pin": Text(PIN_MAX),
            "role": Text(KEYWORD_MAX),
            "scope": Text(KEYWORD_MAX),
        }
    ),
    pb.UserActionRequest: Rules({"user_id": Text(ID_MAX, required=True), "reason": Text(REASON_MAX)}),
    pb.MoveUserRequest: Rules({"user_id": Text(ID_MAX, required=True), "new_agency": Text(NAME_MAX)}),
    pb.SearchUsersRequest: Rules(
        {"agency": Text(NAME_MAX), "name": Text(SEARCH_MAX), "status": Text(KEYWORD_MAX), "limit": Coerced()}
    ),
    pb.GenerateKeyRequest: Rules(
        {
            "credential_id": Text(ID_MAX, required=True),
            "algorithm": Text(KEYWORD_MAX),
            "holder_user_id": Text(ID_MAX),
            "multisign": IntRange(0, _multisign),  # 0: the default
            "seal_agency": Text(NAME_MAX),
            "seal_user_ids": Texts(USER_IDS_MAX, ID_MAX),
        }
    ),
    pb.CredentialRequest: Rules({"credential_id": Text(ID_MAX, required=True), "reason": Text(REASON_MAX)}),
    pb.ImportCertificateRequest: Rules(
        {"credential_id": Text(ID_MAX, required=True), "certificate_chain": Blob(CERT_CHAIN_MAX)}
    ),
    pb.RevokeCredentialRequest: Rules({"credential_id": Text(ID_MAX, required=True), "reason": Text(REASON_MAX)}),
    pb.SetSealUsersRequest: Rules(
        {"credential_id": Text(ID_MAX, required=True), "user_ids": Texts(USER_IDS_MAX, ID_MAX)}
    ),
    pb.SearchCredentialsRequest: Rules(
        {
            "agency": Text(NAME_MAX),
            "holder_name": Text(SEARCH_MAX),
            "status": Text(KEYWORD_MAX),
            "expires_within_days": IntRange(0, EXPIRY_DAYS_MAX, "days"),
            "limit": Coerced(),
        }
    ),
}

# The first message of a stream names what the whole stream signs with.
STREAM_FIRST: Mapping[type[Message], Rules] = {
    pb.SignHashStreamRequest: Rules(
        {
            "credential_id": Text(ID_MAX, required=True),
            "hash_algorithm": Choice(HASHES),
            "signature_scheme": Choice(SCHEMES),
        }
    ),
}


# -- the check -------------------------------------------------------------------------------


def validate(request: Any, settings: Settings, first: bool = False) -> None:
    """Raise ``RequestRejected`` if ``request`` breaks its table (``first``: the first message of
    a stream, which also meets ``STREAM_FIRST``)."""
    if isinstance(request, Unparsable):
        raise request.error()
    rules = REQUESTS.get(type(request))
    if rules is None:  # fail closed: a request type nobody described is not served
        raise RequestRejected("", f"{type(request).__name__} is not a request this service accepts")
    check(request, rules, settings)
    if first and type(request) in STREAM_FIRST:
        check(request, STREAM_FIRST[type(request)], settings)


class _Checked:
    """A request stream whose messages are validated as they are read (by whichever thread)."""

    def __init__(self, source: Iterator[Any], settings: Settings) -> None:
        self._source = source
        self._settings = settings
        self.count = 0
        self.first: Any = None

    def __iter__(self) -> _Checked:
        return self

    def __next__(self) -> Any:
        msg = next(self._source)
        self.count += 1
        if self.count == 1:
            self.first = msg
        validate(msg, self._settings, first=self.count == 1)
        return msg


class _HasApp(Protocol):
    _app: App


S = TypeVar("S")


def _refused(app: App, method: str, request: Any, exc: RequestRejected) -> None:
    """Audit a refusal when the caller is authenticated. A public method's caller is nobody yet:
    nothing is written, so a flood of malformed logins costs no storage."""
    if method in PUBLIC_METHODS:
        return
    record_request_refusal(
        app.journal,
        current_principal(),
        method=method.rsplit(".", 1)[-1],
        field=exc.field,
        reason=exc.message,
        credential_id=getattr(request, "credential_id", ""),
    )


def _guard(method: str, fn: Callable[..., Any], client_streaming: bool, server_streaming: bool) -> Callable[..., Any]:
    if client_streaming:
        # A refusal after the first message ends a running batch, whose batch.end record says
        # why; only a refused first message (nothing started yet) needs its own record.
        def stream(self: _HasApp, requests: Iterator[Any], context: Any) -> Iterator[Any]:
            checked = _Checked(requests, self._app.settings)
            try:
                yield from fn(self, checked, context)
            except RequestRejected as exc:
                if checked.count <= 1:
                    _refused(self._app, method, checked.first, exc)
                raise

        return stream

    def screen(self: _HasApp, request: Any) -> None:
        try:
            validate(request, self._app.settings)
        except RequestRejected as exc:
            _refused(self._app, method, request, exc)
            raise

    if server_streaming:

        def unary_stream(self: _HasApp, request: Any, context: Any) -> Iterator[Any]:
            screen(self, request)
            yield from fn(self, request, context)

        return unary_stream

    def unary(self: _HasApp, request: Any, context: Any) -> Any:
        screen(self, request)
        return fn(self, request, context)

    return unary


def guarded(service: str) -> Callable[[type[S]], type[S]]:
    """Class decorator: every RPC of rsign.v1.``service`` validates its request before the method
    runs. The class must define every RPC of the service and hold the ``App`` as ``_app``."""
    desc = pb.DESCRIPTOR.services_by_name[service]

    def decorate(cls: type[S]) -> type[S]:
        for m in desc.methods:
            fn = cls.__dict__.get(m.name)
            if fn is None:  # a servicer that inherits grpc's UNIMPLEMENTED stub: fail at import
                raise TypeError(f"{cls.__name__} does not implement {desc.full_name}.{m.name}")
            path = f"/{desc.full_name}/{m.name}"
            setattr(cls, m.name, _guard(path, fn, m.client_streaming, m.server_streaming))
        return cls

    return decorate
