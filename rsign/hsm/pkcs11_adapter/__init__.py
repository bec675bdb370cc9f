"""The PKCS#11 adapter: the only package that imports ``pkcs11`` (import-linter contract "pkcs11").

``Pkcs11Token`` is the ``Hsm`` port over one logged-in session, composed of its parts, each a
module over the same session (``session.TokenSession``):

- ``session``: opening the token (bounded retries, the token file lock of ``file_lock``), restoring a
  session that went away, the cache of key handles keyed by CKA_ID, one call at a time;
- ``keys``: signing keys (generate, sign, public key, destroy); ``macs``: the audit MAC key;
- ``sealing``: small secrets sealed under AES-GCM keys on the token; ``anchors``: the audit anchor.

It is NOT thread-safe: python-pkcs11 initialises the library with ``C_Initialize(NULL)``, after which
SoftHSMv2 disables its own mutexes. Use it from one thread only; ``HsmPool`` gives each worker
process its own.
"""

from __future__ import annotations

from rsign.hsm.pkcs11_adapter.anchors import AnchorObjects
from rsign.hsm.pkcs11_adapter.keys import SigningKeys
from rsign.hsm.pkcs11_adapter.macs import MacKeys
from rsign.hsm.pkcs11_adapter.sealing import Sealing

__all__ = ["Pkcs11Token"]


class Pkcs11Token(SigningKeys, MacKeys, Sealing, AnchorObjects):
    """One logged-in session on the configured token (``HsmConfig``), opened at construction."""
