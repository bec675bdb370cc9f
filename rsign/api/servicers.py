"""Thin servicers: convert the request, call the domain, convert the answer. Each class is
``guarded``: its requests were checked against their table (``rsign.api.validation``) first."""

from __future__ import annotations

import threading
from collections.abc import Iterator, Sequence
from typing import Any

import grpc

from rsign.api.capacity import first_message
from rsign.api.interceptors import current_principal
from rsign.api.validation import guarded
from rsign.domain.algorithms import HashAlg, KeyAlgorithm, Scheme
from rsign.domain.approvals import PendingApproval
from rsign.domain.clock import iso_utc
from rsign.domain.errors import InvalidRequest, StreamIdle
from rsign.domain.events import EventFilter
from rsign.domain.principal import Role, Scope
from rsign.domain.records import CredentialView, UserView
from rsign.runtime.app import App
from rsign.signing.activation import Authorization
from rsign.v1 import rsign_pb2 as pb
from rsign.v1 import rsign_pb2_grpc as pb_grpc

_HASH = {pb.SHA256: HashAlg.SHA256, pb.SHA384: HashAlg.SHA384, pb.SHA512: HashAlg.SHA512}
_SCHEME = {pb.RSA_PKCS1_V15: Scheme.RSA_PKCS1_V15, pb.RSA_PSS: Scheme.RSA_PSS, pb.ECDSA: Scheme.ECDSA}


def hash_alg(value: int) -> HashAlg:
    try:
        return _HASH[value]  # type: ignore[index]
    except KeyError:
        raise InvalidRequest("hash_algorithm must be SHA256, SHA384 or SHA512") from None


def scheme(value: int) -> Scheme:
    try:
        return _SCHEME[value]  # type: ignore[index]
    except KeyError:
        raise InvalidRequest("signature_scheme must be RSA_PKCS1_V15, RSA_PSS or ECDSA") from None


def _chain(certificate: bytes, chain: Sequence[bytes]) -> list[bytes]:
    """Leaf first, then its issuers; empty while no certificate is imported (real HSM)."""
    return [certificate, *chain] if certificate else []


def credential_pb(c: CredentialView) -> pb.Credential:
    return pb.Credential(
        credential_id=c.credential_id,
        holder_user_id=c.holder_user_id,
        agency=c.agency,
        key_algorithm=c.key_algorithm,
        status=c.status,
        key_version=c.key_version,
        certificates=_chain(c.certificate, c.chain),
        signature_algorithm_oids=KeyAlgorithm(c.key_algorithm).signature_algorithm_oids(),
        multisign=c.multisign,
        kind=c.kind,
        not_after=int(c.not_after),
        status_reason=c.status_reason,
    )


def authorize_pb(out: Authorization | PendingApproval) -> pb.AuthorizeResponse:
    if isinstance(out, PendingApproval):
        return pb.AuthorizeResponse(handle=out.handle, approval_path=out.path, expires_at=int(out.expires_at))
    return pb.AuthorizeResponse(sad=out.sad, expires_at=int(out.expires_at), key_version=out.key_version)


@guarded("AuthService")
class AuthServicer(pb_grpc.AuthServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    def Login(self, request: pb.LoginRequest, context: grpc.ServicerContext) -> pb.LoginResponse:
        token, expires = self._app.auth.login(request.user_id, request.pin, request.otp)
        return pb.LoginResponse(session_token=token, expires_at=int(expires))

    def Logout(self, request: pb.LogoutRequest, context: grpc.ServicerContext) -> pb.LogoutResponse:
        self._app.auth.logout(current_principal())
        return pb.LogoutResponse()


@guarded("SigningService")
class SigningServicer(pb_grpc.SigningServiceServicer):
    def __init__(self, app: App, stopping: threading.Event | None = None) -> None:
        self._app = app
        self._stopping = stopping or threading.Event()  # set by the server when it begins to stop

    def ListCredentials(
        self, request: pb.ListCredentialsRequest, context: grpc.ServicerContext
    ) -> pb.ListCredentialsResponse:
        creds = self._app.signing.list_credentials(current_principal())
        return pb.ListCredentialsResponse(credentials=[credential_pb(c) for c in creds])

    def GetCredential(self, request: pb.GetCredentialRequest, context: grpc.ServicerContext) -> pb.Credential:
        return credential_pb(self._app.signing.get_credential(current_principal(), request.credential_id))

    def Authorize(self, request: pb.AuthorizeRequest, context: grpc.ServicerContext) -> pb.AuthorizeResponse:
        if request.passkey:
            if request.otp:
                raise InvalidRequest("give an otp or ask for passkey approval, not both")
            return authorize_pb(
                self._app.approvals.request(
                    current_principal(),
                    request.credential_id,
                    hash_alg(request.hash_algorithm),
                    list(request.hashes),
                    list(request.labels),
                    request.description,
                )
            )
        auth = self._app.signing.authorize(
            current_principal(),
            request.credential_id,
            hash_alg(request.hash_algorithm),
            list(request.hashes),
            request.otp,
        )
        return authorize_pb(auth)

    def AuthorizeCheck(self, request: pb.AuthorizeCheckRequest, context: grpc.ServicerContext) -> pb.AuthorizeResponse:
        return authorize_pb(self._app.approvals.wait(current_principal(), request.handle, request.wait_seconds))

    def SignHash(self, request: pb.SignHashRequest, context: grpc.ServicerContext) -> pb.SignHashResponse:
        signed = self._app.signing.sign_hash(
            current_principal(),
            request.credential_id,
            request.sad,
            hash_alg(request.hash_algorithm),
            scheme(request.signature_scheme),
            list(request.hashes),
        )
        return pb.SignHashResponse(signatures=signed.signatures, key_version=signed.key_version)

    def SignHashStream(
        self, request_iterator: Iterator[pb.SignHashStreamRequest], context: grpc.ServicerContext
    ) -> Iterator[pb.SignHashStreamResponse]:
        idle = self._app.settings.stream_idle_seconds
        try:
            # The first message too must come within the idle time (rsign.api.capacity).
            first = first_message(request_iterator, idle)
        except StreamIdle as exc:
            self._app.signing.stream_idle_before_start(current_principal(), exc)
            raise
        if first is None:
            return

        def chunks() -> Iterator[list[bytes]]:
            yield list(first.hashes)
            for msg in request_iterator:
                yield list(msg.hashes)

        def deadline_passed(slack: float) -> bool:
            left = context.time_remaining()
            return left is not None and left <= slack

        for chunk in self._app.signing.sign_stream(
            current_principal(),
            first.credential_id,
            first.sad,
            hash_alg(first.hash_algorithm),
            scheme(first.signature_scheme),
            chunks(),
            deadline_passed,
            idle_seconds=idle,
            shutting_down=self._stopping.is_set,
        ):
            yield pb.SignHashStreamResponse(
                offset=chunk.offset,
                signatures=chunk.signatures,
                errors=[pb.ItemError(index=i, reason=r) for i, r in chunk.errors],
                key_version=chunk.key_version,
            )


def event_filter(f: pb.EventFilter) -> EventFilter:
    def iso(t: int) -> str:
        return iso_utc(float(t)) if t else ""

    if f.result and f.result not in ("success", "failure"):
        raise InvalidRequest("result must be 'success' or 'failure'")
    return EventFilter(
        from_ts=iso(f.from_time),
        to_ts=iso(f.to_time),
        actor=f.user_id,
        credential_id=f.credential_id,
        agency=f.agency,
        action=f.action,
        result=f.result,
    )


def audit_event_pb(r: dict[str, Any]) -> pb.AuditEvent:
    return pb.AuditEvent(
        seq=r["seq"],
        time=r["ts"],
        actor=r["actor"],
        agency=r["agency"],
        action=r["action"],
        result=r["result"],
        credential_id=r["credential_id"],
        key_version=r["key_version"],
        digest=r["digest"],
        reason=r["reason"],
        request_id=r["request_id"],
        client=r["client"],
        details_json=r["details"],
        hash=r["hash"],
    )


@guarded("AuditService")
class AuditServicer(pb_grpc.AuditServiceServicer):
    def __init__(self, app: App) -> None:
        self._app = app

    def ListEvents(self, request: pb.ListEventsRequest, context: grpc.ServicerContext) -> pb.ListEventsResponse:
        page = self._app.audit.list_events(
            current_principal(), event_filter(request.filter), request.page_size, request.page_token
        )
        return pb.ListEventsResponse(events=[audit_event_pb(r) for r in page.events], next_page_token=page.next_token)

    def ExportEvents(self, request: pb.ExportEventsRequest, context: grpc.ServicerContext) -> Iterator[pb.ExportChunk]:
        buf = bytearray()
        for line in self._app.audit.export(current_principal(), event_filter(request.filter)):
            buf += line
            if len(buf) >= 64 * 1024:
                yield pb.ExportChunk(data=bytes(buf))
                buf.clear()
        if buf:
            yield pb.ExportChunk(data=bytes(buf))

    def VerifyLog(self, request: pb.VerifyLogRequest, context: grpc.ServicerContext) -> pb.VerifyLogResponse:
        rep = self._app.audit.verify_log(current_principal())
        return pb.VerifyLogResponse(
            ok=rep.ok,
            records=rep.records,
            head_seq=rep.head_seq,
            bad_seq=rep.bad_seq or 0,
            problem=rep.problem,
            checkpoints=rep.checkpoints,
            last_checkpoint_seq=rep.last_checkpoint_seq,
        )


def user_pb(u: UserView) -> pb.User:
    return pb.User(
        user_id=u.user_id, name=u.name, agency=u.agency, role=u.role, status=u.status, locked=u.locked, scope=u.scope
    )


@guarded("AdminService")
class AdminServicer(pb_grpc.AdminServiceServicer):
    """Thin: every rule lives in rsign.admin (policy) and the domain services (audit)."""

    def __init__(self, app: App) -> None:
        self._app = app
        self._admin = app.admin

    def EnrolUser(self, request: pb.EnrolUserRequest, context: grpc.ServicerContext) -> pb.EnrolUserResponse:
        enr = self._admin.enrol(
            current_principal(),
            request.user_id,
            request.name,
            request.pin,
            request.agency,
            request.role or Role.SIGNER,
            request.scope or Scope.AGENCY,
        )
        return pb.EnrolUserResponse(user_id=enr.user_id, otpauth_uri=enr.otpauth_uri)

    def SuspendUser(self, request: pb.UserActionRequest, context: grpc.ServicerContext) -> pb.User:
        return user_pb(self._admin.suspend(current_principal(), request.user_id, request.reason))

    def ReactivateUser(self, request: pb.UserActionRequest, context: grpc.ServicerContext) -> pb.User:
        return user_pb(self._admin.reactivate(current_principal(), request.user_id))

    def UnlockUser(self, request: pb.UserActionRequest, context: grpc.ServicerContext) -> pb.User:
        return user_pb(self._admin.unlock(current_principal(), request.user_id))

    def ResetTotp(self, request: pb.UserActionRequest, context: grpc.ServicerContext) -> pb.EnrolUserResponse:
        enr = self._admin.reset_totp(current_principal(), request.user_id)
        return pb.EnrolUserResponse(user_id=enr.user_id, otpauth_uri=enr.otpauth_uri)

    def MoveUser(self, request: pb.MoveUserRequest, context: grpc.ServicerContext) -> pb.MoveUserResponse:
        res = self._admin.move(current_principal(), request.user_id, request.new_agency)
        return pb.MoveUserResponse(user=user_pb(res.user), revoked_credentials=res.revoked)

    def RetireUser(self, request: pb.UserActionRequest, context: grpc.ServicerContext) -> pb.MoveUserResponse:
        res = self._admin.retire(current_principal(), request.user_id)
        return pb.MoveUserResponse(user=user_pb(res.user), revoked_credentials=res.revoked)

    def SearchUsers(self, request: pb.SearchUsersRequest, context: grpc.ServicerContext) -> pb.SearchUsersResponse:
        users = self._admin.search_users(
            current_principal(), request.agency, request.name, request.status, request.limit or 100
        )
        return pb.SearchUsersResponse(users=[user_pb(u) for u in users])

    def GenerateKey(self, request: pb.GenerateKeyRequest, context: grpc.ServicerContext) -> pb.Credential:
        return credential_pb(
            self._admin.generate(
                current_principal(),
                request.credential_id,
                request.algorithm,
                request.holder_user_id,
                request.multisign or None,
                request.seal_agency,
                list(request.seal_user_ids),
            )
        )

    def CreateCsr(self, request: pb.CredentialRequest, context: grpc.ServicerContext) -> pb.CsrResponse:
        return pb.CsrResponse(pem=self._admin.csr(current_principal(), request.credential_id).decode("ascii"))

    def ImportCertificate(self, request: pb.ImportCertificateRequest, context: grpc.ServicerContext) -> pb.Credential:
        return credential_pb(
            self._admin.import_certificate(current_principal(), request.credential_id, request.certificate_chain)
        )

    def RotateKey(self, request: pb.CredentialRequest, context: grpc.ServicerContext) -> pb.Credential:
        return credential_pb(self._admin.rotate(current_principal(), request.credential_id))

    def DisableCredential(self, request: pb.CredentialRequest, context: grpc.ServicerContext) -> pb.Credential:
        return credential_pb(self._admin.set_enabled(current_principal(), request.credential_id, False, request.reason))

    def EnableCredential(self, request: pb.CredentialRequest, context: grpc.ServicerContext) -> pb.Credential:
        return credential_pb(self._admin.set_enabled(current_principal(), request.credential_id, True, request.reason))

    def RevokeCredential(self, request: pb.RevokeCredentialRequest, context: grpc.ServicerContext) -> pb.Credential:
        return credential_pb(self._admin.revoke(current_principal(), request.credential_id, request.reason))

    def DestroyCredential(
        self, request: pb.CredentialRequest, context: grpc.ServicerContext
    ) -> pb.DestroyCredentialResponse:
        return pb.DestroyCredentialResponse(state=self._admin.destroy(current_principal(), request.credential_id))

    def SetSealUsers(self, request: pb.SetSealUsersRequest, context: grpc.ServicerContext) -> pb.Credential:
        return credential_pb(
            self._admin.set_seal_users(current_principal(), request.credential_id, list(request.user_ids))
        )

    def GetKeyHistory(self, request: pb.CredentialRequest, context: grpc.ServicerContext) -> pb.KeyHistoryResponse:
        versions = self._admin.history(current_principal(), request.credential_id)
        return pb.KeyHistoryResponse(
            versions=[
                pb.KeyVersion(version=v.version, status=v.status, certificates=_chain(v.certificate, v.chain))
                for v in versions
            ]
        )

    def SearchCredentials(
        self, request: pb.SearchCredentialsRequest, context: grpc.ServicerContext
    ) -> pb.SearchCredentialsResponse:
        creds = self._admin.search_credentials(
            current_principal(),
            request.agency,
            request.holder_name,
            request.status,
            request.expires_within_days,
            request.limit or 100,
        )
        return pb.SearchCredentialsResponse(credentials=[credential_pb(c) for c in creds])
