"""``Client``: the typed SDK over the protobuf-level client, with deadlines, retries on UNAVAILABLE
and errors as exceptions."""

from __future__ import annotations

import random
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc

from rsign.client.errors import CodeAlreadyUsed, RsignError, from_rpc
from rsign.client.raw import RsignClient
from rsign.v1 import rsign_pb2 as pb

if TYPE_CHECKING:
    from rsign.client.pdf import Stamp

T = TypeVar("T")

HASH_ALGORITHMS = ("SHA256", "SHA384", "SHA512")
SCHEMES = ("RSA_PKCS1_V15", "RSA_PSS", "ECDSA")

# What to send the next one-time code with: a code, or a function asked for one (once per
# Authorize, and again after an already used code when it is a function).
Otp = str | Callable[[], str]


@dataclass(frozen=True)
class Session:
    user_id: str
    expires_at: int  # Unix seconds


@dataclass(frozen=True)
class Credential:
    credential_id: str
    holder_user_id: str
    agency: str
    key_algorithm: str  # "RSA-2048", "RSA-3072", "EC-P256", "EC-P384"
    status: str
    key_version: int
    certificates: tuple[bytes, ...]  # DER: the signer's first, then its issuers up to the root
    multisign: int  # most hashes (documents) one Authorize may cover
    kind: str
    not_after: int

    @classmethod
    def from_pb(cls, c: pb.Credential) -> Credential:
        return cls(
            c.credential_id,
            c.holder_user_id,
            c.agency,
            c.key_algorithm,
            c.status,
            c.key_version,
            tuple(bytes(x) for x in c.certificates),
            c.multisign,
            c.kind,
            c.not_after,
        )

    @property
    def default_scheme(self) -> str:
        """The signature scheme for this key: ECDSA for EC keys, PKCS#1 v1.5 for RSA (the most
        widely verified; pass ``RSA_PSS`` explicitly to use PSS)."""
        return "ECDSA" if self.key_algorithm.startswith("EC") else "RSA_PKCS1_V15"

    @property
    def default_hash(self) -> str:
        return "SHA384" if self.key_algorithm == "EC-P384" else "SHA256"


@dataclass(frozen=True)
class Authorization:
    sad: str  # single use, bound to the hashes it was issued for
    expires_at: int
    key_version: int


class Client:
    """A session with an rsign server.

    ``ca_file``: connect over TLS, trusting this CA for the server's certificate (``cert_file`` and
    ``key_file``: present a client certificate, for mutual TLS); plaintext without it. ``timeout``:
    each call's deadline in seconds. ``retries``: how often a call refused with UNAVAILABLE (server
    restarting, HSM or store briefly down) is tried again, with exponential backoff from
    ``backoff`` seconds; no other status is retried, since none of them heals by itself. A retried
    ``Authorize`` whose first answer was lost on the way is refused as ``CodeAlreadyUsed`` (the
    server took the code): ask for the next code, as for any used one.
    """

    def __init__(
        self,
        target: str | grpc.Channel,
        ca_file: str | Path | None = None,
        cert_file: str | Path | None = None,
        key_file: str | Path | None = None,
        *,
        timeout: float = 30.0,
        retries: int = 3,
        backoff: float = 0.25,
    ) -> None:
        self.raw = RsignClient(target, ca_file, cert_file, key_file, timeout=timeout)
        self.retries = retries
        self.backoff = backoff
        self.user_id = ""

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self.raw.close()

    def _call(self, fn: Callable[[], T]) -> T:
        for attempt in range(self.retries + 1):
            try:
                return fn()
            except grpc.RpcError as err:
                if err.code() != grpc.StatusCode.UNAVAILABLE or attempt == self.retries:  # type: ignore[attr-defined]
                    raise from_rpc(err) from None
            # Jitter, so that many clients cut off by one restart do not come back in step.
            time.sleep(self.backoff * 2**attempt * (0.5 + random.random() / 2))
        raise AssertionError("unreachable")

    # -- session -----------------------------------------------------------------------------

    def login(self, user_id: str, pin: str, otp: str) -> Session:
        resp = self._call(lambda: self.raw.login(user_id, pin, otp))
        self.user_id = user_id
        return Session(user_id, resp.expires_at)

    def logout(self) -> None:
        self._call(self.raw.logout)

    def credentials(self) -> list[Credential]:
        return [Credential.from_pb(c) for c in self._call(self.raw.list_credentials)]

    def credential(self, credential_id: str) -> Credential:
        return Credential.from_pb(self._call(lambda: self.raw.get_credential(credential_id)))

    # -- signing -----------------------------------------------------------------------------

    def authorize(
        self, credential_id: str, hashes: Sequence[bytes], otp: str, hash_algorithm: str = "SHA256"
    ) -> Authorization:
        """Activate the key for exactly ``hashes`` (in this order), once, with a fresh one-time code.
        Raises ``CodeAlreadyUsed`` (with ``retry_after``) for a code already used."""
        _check(hash_algorithm, HASH_ALGORITHMS, "hash algorithm")
        resp = self._call(lambda: self.raw.authorize(credential_id, list(hashes), otp, hash_algorithm))
        return Authorization(resp.sad, resp.expires_at, resp.key_version)

    def authorize_with(
        self,
        credential_id: str,
        hashes: Sequence[bytes],
        otp: Otp,
        hash_algorithm: str = "SHA256",
        on_used_code: Callable[[CodeAlreadyUsed], None] | None = None,
    ) -> Authorization:
        """``authorize``; when ``otp`` is a function, an already used code calls ``on_used_code``
        (to show a countdown: ``count_down(e.retry_after, tick)``) and then asks ``otp`` again."""
        while True:
            try:
                return self.authorize(credential_id, hashes, otp() if callable(otp) else otp, hash_algorithm)
            except CodeAlreadyUsed as e:
                if not callable(otp):
                    raise
                if on_used_code is not None:
                    on_used_code(e)

    def sign_hash(
        self,
        credential_id: str,
        authorization: Authorization | str,
        hashes: Sequence[bytes],
        scheme: str,
        hash_algorithm: str = "SHA256",
    ) -> list[bytes]:
        """The signatures of ``hashes`` (the exact list the authorization was issued for)."""
        _check(scheme, SCHEMES, "signature scheme")
        _check(hash_algorithm, HASH_ALGORITHMS, "hash algorithm")
        sad = authorization.sad if isinstance(authorization, Authorization) else authorization
        resp = self._call(lambda: self.raw.sign_hash(credential_id, sad, list(hashes), scheme, hash_algorithm))
        return [bytes(s) for s in resp.signatures]

    def sign_hashes(
        self,
        credential_id: str,
        hashes: Sequence[bytes],
        otp: Otp,
        scheme: str | None = None,
        hash_algorithm: str = "SHA256",
    ) -> list[bytes]:
        """One Authorize and one SignHash for all ``hashes`` (at most the credential's multisign)."""
        if scheme is None:
            scheme = self.credential(credential_id).default_scheme
        auth = self.authorize_with(credential_id, hashes, otp, hash_algorithm)
        return self.sign_hash(credential_id, auth, hashes, scheme, hash_algorithm)

    def sign_pdfs(
        self,
        credential_id: str,
        files: Sequence[str | Path],
        otp: Otp,
        out_dir: str | Path,
        *,
        tsa_url: str | None = None,
        stamp: Stamp | None = None,
        scheme: str | None = None,
        reason: str | None = None,
        location: str | None = None,
        progress: Callable[[str, int, int], None] | None = None,
        on_used_code: Callable[[CodeAlreadyUsed], None] | None = None,
    ) -> list[Path]:
        """Sign PDF files (PAdES B-B; B-T with ``tsa_url``) into ``out_dir``; returns the signed
        files' paths, in order. All documents' digests are computed first, then one Authorize (one
        one-time code) and one SignHash per ``multisign`` documents. ``otp``: a code, or a function
        asked for one per group of ``multisign`` documents (and again after an already used code,
        once ``on_used_code`` has had it). ``progress(stage, done, total)``. Needs the ``pdf`` extra."""
        from rsign.client.pdf import PdfOptions, sign_pdf_files

        opts = PdfOptions(tsa_url=tsa_url, stamp=stamp, scheme=scheme, reason=reason, location=location)
        paths = [Path(f) for f in files]
        return sign_pdf_files(self, credential_id, paths, otp, Path(out_dir), opts, progress, on_used_code)


def _check(value: str, allowed: tuple[str, ...], what: str) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {what} {value!r}; one of {', '.join(allowed)}")


__all__ = ["Authorization", "Client", "CodeAlreadyUsed", "Credential", "RsignError", "Session"]
