"""``rsign client sign``: sign a file as a demo holder, end to end over gRPC through the client SDK.

A PDF is signed as a PDF (PAdES, through pyHanko); any other file gets a detached CMS signature
(``FILE.p7s``) over real CMS signed attributes (content type, signing time, the file's digest).
The demo knows its holders' PINs and seeds (demo-secrets.json), so it computes the codes itself.
"""

from __future__ import annotations

import base64
import hashlib
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from rsign.auth import totp
from rsign.client import Client, count_down
from rsign.dev.demo import DemoSecrets


@dataclass(frozen=True)
class SignedFile:
    path: str
    sha256: str
    signed: str  # the signed PDF, or the detached CMS signature (FILE.p7s)
    form: str  # "PAdES" or "CMS detached"
    credential_id: str
    key_version: int
    scheme: str
    verified: bool  # checked here against the root certificate GetCredential returned


def verify_signature(cert_der: bytes, digest: bytes, signature: bytes, scheme: str, hash_name: str = "SHA256") -> None:
    """Raise ``cryptography.exceptions.InvalidSignature`` unless ``signature`` verifies."""
    h: hashes.HashAlgorithm = {"SHA256": hashes.SHA256(), "SHA384": hashes.SHA384(), "SHA512": hashes.SHA512()}[
        hash_name
    ]
    pub = x509.load_der_x509_certificate(cert_der).public_key()
    if isinstance(pub, rsa.RSAPublicKey):
        pad: padding.AsymmetricPadding = (
            padding.PSS(padding.MGF1(h), h.digest_size) if scheme == "RSA_PSS" else padding.PKCS1v15()
        )
        pub.verify(signature, digest, pad, utils.Prehashed(h))
    elif isinstance(pub, ec.EllipticCurvePublicKey):
        pub.verify(signature, digest, ec.ECDSA(utils.Prehashed(h)))
    else:
        raise TypeError("unsupported key type")


def _next_steps(
    secrets_store: DemoSecrets, user_id: str, n: int, wait: Callable[[int], None] | None = None
) -> list[int]:
    """Pick ``n`` TOTP steps the server will accept as fresh: later than any this demo used, and
    within the +-1 step window. When the window is used up, waits for the clock, calling
    ``wait(seconds left)`` every second (a countdown, not silence)."""
    while True:
        last = int(secrets_store.load()["users"][user_id].get("last_step", -1))
        now = totp.step_of(time.time())
        first = max(last + 1, now)
        steps = list(range(first, first + n))
        if steps[-1] <= now + 1:

            def put(d: dict[str, Any], last_step: int = steps[-1]) -> None:
                d["users"][user_id]["last_step"] = last_step

            secrets_store.update(put)
            return steps
        left = totp.STEP_SECONDS - time.time() % totp.STEP_SECONDS + 0.2
        count_down(math.ceil(left), wait or (lambda _s: None))


def sign_file(
    server: str,
    state_dir: Path,
    credential_id: str,
    file: Path,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
    out_dir: Path | None = None,
    wait: Callable[[int], None] | None = None,
) -> SignedFile:
    """``ca_file``: connect over TLS (``cert_file``/``key_file``: with a client certificate).
    ``out_dir``: where the signed file goes (default: ``<state_dir>/signed``)."""
    from rsign.client.cms import sign_detached
    from rsign.client.verify import verify_pdf

    store = DemoSecrets(state_dir)
    data = store.load()
    user_id = data["credentials"].get(credential_id)
    if user_id is None:
        raise KeyError(f"{credential_id} is not a demo credential in {state_dir}")
    user = data["users"][user_id]
    seed = base64.b32decode(user["seed_b32"])
    content = file.read_bytes()
    is_pdf = content.startswith(b"%PDF-")
    out = out_dir or state_dir / "signed"
    login_step, authz_step = _next_steps(store, user_id, 2, wait)
    with Client(server, ca_file, cert_file, key_file) as client:
        client.login(user_id, user["pin"], totp.code_for_step(seed, login_step))
        cred = client.credential(credential_id)
        code = totp.code_for_step(seed, authz_step)
        if is_pdf:
            (signed,) = client.sign_pdfs(credential_id, [file], otp=code, out_dir=out)
            (report,) = verify_pdf(signed, [cred.certificates[-1]])
            verified = report.intact and report.trusted
        else:
            (signed,) = sign_detached(client, credential_id, [file], code, out)
            verified = _verify_detached(signed, content, cred.certificates[0], cred.default_scheme)
        client.logout()
    return SignedFile(
        str(file),
        hashlib.sha256(content).hexdigest(),
        str(signed),
        "PAdES" if is_pdf else "CMS detached",
        credential_id,
        cred.key_version,
        cred.default_scheme,
        verified,
    )


def _verify_detached(p7s: Path, content: bytes, cert_der: bytes, scheme: str) -> bool:
    """The signature verifies over the signed attributes, which carry this content's digest."""
    from asn1crypto import cms

    info = cms.ContentInfo.load(p7s.read_bytes())["content"]["signer_infos"][0]
    md = info["digest_algorithm"]["algorithm"].native
    attrs = {a["type"].native: a["values"][0].native for a in info["signed_attrs"]}
    if attrs.get("message_digest") != hashlib.new(md, content).digest():
        return False
    # Signed over as a SET OF (RFC 5652 5.4), not with the [0] tag it carries inside SignerInfo.
    signed_attrs_digest = hashlib.new(md, info["signed_attrs"].untag().dump()).digest()
    try:
        verify_signature(cert_der, signed_attrs_digest, info["signature"].native, scheme, md.upper())
    except Exception:
        return False
    return True
