"""Rotating the key that seals users' TOTP seeds (``rsign keys rotate-internal totp-seal``).

A new wrapping key is made in the HSM and used for every seal from then on; the old one is kept,
retired, so that seeds not yet re-sealed still unseal (sign-ins never stop). Then every seed is
re-sealed, in batches: the HSM adapter unseals and seals each one again in its own process, so a
seed never comes out in clear, and each batch's new blobs are written with one ``auth.totp_reseal``
record. A blob is replaced only if the row still holds the one that was re-sealed (a TOTP reset
meanwhile wins). Resumable: ``reseal`` skips seeds already under the current key, so running it
again after an interruption (or a rotation by another process) finishes the work.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from rsign.audit.journal import AuditedStore
from rsign.auth.service import SEED_INTEGRITY_REASON, seed_aad
from rsign.domain.events import Action, Result, event
from rsign.hsm.ports import Hsm

BATCH = 200


@dataclass
class ResealReport:
    key: str  # the current sealing key's CKA_ID (hex)
    retired: list[str] = field(default_factory=list)  # keys this rotation retired (hex); empty for a resume
    resealed: int = 0
    current: int = 0  # already under the current key
    unsealable: list[str] = field(default_factory=list)  # user ids whose seed fails its integrity check


class SealRotation:
    def __init__(self, store: AuditedStore, hsm: Hsm) -> None:
        self._store = store
        self._hsm = hsm

    def rotate(self, batch: int = BATCH, progress: Callable[[int], None] | None = None) -> ResealReport:
        """A new sealing key (recorded), then every seed re-sealed under it."""
        new, old = self._hsm.rotate_seal_key()
        with self._store.tx() as t:
            t.append(event(Action.SEAL_KEY_ROTATE, details={"new_key": new.hex(), "retired": [k.hex() for k in old]}))
        report = self.reseal(batch, progress)
        report.retired = [k.hex() for k in old]
        return report

    def reseal(self, batch: int = BATCH, progress: Callable[[int], None] | None = None) -> ResealReport:
        report = ResealReport(key=self._hsm.seal_key_id().hex())
        after = ""
        while True:
            with self._store.read() as t:
                rows = t.sealed_seeds(after, batch)
            if not rows:
                return report
            after = rows[-1][0]
            blobs = self._hsm.reseal([(blob, seed_aad(uid)) for uid, blob in rows])
            changes = [(uid, old, new) for (uid, old), new in zip(rows, blobs, strict=True) if new not in (None, old)]
            bad = [uid for (uid, _), new in zip(rows, blobs, strict=True) if new is None]
            report.current += sum(1 for (_, old), new in zip(rows, blobs, strict=True) if new == old)
            if changes or bad:
                with self._store.tx() as t:
                    done = [uid for uid, old, new in changes if t.replace_sealed_seed(uid, old, new)]
                    if done:
                        t.append(
                            event(
                                Action.TOTP_RESEAL,
                                details={"key": report.key, "users": len(done), "first": done[0], "last": done[-1]},
                            )
                        )
                    if bad:
                        # Left as they are (the user needs `users reset-totp`), and said so.
                        t.append(
                            event(
                                Action.TOTP_RESEAL,
                                Result.FAILURE,
                                reason=SEED_INTEGRITY_REASON,
                                details={"user_ids": bad},
                            )
                        )
                report.resealed += len(done)
                report.unsealable += bad
            if progress is not None:
                progress(len(rows))
