"""Credentials, their key versions, organisation-seal users and destroy approvals."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Connection, Select, bindparam, delete, func, insert, select, update

from rsign.domain.principal import CredentialKind, CredentialStatus, KeyVersionStatus
from rsign.domain.records import CredentialView, KeyVersionView
from rsign.store._core import APPROVALS, CREDS, KEYS, SEAL_USERS, USERS, pack_certs, rowcount, unpack_certs
from rsign.store.fast import FastStatement


def _select_credentials(*where: Any) -> Select[Any]:
    return (
        select(CREDS, KEYS.c.cka_id, KEYS.c.certificate, KEYS.c.chain)
        .join(KEYS, (KEYS.c.credential_id == CREDS.c.credential_id) & (KEYS.c.version == CREDS.c.key_version))
        .where(*where)
        .order_by(CREDS.c.credential_id)
    )


# Hot-path statements, built once (see rsign.store.sessions): every Authorize and SignHash reads its
# credential.
_GET_CREDENTIAL = FastStatement(_select_credentials(CREDS.c.credential_id == bindparam("cid")))
_SEAL_USERS = FastStatement(select(SEAL_USERS.c.user_id).where(SEAL_USERS.c.credential_id == bindparam("cid")))


class CredentialRepo:
    c: Connection

    def _credentials(self, *where: Any) -> list[CredentialView]:
        return self._views(self.c.execute(_select_credentials(*where)).all())

    def _views(self, rows: Sequence[Any]) -> list[CredentialView]:
        return [
            CredentialView(
                r.credential_id,
                r.holder_user_id or "",
                r.agency,
                r.key_algorithm,
                CredentialStatus(r.status),
                r.key_version,
                r.multisign,
                bytes(r.cka_id),
                bytes(r.certificate),
                unpack_certs(bytes(r.chain)),
                CredentialKind(r.kind),
                r.status_reason,
                r.not_after,
            )
            for r in rows
        ]

    def get_credential(self, credential_id: str) -> CredentialView | None:
        found = self._views(_GET_CREDENTIAL.rows(self.c, {"cid": credential_id}))
        return found[0] if found else None

    def list_credentials(self, holder_user_id: str) -> list[CredentialView]:
        """The user's own credentials and the organisation seals they may activate."""
        seals = select(SEAL_USERS.c.credential_id).where(SEAL_USERS.c.user_id == holder_user_id)
        return self._credentials((CREDS.c.holder_user_id == holder_user_id) | CREDS.c.credential_id.in_(seals))

    def set_seal_users(self, credential_id: str, user_ids: Sequence[str]) -> None:
        self.c.execute(delete(SEAL_USERS).where(SEAL_USERS.c.credential_id == credential_id))
        if user_ids:
            self.c.execute(insert(SEAL_USERS), [{"credential_id": credential_id, "user_id": u} for u in user_ids])

    def seal_users(self, credential_id: str) -> list[str]:
        """The users authorized to activate the seal ``credential_id`` (``rsign.domain.policy``
        decides with this list)."""
        rows = _SEAL_USERS.rows(self.c, {"cid": credential_id})
        return sorted(r[0] for r in rows)

    def search_credentials(
        self, agency: str = "", name_folded: str = "", status: str = "", expires_before: float = 0.0, limit: int = 1000
    ) -> list[CredentialView]:
        where: list[Any] = []
        if agency:
            where.append(CREDS.c.agency == agency)
        if status:
            where.append(CREDS.c.status == status)
        if expires_before:
            # not_after 0: no certificate imported yet (real HSM), so nothing that expires.
            where.append(CREDS.c.not_after > 0)
            where.append(CREDS.c.not_after < expires_before)
        if name_folded:
            holders = select(USERS.c.user_id).where(USERS.c.name_folded.contains(name_folded, autoescape=True))
            where.append(CREDS.c.holder_user_id.in_(holders))
        return self._credentials(*where)[:limit]

    def credentials_of(self, user_id: str) -> list[CredentialView]:
        return self._credentials(CREDS.c.holder_user_id == user_id)

    def key_versions(self, credential_id: str) -> list[KeyVersionView]:
        rows = self.c.execute(select(KEYS).where(KEYS.c.credential_id == credential_id).order_by(KEYS.c.version)).all()
        return [
            KeyVersionView(
                r.credential_id,
                r.version,
                bytes(r.cka_id),
                bytes(r.certificate),
                unpack_certs(bytes(r.chain)),
                KeyVersionStatus(r.status),
            )
            for r in rows
        ]

    def add_key_version(
        self,
        credential_id: str,
        version: int,
        cka_id: bytes,
        certificate: bytes,
        chain_certs: Sequence[bytes],
        not_after: float,
        now: float,
    ) -> None:
        """A new current key version; the previous one is retired (verifies, never signs)."""
        self.c.execute(
            update(KEYS)
            .where(KEYS.c.credential_id == credential_id, KEYS.c.status == KeyVersionStatus.ACTIVE)
            .values(status=KeyVersionStatus.RETIRED)
        )
        self.c.execute(
            insert(KEYS).values(
                credential_id=credential_id,
                version=version,
                cka_id=cka_id,
                certificate=certificate,
                chain=pack_certs(chain_certs),
                status=KeyVersionStatus.ACTIVE,
                created_at=now,
            )
        )
        self.c.execute(
            update(CREDS).where(CREDS.c.credential_id == credential_id).values(key_version=version, not_after=not_after)
        )

    def set_certificate(
        self, credential_id: str, version: int, certificate: bytes, chain_certs: Sequence[bytes], not_after: float
    ) -> None:
        self.c.execute(
            update(KEYS)
            .where(KEYS.c.credential_id == credential_id, KEYS.c.version == version)
            .values(certificate=certificate, chain=pack_certs(chain_certs))
        )
        self.c.execute(
            update(CREDS)
            .where(CREDS.c.credential_id == credential_id, CREDS.c.key_version == version)
            .values(not_after=not_after)
        )

    def set_credential_status(
        self, credential_id: str, status: CredentialStatus, reason: str, only_from: Sequence[CredentialStatus]
    ) -> bool:
        """Move to ``status`` if the credential is currently in one of ``only_from``."""
        res = self.c.execute(
            update(CREDS)
            .where(CREDS.c.credential_id == credential_id, CREDS.c.status.in_(list(only_from)))
            .values(status=status, status_reason=reason)
        )
        return rowcount(res) == 1

    def mark_keys_destroyed(self, credential_id: str) -> None:
        self.c.execute(
            update(KEYS).where(KEYS.c.credential_id == credential_id).values(status=KeyVersionStatus.DESTROYED)
        )

    def destroy_approvals(self, credential_id: str) -> list[str]:
        rows = self.c.execute(
            select(APPROVALS.c.officer_user_id).where(APPROVALS.c.credential_id == credential_id)
        ).all()
        return [r[0] for r in rows]

    def add_destroy_approval(self, credential_id: str, officer: str, now: float) -> None:
        self.c.execute(insert(APPROVALS).values(credential_id=credential_id, officer_user_id=officer, requested_at=now))

    def add_credential(
        self,
        credential_id: str,
        holder_user_id: str,
        agency: str,
        key_algorithm: str,
        multisign: int,
        cka_id: bytes,
        certificate: bytes,
        chain_certs: Sequence[bytes],
        now: float,
        kind: CredentialKind = CredentialKind.PERSON,
        not_after: float = 0.0,
    ) -> None:
        self.c.execute(
            insert(CREDS).values(
                credential_id=credential_id,
                holder_user_id=holder_user_id or None,
                kind=kind,
                agency=agency,
                key_algorithm=key_algorithm,
                status=CredentialStatus.ACTIVE,
                status_reason="",
                key_version=1,
                multisign=multisign,
                not_after=not_after,
                created_at=now,
            )
        )
        self.c.execute(
            insert(KEYS).values(
                credential_id=credential_id,
                version=1,
                cka_id=cka_id,
                certificate=certificate,
                chain=pack_certs(chain_certs),
                status=KeyVersionStatus.ACTIVE,
                created_at=now,
            )
        )

    def count_credentials(self) -> int:
        return int(self.c.execute(select(func.count()).select_from(CREDS)).scalar_one())
