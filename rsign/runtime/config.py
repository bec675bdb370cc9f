"""Settings: defaults, then ``<state-dir>/rsign.toml``, then ``RSIGN_*`` environment variables.

With no PKCS#11 module configured, rsign runs on the embedded default the caller hands in (a
SoftHSMv2 token and a development CA, ``rsign.dev.EMBEDDED``) and a SQLite database inside the
state directory, created on first use. This module never imports rsign.dev itself.
"""

from __future__ import annotations

import fcntl
import os
import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from rsign.domain.errors import ConfigurationError
from rsign.domain.settings import EmbeddedDefault, HsmConfig, Settings

DEFAULT_STATE_DIR = Path(".rsign")




_INT_KEYS = {
    "stream_inflight_chunks",
    "hsm_workers",
    "lockout_threshold",
    "otp_window",
    "multisign_default",
    "multisign_max",
    "pin_min_length",
    "rpc_threads",
    "rpc_stream_threads",
    "rpc_reserved_threads",
    "streams_per_session",
    "streams_per_user",
    "unary_per_session",
    "unary_per_user",
    "http_requests",
    "http_threads",
}
_FLOAT_KEYS = {
    "checkpoint_interval_seconds",
    "database_busy_timeout_seconds",
    "session_idle_seconds",
    "session_max_seconds",
    "sad_ttl_seconds",
    "shutdown_grace_seconds",
    "stream_idle_seconds",
    "replica_lease_seconds",
    "max_clock_drift_seconds",
}
_PATH_KEYS = {"tls_cert", "tls_key", "tls_client_ca"}


@contextmanager
def init_lock(state_dir: Path) -> Iterator[None]:
    """Serialise first-time initialisation between processes (server and CLI commands)."""
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    with open(state_dir / ".init.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_pin(hsm: dict[str, Any]) -> str:
    # Never from the command line: an environment variable or a file (e.g. a mounted secret).
    if os.environ.get("RSIGN_HSM_PIN"):
        return os.environ["RSIGN_HSM_PIN"]
    pin_file = os.environ.get("RSIGN_HSM_PIN_FILE") or hsm.get("pin_file")
    if pin_file:
        return Path(pin_file).read_text(encoding="utf-8").strip()
    raise ConfigurationError("no HSM PIN: set RSIGN_HSM_PIN_FILE (preferred) or RSIGN_HSM_PIN, or hsm.pin_file")


def load_settings(state_dir: Path | str | None = None, *, embedded: EmbeddedDefault | None = None) -> Settings:
    """Load settings for ``state_dir``. With no PKCS#11 module configured, ``embedded`` (the
    development token and CA) is initialised there and used; without it that is an error."""
    sd = Path(state_dir or os.environ.get("RSIGN_STATE_DIR") or DEFAULT_STATE_DIR).resolve()
    file_cfg: dict[str, Any] = {}
    cfg_path = sd / "rsign.toml"
    if cfg_path.exists():
        with open(cfg_path, "rb") as f:
            file_cfg = tomllib.load(f)
    hsm_cfg: dict[str, Any] = dict(file_cfg.get("hsm", {}))
    module = os.environ.get("RSIGN_PKCS11_MODULE") or hsm_cfg.get("module")
    with init_lock(sd):
        if module:
            hsm = HsmConfig(
                module=module,
                token_label=os.environ.get("RSIGN_TOKEN_LABEL") or hsm_cfg.get("token_label") or "rsign",
                pin=_read_pin(hsm_cfg),
            )
        elif embedded is not None:
            hsm = embedded.token(sd)
        else:
            raise ConfigurationError(
                "no PKCS#11 module configured: set RSIGN_PKCS11_MODULE or hsm.module in rsign.toml"
            )
    db_url = os.environ.get("RSIGN_DATABASE_URL") or file_cfg.get("database_url") or f"sqlite:///{sd / 'rsign.db'}"
    kw: dict[str, Any] = {}
    for key, value in file_cfg.get("service", {}).items():
        if key in _INT_KEYS:
            kw[key] = int(value)
        elif key in _FLOAT_KEYS:
            kw[key] = float(value)
        elif key == "listen":
            kw[key] = str(value)
        elif key in _PATH_KEYS:
            # Relative to the file that names them.
            kw[key] = str(sd / str(value)) if value else ""
        else:
            raise ConfigurationError(f"unknown setting service.{key} in {cfg_path}")
    # A configured module always wins: a real HSM never gets the development CA.
    return Settings(state_dir=sd, database_url=db_url, hsm=hsm, embedded=None if module else embedded, **kw)
