"""CSC façade refusals: each gives the CSC error body and HTTP status, signs nothing, and leaves
its audit record (the same records as over gRPC: the domain services write them)."""

from __future__ import annotations

import base64
import inspect
from collections.abc import Iterator, Mapping
from typing import Any

import httpx
import pytest

from rsign.domain import errors
from rsign.domain.events import EventFilter
from rsign.http.errors import INTERNAL, csc_error
from rsign.http.server import HttpServer, start_http
from tests.conftest import Env, Signer, digests, make_signer


@pytest.fixture(scope="module")
def http(env: Env) -> Iterator[HttpServer]:
    srv = start_http(env.app, "127.0.0.1:0")
    try:
        yield srv
    finally:
        srv.stop(1.0)


class Csc:
    def __init__(self, http: HttpServer, s: Signer, prefix: str = "/csc/v2") -> None:
        self.base = f"{http.base_url}{prefix}"
        self.s = s
        r = httpx.post(f"{self.base}/auth/login", json={"userID": s.user_id, "PIN": s.pin, "OTP": s.code()})
        assert r.status_code == 200, r.text
        self.token = r.json()["access_token"]

    def post(self, path: str, body: Any) -> httpx.Response:
        kw: dict[str, Any] = {"content": body} if isinstance(body, bytes) else {"json": body}
        return httpx.post(f"{self.base}/{path}", headers={"Authorization": f"Bearer {self.token}"}, **kw)

    def authorize(self, cid: str, hs: list[bytes], otp: str | None = None) -> httpx.Response:
        return self.post(
            "credentials/authorize",
            {
                "credentialID": cid,
                "numSignatures": len(hs),
                "hashes": [base64.b64encode(h).decode() for h in hs],
                "hashAlgorithmOID": "2.16.840.1.101.3.4.2.1",
                "authData": [{"id": "OTP", "value": otp if otp is not None else self.s.code()}],
            },
        )

    def sign(self, cid: str, sad: str, hs: list[bytes]) -> httpx.Response:
        return self.post(
            "signatures/signHash",
            {
                "credentialID": cid,
                "SAD": sad,
                "hashes": [base64.b64encode(h).decode() for h in hs],
                "hashAlgorithmOID": "2.16.840.1.101.3.4.2.1",
                "signAlgo": "1.2.840.10045.4.3.2",
            },
        )


def last(env: Env, action: str, credential_id: str = "") -> Mapping[str, Any]:
    with env.app.store.read() as t:
        rows = t.last_events(EventFilter(action=action, credential_id=credential_id), 1)
    assert rows, f"no {action} record"
    return rows[-1]


def refused(r: httpx.Response, status: int, code: str) -> str:
    assert r.status_code == status, r.text
    body = r.json()
    assert body["error"] == code and body["error_description"]
    return str(body["error_description"])


@pytest.fixture
def holder(env: Env) -> tuple[Signer, str]:
    s = make_signer(env, "cscneg")
    return s, s.add_key("ec-p256")


def test_sad_reuse_is_refused(env: Env, http: HttpServer, holder: tuple[Signer, str]) -> None:
    s, cid = holder
    c = Csc(http, s)
    hs = digests(2)
    sad = c.authorize(cid, hs).json()["SAD"]
    assert c.sign(cid, sad, hs).status_code == 200
    calls = env.hsm.sign_calls
    msg = refused(c.sign(cid, sad, hs), 403, "access_denied")
    assert "already been used" in msg
    assert env.hsm.sign_calls == calls
    rec = last(env, "sad.refuse", cid)
    assert rec["result"] == "failure" and "already been used" in rec["reason"]


def test_hashes_outside_the_sad_are_refused(env: Env, http: HttpServer, holder: tuple[Signer, str]) -> None:
    s, cid = holder
    c = Csc(http, s)
    sad = c.authorize(cid, digests(2)).json()["SAD"]
    calls = env.hsm.sign_calls
    msg = refused(c.sign(cid, sad, digests(2)), 403, "access_denied")
    assert "differ" in msg
    assert env.hsm.sign_calls == calls
    assert "differ" in last(env, "sad.refuse", cid)["reason"]


def test_wrong_otp_is_refused(env: Env, http: HttpServer, holder: tuple[Signer, str]) -> None:
    s, cid = holder
    c = Csc(http, s)
    good = s.code()
    wrong = f"{(int(good) + 1) % 10**6:06d}"
    refused(c.authorize(cid, digests(1), wrong), 400, "invalid_otp")
    rec = last(env, "sad.issue")
    assert rec["result"] == "failure" and rec["actor"] == s.user_id and "one-time code" in rec["reason"]


def test_another_users_credential_is_refused(env: Env, http: HttpServer, holder: tuple[Signer, str]) -> None:
    _, cid = holder
    other = make_signer(env, "cscother")
    c = Csc(http, other)
    calls = env.hsm.sign_calls
    msg = refused(c.authorize(cid, digests(1)), 403, "access_denied")
    assert "not yours" in msg
    refused(c.sign(cid, "forged-sad", digests(1)), 403, "access_denied")
    assert env.hsm.sign_calls == calls
    rec = last(env, "sad.refuse", cid)
    assert rec["actor"] == other.user_id and "not yours" in rec["reason"]


def test_v1_names_and_prefix(env: Env, http: HttpServer, holder: tuple[Signer, str]) -> None:
    """pyHanko's v1.0.4 body: ``hash``, top-level ``OTP``, ``hashAlgo``; no hashAlgorithmOID."""
    s, cid = holder
    c = Csc(http, s, "/csc/v1")
    hs = digests(2)
    b64s = [base64.b64encode(h).decode() for h in hs]
    r = c.post("credentials/authorize", {"credentialID": cid, "numSignatures": 2, "hash": b64s, "OTP": s.code()})
    assert r.status_code == 200, r.text
    sad = r.json()["SAD"]
    assert r.json()["expiresIn"] > 0
    r = c.post(
        "signatures/signHash",
        {"credentialID": cid, "SAD": sad, "hash": b64s, "hashAlgo": "2.16.840.1.101.3.4.2.1",
         "signAlgo": "1.2.840.10045.4.3.2"},
    )  # fmt: skip
    assert r.status_code == 200 and len(r.json()["signatures"]) == 2
    assert base64.b64decode(r.json()["signatures"][0])[0] == 0x30  # DER ECDSA-Sig-Value


def test_malformed_requests(env: Env, http: HttpServer, holder: tuple[Signer, str]) -> None:
    s, cid = holder
    c = Csc(http, s)
    refused(c.post("credentials/authorize", b"{not json"), 400, "invalid_request")
    assert last(env, "request.refuse")["actor"] == s.user_id
    r = c.post("credentials/authorize", {"credentialID": cid, "numSignatures": 3, "hashes": ["AAAA"], "OTP": "1"})
    assert "numSignatures" in refused(r, 400, "invalid_request")
    assert last(env, "request.refuse", cid)["details"]
    r = c.post("credentials/authorize", {"credentialID": cid, "numSignatures": 1, "hashes": ["%%%"], "OTP": "1"})
    assert "base64" in refused(r, 400, "invalid_request")
    # No bearer token: 401 with a WWW-Authenticate challenge, nothing recorded for nobody.
    r = httpx.post(f"{http.base_url}/csc/v2/credentials/list", json={})
    refused(r, 401, "invalid_token")
    assert r.headers["www-authenticate"].startswith("Bearer")
    # The login refusal is the CSC body too.
    r = httpx.post(f"{http.base_url}/csc/v2/auth/login", json={"userID": s.user_id, "PIN": "wrong-pin", "OTP": "1"})
    refused(r, 401, "invalid_token")


def test_every_domain_error_has_a_csc_answer() -> None:
    classes = [c for _, c in inspect.getmembers(errors, inspect.isclass) if issubclass(c, errors.RsignError)]
    for cls in classes:
        if cls is errors.RsignError:
            continue
        status, code = csc_error(cls.__new__(cls))
        if cls is errors.ConfigurationError:
            assert (status, code) == INTERNAL  # a bug or a misconfiguration: the message stays in the log
        else:
            assert (status, code) != INTERNAL, cls
        assert 400 <= status < 600 and code
    assert csc_error(errors.OtpRejected("x")) == (400, "invalid_otp")
    assert csc_error(errors.HsmUnavailable("x")) == (503, "temporarily_unavailable")
