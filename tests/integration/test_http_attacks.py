"""The HTTP face under attack: oversized and endless bodies, hostile JSON, floods that would fill
the audit log, racing approvals and polls, caching and framing of what the pages and the API
answer, and more requests at once than the face may take. Each against a real server."""

from __future__ import annotations

import base64
import json
import secrets
import socket
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from rsign.domain.approvals import VerifiedAssertion
from rsign.domain.events import EventFilter
from rsign.http.server import HttpServer, start_http
from tests.conftest import Env, Signer, digests, make_signer


@pytest.fixture(scope="module")
def http(env: Env) -> Iterator[HttpServer]:
    srv = start_http(env.app, "127.0.0.1:0")
    try:
        yield srv
    finally:
        srv.stop(1.0)


def audit_count(env: Env) -> int:
    with env.app.store.read() as t:
        return len(t.last_events(EventFilter(), 1_000_000))


def login(http: HttpServer, s: Signer) -> dict[str, str]:
    r = httpx.post(f"{http.base_url}/csc/v2/auth/login", json={"userID": s.user_id, "PIN": s.pin, "OTP": s.code()})
    assert r.status_code == 200, r.text
    return {"Authorization": f"Bearer {r.json()['access_token']}"}


def raw_request(http: HttpServer, head: str, body_chunks: Iterator[bytes], limit: int) -> tuple[bytes, int]:
    """Send ``head`` then ``body_chunks`` until the server answers (or ``limit`` bytes went out);
    the answer's first bytes and how many body bytes were sent."""
    sock = socket.create_connection(("127.0.0.1", http.port), timeout=10)
    sent = 0
    try:
        sock.sendall(head.encode())
        sock.setblocking(False)
        answer = b""
        for chunk in body_chunks:
            try:
                answer += sock.recv(4096)
            except BlockingIOError:
                pass
            if answer or sent >= limit:
                break
            try:
                sent += sock.send(chunk)
            except BlockingIOError:
                time.sleep(0.01)
            except OSError:
                break
        sock.setblocking(True)
        sock.settimeout(10)
        while b"\r\n" not in answer:
            more = sock.recv(4096)
            if not more:
                break
            answer += more
        return answer, sent
    finally:
        sock.close()


def forever(chunk: bytes) -> Iterator[bytes]:
    while True:
        yield chunk


# -- bodies ------------------------------------------------------------------------------------


def test_a_huge_declared_body_is_413_unread(env: Env, http: HttpServer) -> None:
    before = audit_count(env)
    head = (
        "POST /csc/v2/auth/login HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        f"Content-Length: {1024**3}\r\n\r\n"
    )
    answer, sent = raw_request(http, head, forever(b"x" * 65536), 64 * 1024**2)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 16 * 1024**2  # refused on the header, not after reading the gigabyte
    assert audit_count(env) == before


def test_an_endless_chunked_body_is_413_early(env: Env, http: HttpServer) -> None:
    before = audit_count(env)
    head = (
        "POST /csc/v2/credentials/list HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
        "Authorization: Bearer nobody-knows-this-token\r\nTransfer-Encoding: chunked\r\n\r\n"
    )
    data = b"x" * 65536
    answer, sent = raw_request(http, head, forever(b"%x\r\n%s\r\n" % (len(data), data)), 64 * 1024**2)
    assert answer.startswith(b"HTTP/1.1 413"), answer[:200]
    assert sent < 24 * 1024**2
    assert audit_count(env) == before  # an unknown token: nobody to name, nothing recorded


@pytest.mark.slow
def test_a_trickled_body_is_408_at_the_deadline(env: Env, http: HttpServer) -> None:
    """A body sent a byte at a time would hold a request in progress for ever (and with enough of
    them, every one the face takes): it gets the stream idle time, in all, to arrive."""
    before = audit_count(env)
    seconds = env.settings.stream_idle_seconds
    sock = socket.create_connection(("127.0.0.1", http.port), timeout=seconds + 10)
    try:
        sock.sendall(b"POST /csc/v2/info HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n")
        start = time.monotonic()
        answer = b""
        sock.settimeout(0.5)
        while not answer and time.monotonic() - start < seconds + 10:
            sock.sendall(b" ")  # one byte every half second: never idle, never done
            try:
                answer = sock.recv(200)
            except TimeoutError:
                continue
        assert answer.startswith(b"HTTP/1.1 408"), answer
        assert seconds - 1 <= time.monotonic() - start <= seconds + 5
    finally:
        sock.close()
    assert audit_count(env) == before


@pytest.mark.parametrize(
    "body",
    [
        b'{"credentialID": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",  # nesting deeper than the parser's stack
        b'{"credentialID": "x", "numSignatures": "\xc2\xb2", "hashes": ["AAAA"], "OTP": "1"}',  # superscript two
        b'{"credentialID": "x", "numSignatures": "' + b"9" * 5000 + b'", "hashes": ["AAAA"], "OTP": "1"}',
        b'{"credentialID": "\\ud800", "numSignatures": 1, "hashes": ["AAAA"], "OTP": "123456"}',  # lone surrogate
        b'{"credentialID": "\\u0000", "numSignatures": 1, "hashes": ["AAAA"], "OTP": "123456"}',
        b'{"credentialID": "x", "numSignatures": 1, "hashes": ["\\uff21\\uff21\\uff21\\uff21"], "OTP": "1"}',
        b'\xef\xbb\xbf{"credentialID": 1}',
        b'{"credentialID": "x", "hashes": ["AAAA"], "numSignatures": 1e400}',
    ],
    ids=["deep", "superscript", "long-number", "surrogate", "nul", "fullwidth-b64", "bom", "inf"],
)
def test_hostile_json_is_a_400_with_nothing_signed(env: Env, http: HttpServer, signer: Signer, body: bytes) -> None:
    hdr = login(http, signer) | {"Content-Type": "application/json"}
    calls = env.hsm.sign_calls
    r = httpx.post(f"{http.base_url}/csc/v2/credentials/authorize", content=body, headers=hdr)
    assert r.status_code == 400, r.text
    assert r.json()["error"] == "invalid_request" and r.json()["error_description"]
    assert env.hsm.sign_calls == calls


def test_a_lone_surrogate_at_login_is_a_400(env: Env, http: HttpServer) -> None:
    before = audit_count(env)
    r = httpx.post(
        f"{http.base_url}/csc/v2/auth/login",
        content=b'{"userID": "a\\udfff", "PIN": "x", "OTP": "123456"}',
        headers={"Content-Type": "application/json"},
    )
    assert r.status_code in (400, 401), r.text
    assert r.json()["error"] in ("invalid_request", "invalid_token")
    assert audit_count(env) - before <= 1


# -- floods ------------------------------------------------------------------------------------


def test_unknown_tokens_leave_no_records(env: Env, http: HttpServer) -> None:
    before = audit_count(env)
    with httpx.Client() as c:
        for path in ("credentials/list", "credentials/authorize", "signatures/signHash", "auth/revoke"):
            for body in (b"{}", b"{not json", b"[1]"):
                r = c.post(
                    f"{http.base_url}/csc/v2/{path}",
                    content=body,
                    headers={"Authorization": f"Bearer {secrets.token_urlsafe(32)}"},
                )
                assert r.status_code == 401, r.text
        for _ in range(10):
            r = c.post(f"{http.base_url}/approve/{secrets.token_urlsafe(16)}/finish", json={"credential": {}})
            assert r.status_code == 404, r.text
    assert audit_count(env) == before


def with_passkey(env: Env, s: Signer) -> bytes:
    """A stored passkey, as enrolment stores one (its key is never used: no assertion verifies)."""
    who = env.app.auth.authenticate(s.client().token)
    cid = secrets.token_bytes(16)
    env.app.passkeys.add(who, cid, b"cose-key", 5, "test")
    return cid


def pending(http: HttpServer, hdr: dict[str, str], cid: str, hs: list[bytes], **extra: Any) -> dict[str, Any]:
    r = httpx.post(
        f"{http.base_url}/csc/v2/credentials/authorize",
        json={"credentialID": cid, "numSignatures": len(hs), "hashes": [base64.b64encode(h).decode() for h in hs]}
        | extra,
        headers=hdr,
    )
    assert r.status_code == 202, r.text
    return dict(r.json())


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_link_holders_flood_of_bad_approvals_is_bounded(env: Env, http: HttpServer) -> None:
    s = make_signer(env, "flood")
    key = with_passkey(env, s)
    cid = s.add_key("ec-p256")
    p = pending(http, login(http, s), cid, digests(1))
    url = p["approvalURL"].replace(http.rp.origin, http.base_url)
    before = audit_count(env)
    with httpx.Client() as c:
        for i in range(40):
            forged = {
                "id": b64url(key),
                "rawId": b64url(key),
                "type": "public-key",
                "response": {
                    "clientDataJSON": b64url(b'{"type":"webauthn.get"}'),
                    "authenticatorData": b64url(secrets.token_bytes(37 + i % 3)),
                    "signature": b64url(secrets.token_bytes(70)),
                },
            }
            r = c.post(f"{url}/finish", json={"credential": forged})
            assert r.status_code in (400, 403, 429), r.text
    # The first refusals are recorded (an official should see attempts); a flood is not.
    assert 1 <= audit_count(env) - before <= 10


def test_garbage_assertions_are_refused_not_500(env: Env, http: HttpServer) -> None:
    s = make_signer(env, "garbage")
    key = with_passkey(env, s)
    cid = s.add_key("ec-p256")
    p = pending(http, login(http, s), cid, digests(1))
    url = p["approvalURL"].replace(http.rp.origin, http.base_url)
    shapes: list[Any] = [
        {"id": b64url(key), "rawId": b64url(key), "type": "public-key", "response": {}},
        {"id": b64url(key), "rawId": b64url(key), "type": "public-key",
         "response": {"clientDataJSON": "!!", "authenticatorData": "!!", "signature": "!!"}},
        {"id": b64url(key), "rawId": b64url(key), "type": "public-key",
         "response": {"clientDataJSON": b64url(b"not json"), "authenticatorData": b64url(b"short"),
                      "signature": b64url(b"x")}},
        {"id": 5, "rawId": [1, 2], "type": "public-key", "response": []},
    ]  # fmt: skip
    for shape in shapes:
        r = httpx.post(f"{url}/finish", json={"credential": shape})
        assert r.status_code in (400, 403), r.text


# -- races -------------------------------------------------------------------------------------


def test_racing_polls_mint_one_sad(env: Env, http: HttpServer) -> None:
    s = make_signer(env, "race")
    key = with_passkey(env, s)
    cid = s.add_key("ec-p256")
    hdr = login(http, s)
    p = pending(http, hdr, cid, digests(2))
    approval_id = p["approvalURL"].rsplit("/", 1)[-1]
    env.app.approvals.approve(approval_id, VerifiedAssertion(key, 6, True))
    answers: list[httpx.Response] = []
    start = threading.Barrier(8)

    def poll() -> None:
        start.wait()
        answers.append(httpx.post(f"{http.base_url}/csc/v2/credentials/authorizeCheck", json={"handle": p["handle"]},
                                  headers=hdr, timeout=30))  # fmt: skip

    threads = [threading.Thread(target=poll) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ok = [r for r in answers if r.status_code == 200]
    assert len(ok) == 1, [r.text for r in answers]
    assert all(r.status_code == 403 for r in answers if r.status_code != 200), [r.text for r in answers]
    with env.app.store.read() as tx:
        issued = [e for e in tx.last_events(EventFilter(action="sad.issue", credential_id=cid), 100)
                  if e["result"] == "success"]  # fmt: skip
    assert len(issued) == 1


def test_racing_approvals_approve_once(env: Env, http: HttpServer) -> None:
    s = make_signer(env, "race2")
    key = with_passkey(env, s)
    cid = s.add_key("ec-p256")
    p = pending(http, login(http, s), cid, digests(1))
    approval_id = p["approvalURL"].rsplit("/", 1)[-1]
    results: list[str] = []
    start = threading.Barrier(6)

    def approve(n: int) -> None:
        start.wait()
        try:
            env.app.approvals.approve(approval_id, VerifiedAssertion(key, 6 + n, True))
            results.append("ok")
        except Exception as exc:
            results.append(type(exc).__name__)

    threads = [threading.Thread(target=approve, args=(n,)) for n in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results.count("ok") == 1, results
    assert set(results) - {"ok"} <= {"PermissionDenied"}, results


def test_an_expired_approval_cannot_be_approved_or_collected(env: Env, http: HttpServer) -> None:
    s = make_signer(env, "expiry")
    key = with_passkey(env, s)
    cid = s.add_key("ec-p256")
    hdr = login(http, s)
    p = pending(http, hdr, cid, digests(1))
    approval_id = p["approvalURL"].rsplit("/", 1)[-1]
    env.clock.advance(env.settings.sad_ttl_seconds + 1)
    with pytest.raises(Exception, match="expired"):
        env.app.approvals.approve(approval_id, VerifiedAssertion(key, 6, True))
    r = httpx.post(f"{http.base_url}/csc/v2/credentials/authorizeCheck", json={"handle": p["handle"]}, headers=hdr)
    assert r.status_code in (401, 403), r.text


# -- what the answers say about caching and framing --------------------------------------------


def test_answers_carrying_secrets_are_not_stored_and_pages_not_framed(env: Env, http: HttpServer) -> None:
    s = make_signer(env, "hdrs")
    r = httpx.post(f"{http.base_url}/csc/v2/auth/login", json={"userID": s.user_id, "PIN": s.pin, "OTP": s.code()})
    assert r.status_code == 200
    assert "no-store" in r.headers.get("cache-control", ""), r.headers
    assert r.headers.get("x-content-type-options") == "nosniff"
    hdr = {"Authorization": f"Bearer {r.json()['access_token']}"}
    cid = s.add_key("ec-p256")
    hs = digests(1)
    r = httpx.post(
        f"{http.base_url}/csc/v2/credentials/authorize",
        json={"credentialID": cid, "numSignatures": 1, "hashes": [base64.b64encode(hs[0]).decode()], "OTP": s.code()},
        headers=hdr,
    )
    assert r.status_code == 200 and "no-store" in r.headers.get("cache-control", ""), r.headers
    r = httpx.post(f"{http.base_url}/csc/v2/credentials/list", json={}, headers={"Authorization": "Bearer x"})
    assert "no-store" in r.headers.get("cache-control", "")
    for path in ("/passkeys", f"/approve/{secrets.token_urlsafe(16)}"):
        r = httpx.get(f"{http.base_url}{path}")
        assert r.headers.get("x-frame-options") == "DENY", r.headers
        assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
        assert r.headers.get("x-content-type-options") == "nosniff"
        assert r.headers.get("cache-control") == "no-store"
        assert r.headers.get("referrer-policy") == "no-referrer"


def test_labels_and_description_are_escaped(env: Env, http: HttpServer) -> None:
    s = make_signer(env, "xss")
    with_passkey(env, s)
    cid = s.add_key("ec-p256")
    evil = '<script>alert(1)</script><img src=x onerror=alert(2)>"\''
    p = pending(http, login(http, s), cid, digests(2), labels=[evil, "ok"], description=evil)
    r = httpx.get(p["approvalURL"].replace(http.rp.origin, http.base_url))
    assert r.status_code == 200
    assert "<script>alert" not in r.text and "<img" not in r.text
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in r.text


# -- admission ---------------------------------------------------------------------------------


def test_the_http_face_bounds_requests_in_progress(env: Env) -> None:
    """More requests in progress than the face takes: the excess is refused at once (503), and
    the face serves again when they end."""
    limit = env.settings.http_requests
    srv = start_http(env.app, "127.0.0.1:0")
    held: list[socket.socket] = []
    refused = 0
    try:
        # Requests whose bodies never finish stay in progress; open them until the face refuses.
        for _ in range(limit + 8):
            sock = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            sock.sendall(b"POST /csc/v2/info HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
            sock.settimeout(0.05)
            try:
                answer = sock.recv(100)
            except TimeoutError:
                held.append(sock)
                continue
            assert answer.startswith(b"HTTP/1.1 503"), answer
            sock.close()
            refused += 1
            if refused >= 3:
                break
        assert refused >= 3 and len(held) < limit, (refused, len(held))
        r = httpx.post(f"{srv.base_url}/csc/v2/info", json={}, timeout=10)
        assert r.status_code == 503, r.text
        for sock in held:
            sock.close()
        held.clear()
        deadline = time.monotonic() + 10
        while httpx.post(f"{srv.base_url}/csc/v2/info", json={}).status_code != 200:
            assert time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        for sock in held:
            sock.close()
        srv.stop(1.0)


def test_json_error_bodies_are_json(env: Env, http: HttpServer) -> None:
    r = httpx.post(f"{http.base_url}/csc/v2/info", content=b"[1, 2]")
    assert r.status_code == 400 and json.loads(r.text)["error"] == "invalid_request"


# -- passkey enrolment -------------------------------------------------------------------------


def test_an_enrolment_challenge_is_used_once_by_its_own_session(env: Env, http: HttpServer) -> None:
    s = make_signer(env, "enrol")
    hdr = login(http, s)
    r = httpx.post(f"{http.base_url}/passkeys/register/options", json={}, headers=hdr)
    assert r.status_code == 200, r.text
    challenge_id = r.json()["challengeId"]
    forged = {
        "id": b64url(b"k" * 16), "rawId": b64url(b"k" * 16), "type": "public-key",
        "response": {"clientDataJSON": b64url(b'{"type":"webauthn.create"}'),
                     "attestationObject": b64url(b"\xa0")},
    }  # fmt: skip
    # Another session of the same official (and another official) cannot use it.
    for other in (login(http, s), login(http, make_signer(env, "enrol2"))):
        r = httpx.post(f"{http.base_url}/passkeys/register/finish",
                       json={"challengeId": challenge_id, "credential": forged}, headers=other)  # fmt: skip
        assert r.status_code == 400 and "start again" in r.json()["error_description"], r.text
    # Its own session: the forged registration is refused (not a 500), and the challenge is spent.
    r = httpx.post(f"{http.base_url}/passkeys/register/finish",
                   json={"challengeId": challenge_id, "credential": forged}, headers=hdr)  # fmt: skip
    assert r.status_code in (400, 403), r.text
    r = httpx.post(f"{http.base_url}/passkeys/register/finish",
                   json={"challengeId": challenge_id, "credential": forged}, headers=hdr)  # fmt: skip
    assert r.status_code == 400 and "start again" in r.json()["error_description"], r.text
    assert env.app.passkeys.list(env.app.auth.authenticate(hdr["Authorization"][7:])) == []


def test_repeated_enrolment_starts_keep_one_challenge_per_session(env: Env) -> None:
    """A logged-in user starting passkey enrolment again and again: each start supersedes the
    session's previous challenge, so the table keeps one row for the session, not one per call."""
    from sqlalchemy import text

    from rsign.domain import context
    from rsign.domain.errors import InvalidRequest

    s = make_signer(env)
    who = env.app.auth.authenticate(s.client().token)
    with context.request(client="test"):
        starts = [env.app.passkeys.start_enrolment(who) for _ in range(30)]
        with env.app.store.read() as t:
            rows = t.c.execute(
                text("SELECT COUNT(*) FROM passkey_challenges WHERE user_id = :u"), {"u": s.user_id}
            ).scalar()
        assert rows == 1
        with pytest.raises(InvalidRequest):  # superseded
            env.app.passkeys.take_challenge(who, starts[0].challenge_id)
        assert env.app.passkeys.take_challenge(who, starts[-1].challenge_id) == starts[-1].challenge
