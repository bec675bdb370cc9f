"""PIN hashing with Argon2id (memory-hard), via argon2-cffi."""

from __future__ import annotations

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

# OWASP's minimum Argon2id profile (19 MiB, t=2, p=1): ~20-30 ms here, so a login stays quick while
# an offline guess at a 6-digit PIN from a stolen database costs real memory and time.
_hasher = PasswordHasher(time_cost=2, memory_cost=19 * 1024, parallelism=1)
_DUMMY = _hasher.hash("not-a-real-pin")


def hash_pin(pin: str) -> str:
    return _hasher.hash(pin)


def verify_pin(pin_hash: str | None, pin: str) -> bool:
    """Constant work whether or not the user exists (``pin_hash`` None): no user-id oracle by timing."""
    try:
        return _hasher.verify(pin_hash or _DUMMY, pin) and pin_hash is not None
    except (VerificationError, InvalidHashError):
        return False
