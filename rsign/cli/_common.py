"""What every command shares: the --state-dir option, the error printer, the local application."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from functools import wraps
from pathlib import Path
from typing import Any, TypeVar

import click
from rich.console import Console

from rsign.dev.embedded import EMBEDDED
from rsign.domain import context
from rsign.domain.errors import RsignError
from rsign.runtime.app import App, build_app
from rsign.runtime.config import DEFAULT_STATE_DIR, load_settings

F = TypeVar("F", bound=Callable[..., Any])
console = Console(stderr=True)
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "son-la"

state_dir_option = click.option(
    "--state-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: os.environ.get("RSIGN_STATE_DIR", str(DEFAULT_STATE_DIR)),
    show_default="./.rsign or $RSIGN_STATE_DIR",
    help="State directory (database, embedded SoftHSMv2 token, development CA).",
)


def friendly_errors(fn: F) -> F:
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RsignError as exc:
            # soft_wrap: one line whatever the width (rich would cut it at 80 columns off a terminal).
            console.print(f"[red]error:[/red] {exc.message}", soft_wrap=True)
            sys.exit(2)
        except Exception as exc:
            # A status from a remote server (grpc.RpcError: this layer does not import grpc).
            details, code = getattr(exc, "details", None), getattr(exc, "code", None)
            if not (callable(details) and callable(code)):
                raise
            console.print(f"[red]error ({code().name}):[/red] {details()}", soft_wrap=True)
            sys.exit(2)

    return wrapper  # type: ignore[return-value]


@contextmanager
def local_app(state_dir: Path, *, pool: bool = False) -> Iterator[App]:
    settings = load_settings(state_dir, embedded=EMBEDDED)
    app = build_app(settings, pool=pool)
    try:
        with local_context():
            yield app
    finally:
        app.close()


@contextmanager
def local_context() -> Iterator[None]:
    """Who acts, for the audit records of a command run on the state directory."""
    with context.request(client="cli", actor=f"cli:{_os_user()}"):
        yield


def _os_user() -> str:
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return str(os.getuid())
