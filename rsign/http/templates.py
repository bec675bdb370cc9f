"""HTML, CSS and script of the passkey pages (self-contained: no external assets, UTF-8).

The script talks WebAuthn with base64url-encoded JSON (py_webauthn's format), written out here
rather than relying on the newest browser helpers (``parseRequestOptionsFromJSON``).
"""

from __future__ import annotations

PAGE = """<!doctype html>
<html lang="{lang}">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title}</title>
<style nonce="{nonce}">{style}</style>
</head>
<body>
<main>
{body}
<p class="foot">{switch}</p>
</main>
<script nonce="{nonce}">{script}</script>
</body>
</html>
"""

STYLE = """
body { margin: 0; font-family: system-ui, "Segoe UI", Roboto, "Noto Sans", sans-serif; background: #f3f5f8;
       color: #1c2430; }
main { max-width: 32rem; margin: 0 auto; padding: 1rem; }
h1 { font-size: 1.35rem; margin: .5rem 0 1rem; color: #a3161b; }
dl { display: grid; grid-template-columns: auto 1fr; gap: .35rem .8rem; background: #fff; padding: .9rem;
     border-radius: .6rem; box-shadow: 0 1px 3px rgba(0,0,0,.08); }
dt { color: #5b6675; } dd { margin: 0; font-weight: 600; word-break: break-all; }
ol { background: #fff; border-radius: .6rem; padding: .8rem .8rem .8rem 2.2rem; box-shadow: 0 1px 3px rgba(0,0,0,.08); }
li { margin: .3rem 0; } .hash { display: block; font: .75rem ui-monospace, monospace; color: #5b6675; }
button { width: 100%; font-size: 1.1rem; padding: .9rem; border: 0; border-radius: .6rem; background: #a3161b;
         color: #fff; margin-top: .8rem; } button[disabled] { background: #9aa3ad; }
label { display: block; margin: .6rem 0 .2rem; } input { width: 100%; box-sizing: border-box; font-size: 1rem;
        padding: .6rem; border: 1px solid #c5ccd6; border-radius: .4rem; }
.note { font-size: .85rem; color: #5b6675; } .ok { color: #116329; font-weight: 600; }
.err { color: #a3161b; font-weight: 600; } .foot { text-align: center; margin-top: 1.5rem; }
"""

APPROVE_BODY = """<h1>{t[approve_title]}</h1>
<p>{t[intro]}</p>
<dl>
<dt>{t[official]}</dt><dd id="official">{user}</dd>
<dt>{t[credential]}</dt><dd id="credential">{credential}</dd>
<dt>{t[key_version]}</dt><dd>{key_version}</dd>
<dt>{t[documents]}</dt><dd id="count">{count}</dd>
<dt>{t[hash_alg]}</dt><dd>{hash_alg}</dd>
<dt>{t[expires]}</dt><dd>{left} {t[seconds]}</dd>
</dl>
{description}
<ol id="labels">{items}</ol>
<p class="note">{t[commit_note]}</p>
<button id="approve" {disabled}>{t[approve_button]}</button>
<p id="status" role="status" data-ok="{t[approved]}" data-working="{t[working]}" data-failed="{t[failed]}">{state}</p>
"""

ENROL_BODY = """<h1>{t[enrol_title]}</h1>
<p>{t[enrol_intro]}</p>
<label for="user">{t[user_id]}</label><input id="user" autocomplete="username">
<label for="pin">{t[pin]}</label><input id="pin" type="password" autocomplete="current-password">
<label for="otp">{t[otp]}</label><input id="otp" inputmode="numeric" autocomplete="one-time-code">
<label for="label">{t[device_label]}</label><input id="label">
<button id="enrol">{t[enrol_button]}</button>
<p id="status" role="status" data-ok="{t[enrolled]}" data-working="{t[working]}" data-failed="{t[failed]}"></p>
"""

SCRIPT = r"""
const enc = (buf) => btoa(String.fromCharCode(...new Uint8Array(buf)))
  .replace(/\+/g, "-").replace(/\//g, "_").replace(/=+$/, "");
const dec = (s) => Uint8Array.from(atob(s.replace(/-/g, "+").replace(/_/g, "/")), (c) => c.charCodeAt(0));
const say = (kind, extra) => {
  const el = document.getElementById("status");
  el.className = kind === "ok" ? "ok" : kind === "failed" ? "err" : "";
  el.textContent = el.dataset[kind] + (extra ? ": " + extra : "");
};
async function post(url, body, token) {
  const headers = { "content-type": "application/json" };
  if (token) headers.authorization = "Bearer " + token;
  const r = await fetch(url, { method: "POST", headers, body: JSON.stringify(body || {}) });
  const data = await r.json();
  if (!r.ok) throw new Error(data.error_description || data.error || r.status);
  return data;
}
async function getAssertion(optionsUrl) {
  const o = await post(optionsUrl);
  const cred = await navigator.credentials.get({ publicKey: {
    challenge: dec(o.challenge), rpId: o.rpId, timeout: o.timeout, userVerification: o.userVerification,
    allowCredentials: (o.allowCredentials || []).map((c) => ({ type: c.type, id: dec(c.id) })),
  } });
  const r = cred.response;
  return { id: cred.id, rawId: enc(cred.rawId), type: cred.type, clientExtensionResults: {},
           response: { clientDataJSON: enc(r.clientDataJSON), authenticatorData: enc(r.authenticatorData),
                       signature: enc(r.signature), userHandle: r.userHandle ? enc(r.userHandle) : null } };
}
async function register(token, label) {
  const o = await post("/passkeys/register/options", {}, token);
  const p = o.publicKey;
  const cred = await navigator.credentials.create({ publicKey: {
    rp: p.rp, user: { id: dec(p.user.id), name: p.user.name, displayName: p.user.displayName },
    challenge: dec(p.challenge), pubKeyCredParams: p.pubKeyCredParams, timeout: p.timeout,
    authenticatorSelection: p.authenticatorSelection, attestation: p.attestation,
    excludeCredentials: (p.excludeCredentials || []).map((c) => ({ type: c.type, id: dec(c.id) })),
  } });
  const r = cred.response;
  const credential = { id: cred.id, rawId: enc(cred.rawId), type: cred.type, clientExtensionResults: {},
    response: { clientDataJSON: enc(r.clientDataJSON), attestationObject: enc(r.attestationObject),
                transports: r.getTransports ? r.getTransports() : [] } };
  return post("/passkeys/register/finish", { challengeId: o.challengeId, credential, label }, token);
}
window.rsign = { getAssertion, post, register };
const approveButton = document.getElementById("approve");
if (approveButton) approveButton.addEventListener("click", async () => {
  approveButton.disabled = true;
  say("working");
  try {
    const credential = await getAssertion(location.pathname + "/options");
    await post(location.pathname + "/finish", { credential });
    say("ok");
  } catch (e) { say("failed", e.message); approveButton.disabled = false; }
});
const enrolButton = document.getElementById("enrol");
if (enrolButton) enrolButton.addEventListener("click", async () => {
  enrolButton.disabled = true;
  say("working");
  const v = (id) => document.getElementById(id).value;
  try {
    const login = await post("/csc/v2/auth/login", { userID: v("user"), PIN: v("pin"), OTP: v("otp") });
    await register(login.access_token, v("label"));
    say("ok");
  } catch (e) { say("failed", e.message); enrolButton.disabled = false; }
});
"""
