"""Key generation inside the HSM, with a development certificate."""

from __future__ import annotations

import secrets

from rsign import context
from rsign.audit.events import Action, event
from rsign.clock import Clock
from rsign.config import Settings
from rsign.errors import AlreadyExists, InvalidRequest, NotFound
from rsign.hsm.ports import Hsm
from rsign.keys.devca import DevCA
from rsign.signing.algorithms import KeyAlgorithm
from rsign.store.db import CredentialView, Store


class KeyService:
    def __init__(self, store: Store, hsm: Hsm, clock: Clock, settings: Settings, ca: DevCA) -> None:
        self._store = store
        self._hsm = hsm
        self._clock = clock
        self._settings = settings
        self._ca = ca

    def generate(
        self, credential_id: str, algorithm: str, holder_user_id: str, multisign: int | None = None
    ) -> CredentialView:
        alg = KeyAlgorithm.parse(algorithm)
        credential_id = credential_id.strip()
        if not credential_id or len(credential_id) > 128:
            raise InvalidRequest("a credential id is required (at most 128 characters)")
        ms = multisign or self._settings.multisign_default
        if not 1 <= ms <= self._settings.multisign_max:
            raise InvalidRequest(f"multisign must be between 1 and {self._settings.multisign_max}")
        with self._store.read() as t:
            holder = t.get_user(holder_user_id)
            if holder is None:
                raise NotFound(f"no user {holder_user_id}")
            if t.get_credential(credential_id) is not None:
                raise AlreadyExists(f"credential {credential_id} already exists")
        cka_id = secrets.token_bytes(16)
        # If the database insert below fails, the HSM keeps an orphan key that no credential names:
        # it can never be used to sign, and is preferable to a credential without a key.
        spki = self._hsm.generate_keypair(alg, cka_id, f"{credential_id}/v1")
        cert = self._ca.issue(spki, holder.name, holder.user_id, holder.agency)
        with self._store.tx() as t:
            t.add_credential(
                credential_id,
                holder.user_id,
                holder.agency,
                alg.value,
                ms,
                cka_id,
                cert,
                [self._ca.certificate_der],
                self._clock.now(),
            )
            t.append(
                event(
                    Action.KEY_GENERATE,
                    actor=context.current().actor or "cli",
                    agency=holder.agency,
                    credential_id=credential_id,
                    key_version=1,
                    details={"algorithm": alg.value, "holder": holder.user_id, "cka_id": cka_id.hex()},
                )
            )
            view = t.get_credential(credential_id)
        assert view is not None
        return view
