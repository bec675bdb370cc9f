"""The audit anchor (``rsign.domain.anchor``): private data objects on the token.

Why one object per write, never an update: SoftHSMv2 refuses C_SetAttributeValue on a data
object's CKA_VALUE (CKR_ATTRIBUTE_READ_ONLY; PKCS#11 does not make it modifiable), so a new
value is a new object. That also settles replicas racing, with no lock that spans hosts
(there is none with a network HSM; TokenFileLock orders one machine's processes only):
  - a writer creates a new object (atomic), then destroys only objects it knows to be LOWER
    than one that exists: its own previous one, or, when reading, those below the highest;
  - the anchor is the highest (epoch, seq) of all anchor objects.
An object is destroyed only once a higher one has existed, so the highest is never destroyed
and the anchor never moves backwards, however writers interleave. A read in another process
may lag for a moment (SoftHSMv2 refreshes its object index lazily): it can return an older
anchor, never a higher one, so callers keep the highest they have seen. The rejected alternative,
one object compared-then-written under a lock, needs a lock every replica shares: the token
file lock exists only for the embedded token, on one machine.
"""

from __future__ import annotations

from typing import Any

from pkcs11 import Attribute, ObjectClass
from pkcs11.exceptions import PKCS11Error

from rsign.domain.anchor import Anchor
from rsign.domain.errors import AuditIntegrityError, HsmUnavailable, InvalidRequest
from rsign.domain.settings import HsmConfig
from rsign.hsm.pkcs11_adapter.session import TokenSession, describe, serialised

ANCHOR_LABEL = "rsign-audit-anchor"


class AnchorObjects(TokenSession):
    def __init__(self, config: HsmConfig) -> None:
        super().__init__(config)
        # The anchor object this process created last, with its (epoch, seq): see write_anchor.
        self._anchor_own: tuple[tuple[int, int], Any] | None = None

    def _forget_handles(self) -> None:
        super()._forget_handles()
        self._anchor_own = None  # handles are session-bound; a read_anchor prunes what it leaves

    def _anchor_objects(self) -> list[tuple[tuple[int, int], Any, bytes]]:
        """Every anchor object with its (epoch, seq), highest last."""
        found: list[tuple[tuple[int, int], Any, bytes]] = []
        with self._file_lock.shared():
            objects = list(
                self._session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: ANCHOR_LABEL})
            )
            for obj in objects:
                try:
                    value = bytes(obj[Attribute.VALUE])
                except PKCS11Error:
                    continue  # destroyed by another process meanwhile
                try:
                    order = Anchor.decode(value).order
                except ValueError as exc:
                    # Never guess past an anchor this version cannot read (a newer rsign may
                    # have written a higher one): the caller reports it; only a reset replaces it.
                    raise AuditIntegrityError(f"an HSM anchor object cannot be read: {exc}") from None
                found.append((order, obj, value))
        found.sort(key=lambda f: f[0])
        return found

    def _destroy_quietly(self, obj: Any) -> None:
        try:
            obj.destroy()
        except PKCS11Error:
            pass  # already destroyed by another process: the same outcome

    @serialised
    def read_anchor(self) -> bytes | None:
        try:
            found = self._anchor_objects()
            if not found:
                return None
            top = found[-1][0]
            lower = [obj for order, obj, _ in found if order < top]
            if lower:
                with self._file_lock.exclusive():
                    for obj in lower:
                        self._destroy_quietly(obj)
            return found[-1][2]
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not read the audit anchor ({describe(exc)})") from exc

    @serialised
    def write_anchor(self, data: bytes) -> bool:
        try:
            order = Anchor.decode(data).order
        except ValueError as exc:
            raise InvalidRequest(f"not an audit anchor: {exc}") from None
        own = self._anchor_own
        if own is not None and order <= own[0]:
            return False
        try:
            with self._file_lock.exclusive():
                obj = self._create_anchor(data)
                if own is not None:
                    self._destroy_quietly(own[1])
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not store the audit anchor ({describe(exc)})") from exc
        self._anchor_own = (order, obj)
        return True

    @serialised
    def reset_anchor(self, data: bytes) -> bytes:
        try:
            anchor = Anchor.decode(data)
        except ValueError as exc:
            raise InvalidRequest(f"not an audit anchor: {exc}") from None
        try:
            with self._file_lock.exclusive():
                # Unreadable objects are replaced too: resetting is the operator's explicit decision.
                objects = list(
                    self._session.get_objects({Attribute.CLASS: ObjectClass.DATA, Attribute.LABEL: ANCHOR_LABEL})
                )
                epoch = 0
                for obj in objects:
                    try:
                        epoch = max(epoch, Anchor.decode(bytes(obj[Attribute.VALUE])).epoch)
                    except (PKCS11Error, ValueError):
                        continue
                value = anchor.with_epoch(epoch + 1).encode()
                created = self._create_anchor(value)  # first: the token is never without an anchor
                for obj in objects:
                    self._destroy_quietly(obj)
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not reset the audit anchor ({describe(exc)})") from exc
        self._anchor_own = ((epoch + 1, anchor.seq), created)
        return value

    def _create_anchor(self, value: bytes) -> Any:
        return self._session.create_object(
            {
                Attribute.CLASS: ObjectClass.DATA,
                Attribute.TOKEN: True,
                # Readable and writable only after C_Login with the user PIN, which the database
                # administrator does not hold.
                Attribute.PRIVATE: True,
                Attribute.LABEL: ANCHOR_LABEL,
                Attribute.APPLICATION: "rsign",
                Attribute.VALUE: value,
            }
        )
