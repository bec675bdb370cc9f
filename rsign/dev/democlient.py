"""``rsign client sign``: sign a file's digest as a demo holder, end to end over gRPC."""

from __future__ import annotations

import base64
import hashlib
import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from rsign.api.client import RsignClient
from rsign.auth import totp
from rsign.dev.demo import DemoSecrets


@dataclass(frozen=True)
class SignedFile:
    path: str
    sha256: str
    signed_attributes: str  # what was signed (its SHA-256): the file's digest and the signing time
    credential_id: str
    key_version: int
    scheme: str
    signature_b64: str
    verified: bool


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


def _next_steps(secrets_store: DemoSecrets, user_id: str, n: int) -> list[int]:
    """Pick ``n`` TOTP steps the server will accept as fresh: later than any this demo used, and
    within the +-1 step window. Waits for the clock when the window is used up."""
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
        time.sleep(totp.STEP_SECONDS - time.time() % totp.STEP_SECONDS + 0.2)


def sign_file(
    server: str,
    state_dir: Path,
    credential_id: str,
    file: Path,
    ca_file: Path | None = None,
    cert_file: Path | None = None,
    key_file: Path | None = None,
) -> SignedFile:
    """``ca_file``: connect over TLS (``cert_file``/``key_file``: with a client certificate)."""
    store = DemoSecrets(state_dir)
    data = store.load()
    user_id = data["credentials"].get(credential_id)
    if user_id is None:
        raise KeyError(f"{credential_id} is not a demo credential in {state_dir}")
    user = data["users"][user_id]
    seed = base64.b32decode(user["seed_b32"])
    file_digest = hashlib.sha256(file.read_bytes()).hexdigest()
    # Like CMS/PAdES signed attributes: the file's digest plus the signing time. rsign signs a
    # given hash occurrence at most once per credential, so signing the same file again signs
    # new attributes, not the same digest.
    signed_attrs = json.dumps(
        {"file": file.name, "sha256": file_digest, "signing_time": datetime.now(UTC).isoformat()},
        ensure_ascii=False,
        sort_keys=True,
    )
    digest = hashlib.sha256(signed_attrs.encode("utf-8")).digest()
    login_step, authz_step = _next_steps(store, user_id, 2)
    client = RsignClient(server, ca_file, cert_file, key_file)
    try:
        client.login(user_id, user["pin"], totp.code_for_step(seed, login_step))
        cred = client.get_credential(credential_id)
        scheme = "ECDSA" if cred.key_algorithm.startswith("EC") else "RSA_PKCS1_V15"
        sad = client.authorize(credential_id, [digest], totp.code_for_step(seed, authz_step)).sad
        resp = client.sign_hash(credential_id, sad, [digest], scheme)
        sig = resp.signatures[0]
        verify_signature(cred.certificates[0], digest, sig, scheme)
        client.logout()
    finally:
        client.close()
    return SignedFile(
        str(file),
        file_digest,
        signed_attrs,
        credential_id,
        resp.key_version,
        scheme,
        base64.b64encode(sig).decode("ascii"),
        True,
    )
