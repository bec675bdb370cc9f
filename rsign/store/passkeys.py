"""Passkeys, their enrolment challenges, and signing approvals waiting for a passkey."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Table, delete, insert, select, update

from rsign.domain.approvals import ApprovalState, ApprovalView, PasskeyView
from rsign.store import models as m
from rsign.store._core import rowcount, split_hashes

PASSKEYS: Table = m.Passkey.__table__  # type: ignore[assignment]
CHALLENGES: Table = m.PasskeyChallenge.__table__  # type: ignore[assignment]
APPROVALS: Table = m.SigningApproval.__table__  # type: ignore[assignment]


def _passkey(r: Any) -> PasskeyView:
    return PasskeyView(
        r.id, r.user_id, bytes(r.credential_id), bytes(r.public_key), int(r.sign_count), r.label, r.created_at,
        r.last_used_at,
    )  # fmt: skip


def _approval(r: Any) -> ApprovalView:
    blob, count = bytes(r.hashes), int(r._mapping["count"])
    return ApprovalView(
        id=r.id,
        approval_id=r.approval_id,
        user_id=r.user_id,
        session_id=r.session_id,
        credential_id=r.credential_id,
        key_version=r.key_version,
        hash_alg=r.hash_alg,
        hashes=split_hashes(blob, len(blob) // count),
        labels=tuple(json.loads(r.labels)),
        description=r.description,
        nonce=bytes(r.nonce),
        state=ApprovalState(r.state),
        created_at=r.created_at,
        expires_at=r.expires_at,
        passkey_id=r.passkey_id,
    )


class PasskeyRepo:
    c: Connection

    # -- passkeys ------------------------------------------------------------------------------

    def add_passkey(
        self, user_id: str, credential_id: bytes, public_key: bytes, sign_count: int, label: str, now: float
    ) -> int:
        res = self.c.execute(
            insert(PASSKEYS)
            .values(
                user_id=user_id,
                credential_id=credential_id,
                public_key=public_key,
                sign_count=sign_count,
                label=label,
                created_at=now,
            )
            .returning(PASSKEYS.c.id)
        )
        return int(res.scalar_one())

    def list_passkeys(self, user_id: str) -> list[PasskeyView]:
        rows = self.c.execute(select(PASSKEYS).where(PASSKEYS.c.user_id == user_id).order_by(PASSKEYS.c.id)).all()
        return [_passkey(r) for r in rows]

    def advance_sign_count(self, passkey_id: int, seen: int, new: int, now: float) -> bool:
        """Store the new counter only if nobody moved it since ``seen`` was read (two assertions
        verified concurrently cannot both pass the counter check)."""
        res = self.c.execute(
            update(PASSKEYS)
            .where(PASSKEYS.c.id == passkey_id, PASSKEYS.c.sign_count == seen)
            .values(sign_count=new, last_used_at=now)
        )
        return rowcount(res) == 1

    # -- enrolment challenges ------------------------------------------------------------------

    def add_passkey_challenge(
        self, cid: str, user_id: str, session_id: int, challenge: bytes, expires_at: float, now: float
    ) -> None:
        """A new enrolment challenge. It supersedes the session's earlier one, and the user's used or
        expired ones go: a user calling again and again keeps one row per session, not one per call."""
        self.c.execute(
            delete(CHALLENGES).where(
                CHALLENGES.c.user_id == user_id,
                (CHALLENGES.c.session_id == session_id)
                | CHALLENGES.c.used_at.is_not(None)
                | (CHALLENGES.c.expires_at <= now),
            )
        )
        self.c.execute(
            insert(CHALLENGES).values(
                id=cid, user_id=user_id, session_id=session_id, challenge=challenge, expires_at=expires_at
            )
        )

    def take_passkey_challenge(self, cid: str, user_id: str, session_id: int, now: float) -> bytes | None:
        """The challenge, once: marked used in the same transaction; None if unknown, another
        session's, expired or used."""
        r = self.c.execute(select(CHALLENGES).where(CHALLENGES.c.id == cid)).first()
        if r is None or r.user_id != user_id or r.session_id != session_id or r.used_at is not None:
            return None
        if now >= r.expires_at:
            return None
        res = self.c.execute(
            update(CHALLENGES).where(CHALLENGES.c.id == cid, CHALLENGES.c.used_at.is_(None)).values(used_at=now)
        )
        return bytes(r.challenge) if rowcount(res) == 1 else None

    # -- approvals -----------------------------------------------------------------------------

    def add_approval(
        self,
        approval_id: str,
        handle_hash: bytes,
        user_id: str,
        session_id: int,
        credential_id: str,
        key_version: int,
        hash_alg: str,
        hashes: Sequence[bytes],
        labels: Sequence[str],
        description: str,
        nonce: bytes,
        now: float,
        expires_at: float,
    ) -> int:
        res = self.c.execute(
            insert(APPROVALS)
            .values(
                approval_id=approval_id,
                handle_hash=handle_hash,
                user_id=user_id,
                session_id=session_id,
                credential_id=credential_id,
                key_version=key_version,
                hash_alg=hash_alg,
                hashes=b"".join(hashes),
                count=len(hashes),
                labels=json.dumps(list(labels), ensure_ascii=False),
                description=description,
                nonce=nonce,
                state=ApprovalState.PENDING,
                created_at=now,
                expires_at=expires_at,
            )
            .returning(APPROVALS.c.id)
        )
        return int(res.scalar_one())

    def get_approval(self, approval_id: str) -> ApprovalView | None:
        r = self.c.execute(select(APPROVALS).where(APPROVALS.c.approval_id == approval_id)).first()
        return None if r is None else _approval(r)

    def approval_by_handle(self, handle_hash: bytes) -> ApprovalView | None:
        r = self.c.execute(select(APPROVALS).where(APPROVALS.c.handle_hash == handle_hash)).first()
        return None if r is None else _approval(r)

    def move_approval(
        self, row_id: int, from_state: ApprovalState, to_state: ApprovalState, now: float, passkey_id: int | None = None
    ) -> bool:
        """Exactly-once state change (conditional UPDATE): approve once, deliver once."""
        values: dict[str, Any] = {"state": to_state}
        if to_state == ApprovalState.APPROVED:
            values |= {"approved_at": now, "passkey_id": passkey_id}
        res = self.c.execute(
            update(APPROVALS).where(APPROVALS.c.id == row_id, APPROVALS.c.state == from_state).values(**values)
        )
        return rowcount(res) == 1
