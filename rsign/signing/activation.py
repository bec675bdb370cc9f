"""Signing activation: the checks before a SAD, and issuing it.

One path for every way an activation is approved (a fresh TOTP typed into the signing software, or
a passkey assertion on the official's own device): ``check`` refuses what may not be activated
(audited), ``issue`` mints the SAD in the transaction that also *claims* the approval (accepts the
TOTP step, or marks the passkey approval delivered), so an approval yields at most one SAD.
"""

from __future__ import annotations

import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import NoReturn

from rsign.audit.journal import AuditedStore, AuditedTx
from rsign.auth.service import token_hash
from rsign.domain.algorithms import HashAlg, check_digests
from rsign.domain.clock import Clock
from rsign.domain.errors import InvalidRequest, PermissionDenied, RsignError
from rsign.domain.events import Action, event
from rsign.domain.principal import Principal
from rsign.domain.records import CredentialView
from rsign.domain.settings import Settings


@dataclass(frozen=True)
class Authorization:
    sad: str
    expires_at: float
    key_version: int


class ApprovalMethod:
    """How an activation was approved; written in every sad.issue record."""

    TOTP = "totp"
    PASSKEY = "passkey"


def occurrences(hashes: Sequence[bytes]) -> list[tuple[bytes, int]]:
    """(digest, k) for each item, k counting earlier items with the same digest: the key under
    which each hash occurrence is consumed."""
    seen: dict[bytes, int] = {}
    out = []
    for d in hashes:
        k = seen.get(d, 0)
        seen[d] = k + 1
        out.append((d, k))
    return out


class Activator:
    def __init__(
        self,
        store: AuditedStore,
        clock: Clock,
        settings: Settings,
        usable: Callable[[Principal, str], CredentialView],
        refused: Callable[[str, str, str, RsignError], NoReturn],
    ) -> None:
        self._store = store
        self._clock = clock
        self._settings = settings
        self._usable = usable
        self._refused = refused

    def check(
        self, who: Principal, credential_id: str, hash_alg: HashAlg, hashes: Sequence[bytes], fp: str
    ) -> CredentialView:
        """Everything an activation needs but its approval; a refusal is audited and raised."""
        try:
            if not hashes:
                raise InvalidRequest("at least one hash is required")
            check_digests(hash_alg, list(hashes))
            cred = self._usable(who, credential_id)
            limit = min(cred.multisign, self._settings.multisign_max)
            if len(hashes) > limit:
                raise InvalidRequest(
                    f"{len(hashes)} hashes requested; this credential allows at most {limit} per authorization"
                )
            keys = occurrences(hashes)
            with self._store.read() as t:
                used = t.consumed(credential_id, keys)
            if used:
                first = next(i for i, k in enumerate(keys) if k in used)
                raise PermissionDenied(
                    f"hash #{first + 1} (and {len(used) - 1} more) was already signed with this credential;"
                    " a hash occurrence is signed at most once"
                )
        except RsignError as exc:
            self._refused(Action.SAD_ISSUE, credential_id, fp, exc)
        return cred

    def issue(
        self,
        who: Principal,
        cred: CredentialView,
        hash_alg: HashAlg,
        hashes: Sequence[bytes],
        fp: str,
        method: str,
        claim: Callable[[AuditedTx], bool],
        details: dict[str, object] | None = None,
    ) -> Authorization | None:
        """Mint a SAD bound to ``who``'s session, ``cred``'s key version and the ordered ``hashes``,
        in the transaction in which ``claim`` takes the approval. ``None``: ``claim`` lost (the
        approval was used by a concurrent request); nothing was issued."""
        sad = secrets.token_urlsafe(32)
        now = self._clock.now()
        expires = now + self._settings.sad_ttl_seconds
        with self._store.tx() as t:
            if not claim(t):
                return None
            sad_id = t.add_sad(
                token_hash(sad),
                who.user_id,
                who.session_id,
                cred.credential_id,
                cred.key_version,
                hash_alg.value,
                hashes,
                now,
                expires,
            )
            t.append(
                event(
                    Action.SAD_ISSUE,
                    credential_id=cred.credential_id,
                    agency=cred.agency,
                    key_version=cred.key_version,
                    digest=fp,
                    details={
                        "sad_id": sad_id,
                        "count": len(hashes),
                        "hash_algorithm": hash_alg.value,
                        "expires_in": self._settings.sad_ttl_seconds,
                        "approved_by": method,
                        **(details or {}),
                    },
                )
            )
        return Authorization(sad, expires, cred.key_version)
