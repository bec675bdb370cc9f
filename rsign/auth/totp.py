"""TOTP (RFC 6238) on top of pyotp, with explicit time steps so replay can be refused by step."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import pyotp

STEP_SECONDS = 30
DIGITS = 6
SEED_BYTES = 20  # 160 bits, RFC 4226 section 4's recommendation


def new_seed() -> bytes:
    return secrets.token_bytes(SEED_BYTES)


def _totp(seed: bytes, digits: int = DIGITS, algorithm: str = "sha1") -> pyotp.TOTP:
    return pyotp.TOTP(
        base64.b32encode(seed).decode("ascii"), digits=digits, digest=getattr(hashlib, algorithm), interval=STEP_SECONDS
    )


def code_at(seed: bytes, for_time: float, digits: int = DIGITS, algorithm: str = "sha1") -> str:
    return _totp(seed, digits, algorithm).at(int(for_time))


def code_for_step(seed: bytes, step: int) -> str:
    return _totp(seed).at(step * STEP_SECONDS)


def step_of(t: float) -> int:
    return int(t // STEP_SECONDS)


def matching_steps(seed: bytes, code: str, now: float, window: int) -> list[int]:
    """Every step within ``window`` of now whose code equals ``code`` (constant-time compare)."""
    if not (len(code) == DIGITS and code.isdigit()):
        return []
    base = step_of(now)
    otp = _totp(seed)  # one generator for the window (each call to code_for_step builds its own)
    return [
        s for s in range(base - window, base + window + 1) if hmac.compare_digest(otp.at(s * STEP_SECONDS), code)
    ]


def provisioning_uri(seed: bytes, account: str, issuer: str = "rsign") -> str:
    return _totp(seed).provisioning_uri(name=account, issuer_name=issuer)
