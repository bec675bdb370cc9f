"""The audit MAC key: an HMAC-SHA256 secret generated on the token, never readable."""

from __future__ import annotations

from collections.abc import Sequence

from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import Mechanism as P11Mech
from pkcs11.exceptions import PKCS11Error

from rsign.domain.errors import HsmUnavailable
from rsign.hsm.pkcs11_adapter.session import RETRYABLE, TokenSession, serialised


class MacKeys(TokenSession):
    @serialised
    def generate_mac_key(self, cka_id: bytes, label: str) -> None:
        try:
            with self._file_lock.exclusive():
                self._generate_mac_key(cka_id, label)
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not generate the MAC key ({type(exc).__name__})") from exc

    def _generate_mac_key(self, cka_id: bytes, label: str) -> None:
        self._session.generate_key(
            KeyType.GENERIC_SECRET,
            256,
            id=cka_id,
            label=label,
            store=True,
            template={
                Attribute.TOKEN: True,
                Attribute.PRIVATE: True,
                Attribute.SENSITIVE: True,
                Attribute.EXTRACTABLE: False,
                Attribute.SIGN: True,
                Attribute.VERIFY: True,
            },
        )

    @serialised
    def mac(self, cka_id: bytes, messages: Sequence[bytes]) -> list[bytes]:
        def compute() -> list[bytes]:
            try:
                key = self._cached_key(ObjectClass.SECRET_KEY, cka_id)
                return [bytes(key.sign(m, mechanism=P11Mech.SHA256_HMAC)) for m in messages]
            except RETRYABLE:
                raise
            except PKCS11Error as exc:
                raise HsmUnavailable(f"the HSM could not compute the MAC ({type(exc).__name__})") from exc

        # Every audit append needs a MAC: a lost session must not stop the log for good.
        return self._restoring(compute)
