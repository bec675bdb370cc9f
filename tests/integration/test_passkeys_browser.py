"""Passkeys in a real browser: headless Debian chromium driven by Playwright, WebAuthn through the
DevTools virtual authenticator (CTAP2, internal, user verification). The official enrols on the
self-service page after PIN + TOTP, approves pending authorizations on the approval page, and the
driving software (gRPC and CSC) collects its SAD and signs. Refused: approving twice, an assertion
made for other hashes, a signature counter that goes back, an assertion from another origin."""

from __future__ import annotations

import base64
import json
import struct
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import grpc
import httpx
import pytest
from playwright.sync_api import Browser, BrowserContext, CDPSession, Page, ViewportSize, sync_playwright

from rsign.dev.democlient import verify_signature
from rsign.domain.events import EventFilter
from rsign.http.server import HttpServer, start_http
from tests.conftest import Env, Signer, digests, make_signer, running_env

CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
PHONE: ViewportSize = {"width": 390, "height": 844}


@dataclass
class Web:
    env: Env
    http: HttpServer
    browser: Browser

    @property
    def origin(self) -> str:
        return self.http.rp.origin


@pytest.fixture(scope="module")
def web(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Web]:
    with running_env(tmp_path_factory.mktemp("rsign-passkeys")) as env:
        http = start_http(env.app, "127.0.0.1:0")
        try:
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path="/usr/bin/chromium", args=CHROMIUM_ARGS)
                try:
                    yield Web(env, http, browser)
                finally:
                    browser.close()
        finally:
            http.stop(1.0)


@dataclass
class Device:
    """A browser page with its own virtual authenticator: the official's phone."""

    context: BrowserContext
    page: Page
    cdp: CDPSession
    authenticator: str

    def credentials(self) -> list[dict[str, Any]]:
        return list(self.cdp.send("WebAuthn.getCredentials", {"authenticatorId": self.authenticator})["credentials"])


@pytest.fixture
def device(web: Web) -> Iterator[Device]:
    context = web.browser.new_context(viewport=PHONE, locale="vi-VN", device_scale_factor=2)
    page = context.new_page()
    cdp = context.new_cdp_session(page)
    cdp.send("WebAuthn.enable")
    auth = cdp.send(
        "WebAuthn.addVirtualAuthenticator",
        {
            "options": {
                "protocol": "ctap2",
                "transport": "internal",
                "hasResidentKey": True,
                "hasUserVerification": True,
                "isUserVerified": True,
                "automaticPresenceSimulation": True,
            }
        },
    )
    try:
        yield Device(context, page, cdp, auth["authenticatorId"])
    finally:
        context.close()


def enrol(web: Web, dev: Device, s: Signer, otp: str | None = None) -> str:
    page = dev.page
    page.goto(f"{web.origin}/passkeys")
    page.fill("#user", s.user_id)
    page.fill("#pin", s.pin)
    page.fill("#otp", otp or s.code())
    page.fill("#label", "Điện thoại của ông Tuấn")
    page.click("#enrol")
    page.locator("#status.ok, #status.err").wait_for()
    return page.inner_text("#status")


def approve_on_page(web: Web, dev: Device, path: str) -> str:
    dev.page.goto(f"{web.origin}{path}")
    dev.page.click("#approve")
    # Selector waits: the page's CSP forbids the string evaluation wait_for_function uses.
    dev.page.locator("#status.ok, #status.err").wait_for()
    return dev.page.inner_text("#status")


def try_finish(dev: Device, options_path: str, finish_path: str) -> str:
    """An assertion over ``options_path``'s challenge, posted to ``finish_path``: "accepted" or the refusal."""
    return str(
        dev.page.evaluate(
            """async ([o, f]) => {
                try { const credential = await window.rsign.getAssertion(o);
                      await window.rsign.post(f, { credential }); return "accepted"; }
                catch (e) { return e.message; } }""",
            [options_path, finish_path],
        )
    )


def last(env: Env, action: str, credential_id: str = "") -> dict[str, Any]:
    with env.app.store.read() as t:
        rows = t.last_events(EventFilter(action=action, credential_id=credential_id), 1)
    assert rows
    rec = dict(rows[-1])
    rec["details"] = json.loads(rec["details"] or "{}")
    return rec


@pytest.fixture
def official(web: Web, device: Device) -> tuple[Signer, str]:
    s = make_signer(web.env, "pk")
    cid = s.add_key("ec-p256")
    assert "Đã đăng ký passkey" in enrol(web, device, s)
    return s, cid


LABELS = ["Quyết định số 12/QĐ-UBND", "Giấy chứng nhận đăng ký hộ kinh doanh", "Công văn số 345/UBND-VP"]


def test_enrol_needs_pin_and_fresh_totp(web: Web, device: Device) -> None:
    s = make_signer(web.env, "pk")
    good = s.code()
    wrong = f"{(int(good) + 1) % 10**6:06d}"
    assert "Không phê duyệt được" in enrol(web, device, s, wrong)  # the page's failure line
    assert device.credentials() == []
    assert "Đã đăng ký passkey" in enrol(web, device, s)
    assert len(device.credentials()) == 1
    rec = last(web.env, "passkey.enrol")
    assert rec["actor"] == s.user_id and rec["result"] == "success"


def test_grpc_authorize_approved_on_the_page_then_signs(web: Web, device: Device, official: tuple[Signer, str]) -> None:
    s, cid = official
    c = s.client()
    hs = digests(3)
    pending = c.authorize_passkey(cid, hs, LABELS)
    assert not pending.sad and pending.handle and pending.approval_path.startswith("/approve/")
    assert c.authorize_check(pending.handle).sad == ""  # still pending
    device.page.goto(f"{web.origin}{pending.approval_path}")
    text = device.page.inner_text("main")
    # What is being signed, in Vietnamese, diacritics intact: credential, count, labels.
    assert "Phê duyệt ký số" in text and cid in text and "Quyết định số 12/QĐ-UBND" in text
    assert device.page.inner_text("#count") == "3"
    assert device.page.evaluate("document.characterSet") == "UTF-8"
    shot = device.page.screenshot(full_page=True)
    assert shot[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">I", shot[16:20])[0] == PHONE["width"] * 2
    assert "Đã phê duyệt" in approve_on_page(web, device, pending.approval_path)
    done = c.authorize_check(pending.handle, wait_seconds=5)
    assert done.sad and done.key_version == 1
    cred = c.get_credential(cid)
    signed = c.sign_hash(cid, done.sad, hs, "ECDSA")
    for d, sig in zip(hs, signed.signatures, strict=True):
        verify_signature(cred.certificates[0], d, sig, "ECDSA", "SHA256")
    issue = last(web.env, "sad.issue", cid)
    assert issue["details"]["approved_by"] == "passkey" and issue["details"]["count"] == 3
    assert last(web.env, "approval.passkey", cid)["result"] == "success"
    # The SAD is handed out once.
    with pytest.raises(grpc.RpcError) as e:
        c.authorize_check(pending.handle)
    assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED  # type: ignore[attr-defined]


def test_csc_asynchronous_mode(web: Web, device: Device, official: tuple[Signer, str]) -> None:
    s, cid = official
    base = f"{web.http.base_url}/csc/v2"
    r = httpx.post(f"{base}/auth/login", json={"userID": s.user_id, "PIN": s.pin, "OTP": s.code()})
    hdr = {"Authorization": f"Bearer {r.json()['access_token']}"}
    hs = digests(2)
    b64s = [base64.b64encode(h).decode() for h in hs]
    r = httpx.post(
        f"{base}/credentials/authorize",
        json={"credentialID": cid, "numSignatures": 2, "hashes": b64s, "labels": LABELS[:2]},
        headers=hdr,
    )
    assert r.status_code == 202, r.text
    handle, url = r.json()["handle"], r.json()["approvalURL"]
    assert url.startswith(web.origin + "/approve/")
    assert httpx.post(f"{base}/credentials/authorizeCheck", json={"handle": handle}, headers=hdr).status_code == 202
    assert "Đã phê duyệt" in approve_on_page(web, device, url[len(web.origin) :])
    r = httpx.post(f"{base}/credentials/authorizeCheck", json={"handle": handle}, headers=hdr)
    assert r.status_code == 200, r.text
    r = httpx.post(
        f"{base}/signatures/signHash",
        json={"credentialID": cid, "SAD": r.json()["SAD"], "hashes": b64s, "signAlgo": "1.2.840.10045.4.3.2"},
        headers=hdr,
    )
    assert r.status_code == 200 and len(r.json()["signatures"]) == 2


def test_approving_twice_is_refused(web: Web, device: Device, official: tuple[Signer, str]) -> None:
    s, cid = official
    c = s.client()
    p = c.authorize_passkey(cid, digests(1))
    device.page.goto(f"{web.origin}{p.approval_path}")
    path = p.approval_path
    # Two assertions over the same challenge; the second arrives after the first approved.
    out = device.page.evaluate(
        """async (p) => {
            const a1 = await window.rsign.getAssertion(p + "/options");
            const a2 = await window.rsign.getAssertion(p + "/options");
            await window.rsign.post(p + "/finish", { credential: a1 });
            try { await window.rsign.post(p + "/finish", { credential: a2 }); return "accepted"; }
            catch (e) { return e.message; } }""",
        path,
    )
    assert "already approved" in out
    assert "already approved" in try_finish(device, f"{path}/options", f"{path}/finish")
    assert "already approved" in last(web.env, "approval.passkey", cid)["reason"]
    assert c.authorize_check(p.handle).sad  # the first approval stands: one SAD


def test_an_assertion_for_other_hashes_is_refused(web: Web, device: Device, official: tuple[Signer, str]) -> None:
    s, cid = official
    c = s.client()
    a = c.authorize_passkey(cid, digests(2), ["A1", "A2"])
    b = c.authorize_passkey(cid, digests(2), ["B1", "B2"])
    device.page.goto(f"{web.origin}{a.approval_path}")
    out = try_finish(device, f"{b.approval_path}/options", f"{a.approval_path}/finish")
    assert "challenge" in out.lower()
    rec = last(web.env, "approval.passkey", cid)
    assert rec["result"] == "failure" and "challenge" in rec["reason"].lower()
    assert c.authorize_check(a.handle).sad == ""  # A is still pending, nothing issued
    assert c.authorize_check(b.handle).sad == ""


def test_a_signature_counter_regression_is_refused(web: Web, device: Device, official: tuple[Signer, str]) -> None:
    s, cid = official
    c = s.client()
    first = c.authorize_passkey(cid, digests(1))
    assert "Đã phê duyệt" in approve_on_page(web, device, first.approval_path)
    [cred] = device.credentials()
    assert cred["signCount"] >= 1
    # A clone of the authenticator: the same key with its counter back at zero.
    device.cdp.send(
        "WebAuthn.removeCredential", {"authenticatorId": device.authenticator, "credentialId": cred["credentialId"]}
    )
    device.cdp.send(
        "WebAuthn.addCredential", {"authenticatorId": device.authenticator, "credential": cred | {"signCount": 0}}
    )
    second = c.authorize_passkey(cid, digests(1))
    out = approve_on_page(web, device, second.approval_path)
    assert "Không phê duyệt được" in out and "sign count" in out.lower()
    assert "sign count" in last(web.env, "approval.passkey", cid)["reason"].lower()
    assert c.authorize_check(second.handle).sad == ""


def test_an_assertion_from_another_origin_is_refused(web: Web, device: Device, official: tuple[Signer, str]) -> None:
    s, cid = official
    # A look-alike front (another origin, same RP id) serving rsign's pages: the service still
    # expects its own public origin, which the browser writes into every assertion.
    front = start_http(web.env.app, "127.0.0.1:0", public_url=web.origin)
    try:
        c = s.client()
        p = c.authorize_passkey(cid, digests(1))
        device.page.goto(f"http://localhost:{front.port}{p.approval_path}")
        device.page.click("#approve")
        device.page.locator("#status.ok, #status.err").wait_for()
        out = device.page.inner_text("#status")
        assert "origin" in out.lower()
        assert c.authorize_check(p.handle).sad == ""
        assert "origin" in last(web.env, "approval.passkey", cid)["reason"].lower()
    finally:
        front.stop(1.0)


def test_five_approvals_in_a_row_within_30_seconds(web: Web, device: Device, official: tuple[Signer, str]) -> None:
    s, cid = official
    c = s.client()
    start = time.monotonic()
    for i in range(5):
        hs = digests(2, tag=str(i))
        p = c.authorize_passkey(cid, hs, [f"Hồ sơ {i}-1", f"Hồ sơ {i}-2"])
        assert "Đã phê duyệt" in approve_on_page(web, device, p.approval_path)
        sad = c.authorize_check(p.handle, wait_seconds=5).sad
        assert len(c.sign_hash(cid, sad, hs, "ECDSA").signatures) == 2
    assert time.monotonic() - start < 30.0


def test_the_page_speaks_english_on_request(web: Web, device: Device, official: tuple[Signer, str]) -> None:
    s, cid = official
    r = httpx.get(f"{web.http.base_url}/approve/no-such-approval", headers={"accept-language": "vi"})
    assert r.status_code == 404 and "Không phê duyệt được" in r.text
    assert r.headers["content-type"] == "text/html; charset=utf-8"
    assert "frame-ancestors 'none'" in r.headers["content-security-policy"]
    p = s.client().authorize_passkey(cid, digests(1))
    device.page.goto(f"{web.origin}{p.approval_path}?lang=en")
    assert "Approve signing" in device.page.inner_text("h1")
    ctx = web.browser.new_context(locale="en-GB")
    try:
        page = ctx.new_page()
        page.goto(f"{web.origin}{p.approval_path}")
        assert "Approve signing" in page.inner_text("h1")
    finally:
        ctx.close()
