"""Login sessions (stored by token hash only)."""

from __future__ import annotations

from sqlalchemy import Connection, bindparam, insert, select, update

from rsign.domain.records import SessionView
from rsign.store._core import SESSIONS, rowcount
from rsign.store.fast import FastStatement

# Every authenticated call reads its session: built once, run on the driver (rsign.store.fast).
_GET_SESSION = FastStatement(select(SESSIONS).where(SESSIONS.c.token_hash == bindparam("token_hash")))
_TOUCH_SESSION = FastStatement(
    update(SESSIONS).where(SESSIONS.c.id == bindparam("sid")).values(last_seen=bindparam("now"))
)


class SessionRepo:
    c: Connection

    def add_session(self, token_hash: bytes, user_id: str, now: float, expires_at: float) -> int:
        res = self.c.execute(
            insert(SESSIONS)
            .values(token_hash=token_hash, user_id=user_id, created_at=now, last_seen=now, expires_at=expires_at)
            .returning(SESSIONS.c.id)
        )
        return int(res.scalar_one())

    def get_session(self, token_hash: bytes) -> SessionView | None:
        r = _GET_SESSION.first(self.c, {"token_hash": token_hash})
        if r is None:
            return None
        return SessionView(r.id, r.user_id, r.created_at, r.last_seen, r.expires_at, r.ended_at, r.end_reason)

    def touch_session(self, session_id: int, now: float) -> None:
        _TOUCH_SESSION.rowcount(self.c, {"sid": session_id, "now": now})

    def end_session(self, session_id: int, now: float, reason: str) -> bool:
        res = self.c.execute(
            update(SESSIONS)
            .where(SESSIONS.c.id == session_id, SESSIONS.c.ended_at.is_(None))
            .values(ended_at=now, end_reason=reason)
        )
        return rowcount(res) == 1
