"""The embedded development default: a SoftHSMv2 token and a development CA in the state directory.

Handed to ``rsign.runtime.config.load_settings`` by the top of the program (CLI, development tools,
tests); used only when no PKCS#11 module is configured.
"""

from __future__ import annotations

from pathlib import Path

from rsign.dev.devca import DevCA
from rsign.dev.softhsm import ensure_token
from rsign.domain.certificates import CertificateIssuer
from rsign.domain.settings import EmbeddedDefault


def development_ca(state_dir: Path) -> CertificateIssuer:
    return DevCA(state_dir / "dev-ca")


EMBEDDED = EmbeddedDefault(token=ensure_token, issuer=development_ca)
