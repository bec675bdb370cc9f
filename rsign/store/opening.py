"""Opening the database at start-up: a database that cannot be opened is one clear line naming it
(no password) and the driver's reason, not a driver traceback."""

from __future__ import annotations

from sqlalchemy import make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from rsign.domain.clock import Clock
from rsign.domain.errors import ConfigurationError
from rsign.store.engine import Store


def shown_url(url: str) -> str:
    """The URL as an operator may see it: the password masked."""
    try:
        return make_url(url).render_as_string(hide_password=True)
    except ArgumentError:
        return "(unparsable database URL)"


def open_store(url: str, clock: Clock | None = None, busy_timeout: float = 5.0) -> Store:
    try:
        return Store(url, clock, busy_timeout=busy_timeout)
    except ArgumentError as exc:
        raise ConfigurationError(f"the database URL {shown_url(url)} is not valid: {exc}") from None
    except SQLAlchemyError as exc:
        # The driver's own words (e.g. "unable to open database file", "file is not a database",
        # "connection refused"), without SQLAlchemy's statement and background-link lines.
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise ConfigurationError(f"cannot open the database {shown_url(url)}: {reason}") from exc
