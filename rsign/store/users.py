"""Users: enrolment, status, TOTP step acceptance and failure counting (single conditional UPDATEs)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, bindparam, insert, select, update

from rsign.domain.principal import Role, Scope, UserStatus
from rsign.domain.records import UserSecrets, UserView, fold
from rsign.store._core import CREDS, SADS, SESSIONS, USERS, rowcount
from rsign.store.fast import FastStatement

# The columns of a UserView: a user search or lookup never reads the secrets.
_PUBLIC = (USERS.c.user_id, USERS.c.name, USERS.c.agency, USERS.c.role, USERS.c.status, USERS.c.locked, USERS.c.scope)

# Hot-path statements, built once and run on the driver (rsign.store.fast).
_GET_USER = FastStatement(select(*_PUBLIC).where(USERS.c.user_id == bindparam("uid")))
_GET_SECRETS = FastStatement(
    select(USERS.c.user_id, USERS.c.pin_hash, USERS.c.totp_sealed, USERS.c.last_otp_step).where(
        USERS.c.user_id == bindparam("uid")
    )
)
_ACCEPT_STEP = FastStatement(
    update(USERS)
    .where(USERS.c.user_id == bindparam("uid"), USERS.c.last_otp_step < bindparam("step"), USERS.c.locked.is_(False))
    .values(last_otp_step=bindparam("step"), failed_attempts=0)
)


def _user_view(u: Any) -> UserView:
    return UserView(
        u.user_id,
        u.name,
        u.agency,
        Role(u.role),
        UserStatus(u.status),
        bool(u.locked),
        Scope(u.scope or Scope.AGENCY),
    )


class UserRepo:
    c: Connection

    def get_user(self, user_id: str) -> UserView | None:
        u = _GET_USER.first(self.c, {"uid": user_id})
        return None if u is None else _user_view(u)

    def get_user_secrets(self, user_id: str) -> UserSecrets | None:
        """For ``rsign.auth`` only (see ``rsign.domain.records``)."""
        u = _GET_SECRETS.first(self.c, {"uid": user_id})
        return None if u is None else UserSecrets(u.user_id, u.pin_hash, bytes(u.totp_sealed), u.last_otp_step)

    def add_user(
        self,
        user_id: str,
        name: str,
        agency: str,
        role: Role,
        pin_hash: str,
        totp_sealed: bytes,
        now: float,
        scope: Scope = Scope.AGENCY,
    ) -> None:
        self.c.execute(
            insert(USERS).values(
                user_id=user_id,
                name=name,
                agency=agency,
                role=role,
                status=UserStatus.ACTIVE,
                pin_hash=pin_hash,
                totp_sealed=totp_sealed,
                last_otp_step=-1,
                failed_attempts=0,
                locked=False,
                created_at=now,
                scope=scope,
                name_folded=fold(name),
            )
        )

    def search_users(
        self, agency: str = "", name_folded: str = "", status: str = "", limit: int = 1000
    ) -> list[UserView]:
        q = select(*_PUBLIC)
        if agency:
            q = q.where(USERS.c.agency == agency)
        if status:
            q = q.where(USERS.c.status == status)
        if name_folded:
            q = q.where(USERS.c.name_folded.contains(name_folded, autoescape=True))
        return [_user_view(u) for u in self.c.execute(q.order_by(USERS.c.user_id).limit(limit)).all()]

    def user_ids(self) -> set[str]:
        return {r[0] for r in self.c.execute(select(USERS.c.user_id)).all()}

    def credential_ids(self) -> set[str]:
        return {r[0] for r in self.c.execute(select(CREDS.c.credential_id)).all()}

    def set_user_status(self, user_id: str, status: UserStatus) -> bool:
        res = self.c.execute(update(USERS).where(USERS.c.user_id == user_id).values(status=status))
        return rowcount(res) == 1

    def set_user_agency(self, user_id: str, agency: str) -> None:
        self.c.execute(update(USERS).where(USERS.c.user_id == user_id).values(agency=agency))

    def set_totp(self, user_id: str, sealed: bytes) -> None:
        self.c.execute(update(USERS).where(USERS.c.user_id == user_id).values(totp_sealed=sealed, failed_attempts=0))

    def sealed_seeds(self, after: str, limit: int) -> list[tuple[str, bytes]]:
        """``(user_id, sealed seed)`` of up to ``limit`` users after ``after``, in user id order
        (the sealing key rotation walks every user in batches)."""
        rows = self.c.execute(
            select(USERS.c.user_id, USERS.c.totp_sealed)
            .where(USERS.c.user_id > after)
            .order_by(USERS.c.user_id)
            .limit(limit)
        )
        return [(r.user_id, bytes(r.totp_sealed)) for r in rows]

    def replace_sealed_seed(self, user_id: str, old: bytes, new: bytes) -> bool:
        """Re-sealed seed, only if the row still holds ``old`` (a TOTP reset meanwhile wins)."""
        result = self.c.execute(
            update(USERS).where(USERS.c.user_id == user_id, USERS.c.totp_sealed == old).values(totp_sealed=new)
        )
        return rowcount(result) == 1

    def end_user_sessions(self, user_id: str, now: float, reason: str) -> int:
        res = self.c.execute(
            update(SESSIONS)
            .where(SESSIONS.c.user_id == user_id, SESSIONS.c.ended_at.is_(None))
            .values(ended_at=now, end_reason=reason)
        )
        return rowcount(res)

    def expire_user_sads(self, user_id: str, now: float) -> int:
        """Unused SADs of the user stop working now (kept, for the audit trail)."""
        res = self.c.execute(
            update(SADS)
            .where(SADS.c.user_id == user_id, SADS.c.consumed_at.is_(None), SADS.c.expires_at > now)
            .values(expires_at=now)
        )
        return rowcount(res)

    def accept_otp_step(self, user_id: str, step: int) -> bool:
        """Atomically accept ``step`` if it is later than every step accepted before and the user
        is not locked; resets the failure counter. Correct across replicas: the check and the
        write are one conditional UPDATE."""
        return _ACCEPT_STEP.rowcount(self.c, {"uid": user_id, "step": step}) == 1

    def record_auth_failure(self, user_id: str, threshold: int) -> tuple[int, bool]:
        """Count one failure atomically; lock at ``threshold``. Returns (failures, locked_now)."""
        row = self.c.execute(
            update(USERS)
            .where(USERS.c.user_id == user_id)
            .values(failed_attempts=USERS.c.failed_attempts + 1)
            .returning(USERS.c.failed_attempts, USERS.c.locked)
        ).one()
        failures, locked = int(row[0]), bool(row[1])
        if not locked and failures >= threshold:
            res = self.c.execute(
                update(USERS).where(USERS.c.user_id == user_id, USERS.c.locked.is_(False)).values(locked=True)
            )
            return failures, rowcount(res) == 1
        return failures, False

    def unlock_user(self, user_id: str) -> bool:
        res = self.c.execute(update(USERS).where(USERS.c.user_id == user_id).values(locked=False, failed_attempts=0))
        return rowcount(res) == 1
