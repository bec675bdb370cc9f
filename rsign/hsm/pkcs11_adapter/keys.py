"""Signing keys on the token: generated there (never readable or exportable), signing digests
with a handle cached per CKA_ID, public keys as SubjectPublicKeyInfo, destruction."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import Future
from typing import Any

import pkcs11
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from pkcs11 import Attribute, KeyType, ObjectClass
from pkcs11 import Mechanism as P11Mech
from pkcs11.exceptions import PKCS11Error
from pkcs11.util.ec import encode_ec_public_key, encode_named_curve_parameters

from rsign.domain.algorithms import KeyAlgorithm, Mechanism, SignSpec
from rsign.domain.errors import HsmUnavailable
from rsign.hsm.pkcs11_adapter.session import RETRYABLE, TokenSession, serialised
from rsign.hsm.ports import ItemFailure, SignResult

_MECH = {
    Mechanism.RSA_PKCS: P11Mech.RSA_PKCS,
    Mechanism.RSA_PKCS_PSS: P11Mech.RSA_PKCS_PSS,
    Mechanism.ECDSA: P11Mech.ECDSA,
}
_PSS_HASH = {
    "SHA256": (P11Mech.SHA256, pkcs11.MGF.SHA256),
    "SHA384": (P11Mech.SHA384, pkcs11.MGF.SHA384),
    "SHA512": (P11Mech.SHA512, pkcs11.MGF.SHA512),
}
# Private keys: generated on the token, never readable or exportable, usable only for signing.
_PRIVATE_TEMPLATE = {
    Attribute.TOKEN: True,
    Attribute.PRIVATE: True,
    Attribute.SENSITIVE: True,
    Attribute.EXTRACTABLE: False,
    Attribute.SIGN: True,
    Attribute.DECRYPT: False,
    Attribute.UNWRAP: False,
    Attribute.DERIVE: False,
}
_PUBLIC_TEMPLATE = {Attribute.TOKEN: True, Attribute.VERIFY: True, Attribute.ENCRYPT: False, Attribute.WRAP: False}


class SigningKeys(TokenSession):
    @serialised
    def warm(self) -> int:
        """Cache a handle for every private key on the token in one pass.

        On SoftHSMv2 a lookup is linear in the number of objects (128 ms with 5,000 keys), so
        25,000 per-key lookups would take an hour; one scan takes seconds. Keys created later are
        looked up once, on first use."""
        try:
            with self._file_lock.shared():
                for key in self._session.get_objects({Attribute.CLASS: ObjectClass.PRIVATE_KEY}):
                    self._keys[bytes(key[Attribute.ID])] = key
        except PKCS11Error as exc:
            raise HsmUnavailable(f"cannot list the HSM's keys ({type(exc).__name__})") from exc
        return len(self._keys)

    def _private_key(self, cka_id: bytes) -> Any:
        return self._cached_key(ObjectClass.PRIVATE_KEY, cka_id)

    @serialised
    def sign(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> list[SignResult]:
        return self._restoring(lambda: self._sign(cka_id, spec, digests))

    def sign_async(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> Future[list[SignResult]]:
        """Single-threaded: signs now and returns a completed future."""
        fut: Future[list[SignResult]] = Future()
        try:
            fut.set_result(self.sign(cka_id, spec, digests))
        except Exception as exc:
            fut.set_exception(exc)
        return fut

    def _sign(self, cka_id: bytes, spec: SignSpec, digests: Sequence[bytes]) -> list[SignResult]:
        key = self._private_key(cka_id)
        mech = _MECH[spec.mechanism]
        param = None
        if spec.mechanism is Mechanism.RSA_PKCS_PSS:
            h, mgf = _PSS_HASH[spec.hash_alg.value]
            param = (h, mgf, spec.pss_salt_len)
        out: list[SignResult] = []
        for digest in digests:
            try:
                sig = key.sign(spec.frame(digest), mechanism=mech, mechanism_param=param)
            except RETRYABLE:
                raise
            except PKCS11Error as exc:
                out.append(ItemFailure(f"HSM refused to sign: {type(exc).__name__}"))
                continue
            out.append(_der_ecdsa(sig) if spec.der_ecdsa else sig)
        return out

    @serialised
    def generate_keypair(self, alg: KeyAlgorithm, cka_id: bytes, label: str) -> bytes:
        with self._file_lock.exclusive():
            return self._generate_keypair(alg, cka_id, label)

    def _generate_keypair(self, alg: KeyAlgorithm, cka_id: bytes, label: str) -> bytes:
        try:
            if alg.is_rsa:
                pub, _priv = self._session.generate_keypair(
                    KeyType.RSA,
                    alg.rsa_bits,
                    id=cka_id,
                    label=label,
                    store=True,
                    public_template=_PUBLIC_TEMPLATE,
                    private_template=_PRIVATE_TEMPLATE,
                )
            else:
                params = self._session.create_domain_parameters(
                    KeyType.EC,
                    {Attribute.EC_PARAMS: encode_named_curve_parameters(alg.curve)},
                    local=True,
                )
                pub, _priv = params.generate_keypair(
                    id=cka_id,
                    label=label,
                    store=True,
                    public_template=_PUBLIC_TEMPLATE,
                    private_template=_PRIVATE_TEMPLATE,
                )
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not generate the key ({type(exc).__name__})") from exc
        return _spki(pub)

    @serialised
    def generate_keypairs(self, items: Sequence[tuple[KeyAlgorithm, bytes, str]]) -> list[bytes]:
        with self._file_lock.exclusive():
            return [self._generate_keypair(alg, cka_id, label) for alg, cka_id, label in items]

    @serialised
    def public_key(self, cka_id: bytes) -> bytes:
        # Asked for right after another worker generated the key (CreateCsr after GenerateKey):
        # the same lazily refreshed index as a signature's key lookup, the same reload on a miss.
        return _spki(self._find_key(ObjectClass.PUBLIC_KEY, cka_id))

    @serialised
    def destroy_keypair(self, cka_id: bytes) -> int:
        self._keys.pop(cka_id, None)
        try:
            with self._file_lock.exclusive():
                objs = list(self._session.get_objects({Attribute.ID: cka_id}))
                for obj in objs:
                    obj.destroy()
        except PKCS11Error as exc:
            raise HsmUnavailable(f"the HSM could not destroy the key ({type(exc).__name__})") from exc
        return len(objs)


def _spki(pub: Any) -> bytes:
    if pub.key_type == KeyType.RSA:
        n = int.from_bytes(pub[Attribute.MODULUS], "big")
        e = int.from_bytes(pub[Attribute.PUBLIC_EXPONENT], "big")
        return (
            rsa.RSAPublicNumbers(e, n)
            .public_key()
            .public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
        )
    return bytes(encode_ec_public_key(pub))


def _der_ecdsa(raw: bytes) -> bytes:
    """PKCS#11 returns r || s; X.509, CMS and PAdES consumers need DER ECDSA-Sig-Value."""
    n = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:n], "big"), int.from_bytes(raw[n:], "big"))
