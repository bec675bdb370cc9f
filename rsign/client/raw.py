"""The protobuf-level client: one method per RPC, protobuf messages in and out, ``grpc.RpcError`` on
refusal. The SDK (``rsign.client.Client``) is built on it; the tests, the benchmark and the
administration CLI use it directly (they check status codes and call stubs, e.g. ``.admin``)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import grpc

from rsign.v1 import rsign_pb2 as pb
from rsign.v1 import rsign_pb2_grpc as pb_grpc

HASH = {"SHA256": pb.SHA256, "SHA384": pb.SHA384, "SHA512": pb.SHA512}
SCHEME = {"RSA_PKCS1_V15": pb.RSA_PKCS1_V15, "RSA_PSS": pb.RSA_PSS, "ECDSA": pb.ECDSA}


def channel(
    target: str,
    ca_file: str | Path | None = None,
    cert_file: str | Path | None = None,
    key_file: str | Path | None = None,
) -> grpc.Channel:
    """A channel to ``target``: TLS when ``ca_file`` (the CA that issued the server's certificate)
    is given, presenting ``cert_file``/``key_file`` when the server requires client certificates;
    plaintext otherwise (a server on this machine's loopback address)."""
    if (cert_file is None) != (key_file is None):
        raise ValueError("a client certificate needs its key, and a key its certificate")
    if ca_file is None:
        if cert_file is not None:
            raise ValueError("a client certificate is only sent over TLS: give the server's CA too")
        return grpc.insecure_channel(target)
    creds = grpc.ssl_channel_credentials(
        root_certificates=Path(ca_file).read_bytes(),
        private_key=Path(key_file).read_bytes() if key_file is not None else None,
        certificate_chain=Path(cert_file).read_bytes() if cert_file is not None else None,
    )
    return grpc.secure_channel(target, creds)


class RsignClient:
    def __init__(
        self,
        target: str | grpc.Channel,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        *,
        timeout: float | None = None,
    ) -> None:
        """``timeout``: the deadline (seconds) of every call that names none; None waits forever."""
        self.timeout = timeout
        self.channel = channel(target, ca_file, cert_file, key_file) if isinstance(target, str) else target
        self.auth = pb_grpc.AuthServiceStub(self.channel)
        self.signing = pb_grpc.SigningServiceStub(self.channel)
        self.audit = pb_grpc.AuditServiceStub(self.channel)
        self.admin = pb_grpc.AdminServiceStub(self.channel)
        self.token = ""

    def md(self) -> list[tuple[str, str]]:
        """Call metadata carrying the session (for calling the stubs directly)."""
        return self._md()

    def _md(self) -> list[tuple[str, str]]:
        return [("authorization", f"Bearer {self.token}")] if self.token else []

    def login(self, user_id: str, pin: str, otp: str) -> pb.LoginResponse:
        resp = self.auth.Login(pb.LoginRequest(user_id=user_id, pin=pin, otp=otp), timeout=self.timeout)
        self.token = resp.session_token
        return resp

    def logout(self) -> None:
        self.auth.Logout(pb.LogoutRequest(), metadata=self._md(), timeout=self.timeout)
        self.token = ""

    def list_credentials(self) -> list[pb.Credential]:
        return list(
            self.signing.ListCredentials(
                pb.ListCredentialsRequest(), metadata=self._md(), timeout=self.timeout
            ).credentials
        )

    def get_credential(self, credential_id: str) -> pb.Credential:
        req = pb.GetCredentialRequest(credential_id=credential_id)
        return self.signing.GetCredential(req, metadata=self._md(), timeout=self.timeout)

    def authorize(
        self, credential_id: str, hashes: list[bytes], otp: str, hash_alg: str = "SHA256"
    ) -> pb.AuthorizeResponse:
        req = pb.AuthorizeRequest(credential_id=credential_id, hash_algorithm=HASH[hash_alg], hashes=hashes, otp=otp)
        return self.signing.Authorize(req, metadata=self._md(), timeout=self.timeout)

    def authorize_passkey(
        self, credential_id: str, hashes: list[bytes], labels: list[str] | None = None, hash_alg: str = "SHA256"
    ) -> pb.AuthorizeResponse:
        """Ask for the official's passkey approval: the answer carries a handle, not yet a SAD."""
        req = pb.AuthorizeRequest(
            credential_id=credential_id, hash_algorithm=HASH[hash_alg], hashes=hashes, passkey=True, labels=labels or []
        )
        return self.signing.Authorize(req, metadata=self._md(), timeout=self.timeout)

    def authorize_check(self, handle: str, wait_seconds: int = 0) -> pb.AuthorizeResponse:
        """The pending approval's state; ``wait_seconds``: let the server wait for it that long."""
        req = pb.AuthorizeCheckRequest(handle=handle, wait_seconds=wait_seconds)
        return self.signing.AuthorizeCheck(req, metadata=self._md(), timeout=wait_seconds + 30)

    def sign_hash(
        self,
        credential_id: str,
        sad: str,
        hashes: list[bytes],
        scheme: str,
        hash_alg: str = "SHA256",
        timeout: float | None = None,
    ) -> pb.SignHashResponse:
        req = pb.SignHashRequest(
            credential_id=credential_id,
            sad=sad,
            hash_algorithm=HASH[hash_alg],
            signature_scheme=SCHEME[scheme],
            hashes=hashes,
        )
        return self.signing.SignHash(req, metadata=self._md(), timeout=self.timeout if timeout is None else timeout)

    def sign_stream(
        self,
        credential_id: str,
        sad: str,
        hashes: Sequence[bytes],
        scheme: str,
        hash_alg: str = "SHA256",
        chunk: int = 500,
        timeout: float | None = None,
    ) -> Iterator[pb.SignHashStreamResponse]:
        """Stream ``hashes`` in chunks; yields the response chunks (signatures in request order)."""

        def requests() -> Iterator[pb.SignHashStreamRequest]:
            for i in range(0, max(len(hashes), 1), chunk):
                part = list(hashes[i : i + chunk])
                if i == 0:
                    yield pb.SignHashStreamRequest(
                        credential_id=credential_id,
                        sad=sad,
                        hash_algorithm=HASH[hash_alg],
                        signature_scheme=SCHEME[scheme],
                        hashes=part,
                    )
                else:
                    yield pb.SignHashStreamRequest(hashes=part)

        return iter(
            self.signing.SignHashStream(
                requests(), metadata=self._md(), timeout=self.timeout if timeout is None else timeout
            )
        )

    def list_events(self, page_size: int = 100, page_token: str = "", **flt: Any) -> pb.ListEventsResponse:
        req = pb.ListEventsRequest(filter=pb.EventFilter(**flt), page_size=page_size, page_token=page_token)
        return self.audit.ListEvents(req, metadata=self._md())

    def export_events(self, **flt: Any) -> bytes:
        chunks = self.audit.ExportEvents(pb.ExportEventsRequest(filter=pb.EventFilter(**flt)), metadata=self._md())
        return b"".join(c.data for c in chunks)

    def verify_log(self) -> pb.VerifyLogResponse:
        return self.audit.VerifyLog(pb.VerifyLogRequest(), metadata=self._md())

    def close(self) -> None:
        self.channel.close()
