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
    "checkpoint_every_records",
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


def _read_pin(hsm: dict[str, Any], sd: Path) -> str:
    # Never from the command line: a file (e.g. a mounted secret: preferred, it wins when both are
    # set) or an environment variable (visible in /proc/PID/environ to the same user).
    pin_file = os.environ.get("RSIGN_HSM_PIN_FILE") or ""
    source = "RSIGN_HSM_PIN_FILE"
    if not pin_file and os.environ.get("RSIGN_HSM_PIN"):
        return os.environ["RSIGN_HSM_PIN"]
    if not pin_file and hsm.get("pin_file"):
        pin_file, source = str(sd / str(hsm["pin_file"])), "hsm.pin_file"  # relative to the state directory
    if pin_file:
        try:
            return Path(pin_file).read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise ConfigurationError(f"cannot read the HSM PIN file {pin_file} ({source}): {_why(exc)}") from None
    raise ConfigurationError("no HSM PIN: set RSIGN_HSM_PIN_FILE (preferred) or RSIGN_HSM_PIN, or hsm.pin_file")


def _why(exc: BaseException) -> str:
    return getattr(exc, "strerror", None) or str(exc)


def _read_file(cfg_path: Path) -> dict[str, Any]:
    if not cfg_path.exists():
        return {}
    try:
        with open(cfg_path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as exc:
        # tomllib's message names the line and column: "Expected '=' ... (at line 3, column 9)".
        raise ConfigurationError(f"{cfg_path} is not valid TOML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read {cfg_path}: {_why(exc)}") from None


def _typed(cfg_path: Path, key: str, value: Any) -> Any:
    """A ``[service]`` value checked against its setting's type; a mistake names the key, the value
    and what was expected, so that ``sad_ttl_seconds = "five"`` is one line, not a traceback."""

    def wrong(expected: str) -> ConfigurationError:
        return ConfigurationError(f"{cfg_path}: service.{key} = {value!r}: expected {expected}")

    # bool is an int to Python; ``hsm_workers = true`` is a mistake all the same.
    if key in _INT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise wrong("a whole number >= 0")
        return value
    if key in _FLOAT_KEYS:
        if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
            raise wrong("a number of seconds >= 0")
        return float(value)
    if not isinstance(value, str):
        raise wrong("a string")
    if key in _PATH_KEYS:
        # Relative to the state directory that holds the file.
        return str(cfg_path.parent / value) if value else ""
    return value


def state_problem(state_dir: Path | str | None = None) -> str | None:
    """Why ``state_dir`` is not an initialised rsign state directory (None: it is one).

    Initialised: the directory exists and holds its database (SQLite, the default) or names
    another one (``database_url``), and, on the embedded token, that token complete (its PIN file
    is written last). Nothing is created or changed while looking.
    """
    sd = resolve_state_dir(state_dir)
    if not sd.is_dir():
        return f"no rsign state directory at {sd}"
    cfg = _read_file(sd / "rsign.toml")
    module = os.environ.get("RSIGN_PKCS11_MODULE") or cfg.get("hsm", {}).get("module")
    external_db = os.environ.get("RSIGN_DATABASE_URL") or cfg.get("database_url")
    missing = [name for name, needed in (("rsign.db", not external_db), ("hsm-user-pin", not module)) if needed]
    missing = [name for name in missing if not (sd / name).exists()]
    if missing:
        return f"{sd} is not an initialised rsign state directory (no {' or '.join(missing)})"
    return None


def resolve_state_dir(state_dir: Path | str | None = None) -> Path:
    return Path(state_dir or os.environ.get("RSIGN_STATE_DIR") or DEFAULT_STATE_DIR).resolve()


def _check_module(module: str, source: str) -> None:
    """The PKCS#11 module must be a file: otherwise the token open fails later with a message
    ("cannot open the HSM token") that hides the real mistake."""
    path = Path(module)
    if not path.is_file():
        what = "does not exist" if not path.exists() else "is not a file"
        raise ConfigurationError(f"the PKCS#11 module {module} ({source}) {what}")


def load_settings(
    state_dir: Path | str | None = None, *, embedded: EmbeddedDefault | None = None, create: bool = True
) -> Settings:
    """Load settings for ``state_dir``. With no PKCS#11 module configured, ``embedded`` (the
    development token and CA) is initialised there and used; without it that is an error.

    ``create=False`` (every command that only reads or acts on an existing deployment): a
    directory that is not an initialised state is refused, naming it, and nothing is written.
    Everything is checked before anything is created."""
    sd = resolve_state_dir(state_dir)
    if not create and (problem := state_problem(sd)):
        raise ConfigurationError(
            f"{problem}: check --state-dir or RSIGN_STATE_DIR (create a new one with `rsign init`)"
        )
    cfg_path = sd / "rsign.toml"
    file_cfg = _read_file(cfg_path)
    for key in file_cfg:
        if key not in ("hsm", "service", "database_url"):
            raise ConfigurationError(f"unknown setting {key} in {cfg_path} (expected [hsm], [service], database_url)")
    hsm_cfg: dict[str, Any] = dict(file_cfg.get("hsm", {}))
    env_module = os.environ.get("RSIGN_PKCS11_MODULE")
    module = env_module or hsm_cfg.get("module")
    kw: dict[str, Any] = {}
    for key, value in file_cfg.get("service", {}).items():
        if key not in _INT_KEYS | _FLOAT_KEYS | _PATH_KEYS | {"listen"}:
            raise ConfigurationError(f"unknown setting service.{key} in {cfg_path}")
        kw[key] = _typed(cfg_path, key, value)
    db_url = os.environ.get("RSIGN_DATABASE_URL") or file_cfg.get("database_url") or f"sqlite:///{sd / 'rsign.db'}"
    if module:
        _check_module(str(module), "RSIGN_PKCS11_MODULE" if env_module else f"hsm.module in {cfg_path}")
        hsm = HsmConfig(
            module=str(module),
            token_label=os.environ.get("RSIGN_TOKEN_LABEL") or hsm_cfg.get("token_label") or "rsign",
            pin=_read_pin(hsm_cfg, sd),
        )
        if create:
            sd.mkdir(mode=0o700, parents=True, exist_ok=True)  # for the SQLite database
    elif embedded is None:
        raise ConfigurationError("no PKCS#11 module configured: set RSIGN_PKCS11_MODULE or hsm.module in rsign.toml")
    else:
        with init_lock(sd):
            hsm = embedded.token(sd)
    # A configured module always wins: a real HSM never gets the development CA.
    return Settings(state_dir=sd, database_url=db_url, hsm=hsm, embedded=None if module else embedded, **kw)


def database_url(state_dir: Path | str | None = None) -> str:
    """The database ``load_settings`` would open, without opening the HSM (``rsign db``)."""
    sd = Path(state_dir or os.environ.get("RSIGN_STATE_DIR") or DEFAULT_STATE_DIR).resolve()
    cfg_path = sd / "rsign.toml"
    file_cfg: dict[str, Any] = {}
    if cfg_path.exists():
        with open(cfg_path, "rb") as f:
            file_cfg = tomllib.load(f)
    return os.environ.get("RSIGN_DATABASE_URL") or file_cfg.get("database_url") or f"sqlite:///{sd / 'rsign.db'}"
