"""Embedded SoftHSMv2 token inside a state directory (development and tests only).

The token's user and SO PINs are generated here and stored beside it in files with mode 0600. That
is acceptable for a development box, never for production: there, point rsign at a real HSM's
PKCS#11 module and supply the PIN from a secret store (see hsm_config/README.md).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
from pathlib import Path

from rsign.domain.errors import ConfigurationError
from rsign.domain.files import write_private
from rsign.domain.settings import HsmConfig

TOKEN_LABEL = "rsign"
_MODULE_CANDIDATES = (
    "/usr/lib/softhsm/libsofthsm2.so",
    "/usr/lib/x86_64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/lib/aarch64-linux-gnu/softhsm/libsofthsm2.so",
    "/usr/local/lib/softhsm/libsofthsm2.so",
    "/opt/homebrew/lib/softhsm/libsofthsm2.so",
)


def find_softhsm_module() -> str:
    env = os.environ.get("RSIGN_SOFTHSM_MODULE")
    for cand in ((env,) if env else ()) + _MODULE_CANDIDATES:
        if cand and Path(cand).exists():
            return cand
    raise ConfigurationError(
        "SoftHSMv2 is not installed (libsofthsm2.so not found); install the Debian package "
        "'softhsm2' or set RSIGN_PKCS11_MODULE to your HSM's PKCS#11 module"
    )




def _conf_text(tokens: Path) -> str:
    return (
        "# SoftHSMv2 configuration for this rsign state directory (development only).\n"
        "# Written by rsign at every start from the state directory's own location: do not edit.\n"
        f"directories.tokendir = {tokens}\n"
        "objectstore.backend = file\n"
        "log.level = ERROR\n"
        "slots.removable = false\n"
    )


def _point_conf_at(conf: Path, tokens: Path) -> None:
    """SoftHSMv2 wants an absolute token directory (a relative one would be resolved against the
    process's working directory), so the file is (re)written from where the state directory is
    now. A state directory copied, moved or restored elsewhere then uses its own token, never the
    original's: the copy's old file still named the original's directory."""
    text = _conf_text(tokens)
    try:
        if conf.read_text(encoding="utf-8") == text:
            return
    except FileNotFoundError:
        pass
    tmp = conf.with_name(conf.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, conf)  # atomic: a worker starting now reads the old file or the new one


def ensure_token(state_dir: Path) -> HsmConfig:
    """Return the embedded token's configuration, creating the token on first use.

    The caller holds the state directory's initialisation lock.
    """
    module = find_softhsm_module()
    conf = state_dir / "softhsm2.conf"
    tokens = state_dir / "tokens"
    pin_file = state_dir / "hsm-user-pin"
    if not pin_file.exists():
        tokens.mkdir(mode=0o700, exist_ok=True)
        _point_conf_at(conf, tokens)
        user_pin = secrets.token_urlsafe(24)
        so_pin = secrets.token_urlsafe(24)
        util = shutil.which("softhsm2-util")
        if util is None:
            raise ConfigurationError("softhsm2-util not found; install the Debian package 'softhsm2'")
        # softhsm2-util takes the PINs as arguments only; they are visible to local users for the
        # lifetime of this one process. Acceptable for a development token, which is all this is.
        subprocess.run(
            [util, "--init-token", "--free", "--label", TOKEN_LABEL, "--so-pin", so_pin, "--pin", user_pin],
            check=True,
            env={**os.environ, "SOFTHSM2_CONF": str(conf)},
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        write_private(state_dir / "hsm-so-pin", so_pin)
        # Written last: its presence marks a complete token.
        write_private(pin_file, user_pin)
    elif not tokens.is_dir():
        raise ConfigurationError(f"{state_dir} has the embedded token's PIN but no token directory {tokens}")
    else:
        _point_conf_at(conf, tokens)
    return HsmConfig(
        module=module,
        token_label=TOKEN_LABEL,
        pin=pin_file.read_text(encoding="utf-8").strip(),
        softhsm_conf=str(conf),
    )
