"""What every command shares: the --state-dir option, the error printer, the local application."""

from __future__ import annotations

import getpass
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from functools import wraps
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console
from rich.markup import escape

from rsign.dev.embedded import EMBEDDED
from rsign.domain import context
from rsign.domain.errors import RsignError
from rsign.runtime.app import App, build_app
from rsign.runtime.config import DEFAULT_STATE_DIR, load_settings
from rsign.runtime.state import undo_on_failure

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


def verbose() -> bool:
    """``rsign -v``: errors show their details (the chain of causes, the traceback)."""
    ctx = click.get_current_context(silent=True)
    return bool(ctx and ctx.find_root().params.get("verbose"))


def _fail(prefix: str, message: str) -> NoReturn:
    """Called from an ``except`` block: with -v, the exception being handled is shown first."""
    if verbose():
        console.print_exception()
    # soft_wrap: one line whatever the width (rich would cut it at 80 columns off a terminal).
    console.print(f"[red]{prefix}[/red] {escape(message)}", soft_wrap=True, highlight=False)
    sys.exit(2)


def friendly_errors(fn: F) -> F:
    """An operator's mistake is one line on stderr and exit status 2; ``rsign -v`` adds details."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except RsignError as exc:
            _fail("error:", exc.message)
        except Exception as exc:
            # A status from a remote server (grpc.RpcError: this layer does not import grpc).
            details, code = getattr(exc, "details", None), getattr(exc, "code", None)
            if callable(details) and callable(code):
                _fail(f"error ({code().name}):", str(details()))
            # Anything else is a bug or an environment rsign did not foresee: still one line by
            # default, never a traceback an operator must read; -v shows it.
            text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
            _fail("error:", f"unexpected {type(exc).__name__}{': ' + text if text else ''} (details: rsign -v ...)")

    return wrapper  # type: ignore[return-value]


@contextmanager
def local_app(
    state_dir: Path, *, pool: bool = False, create: bool = False, all_or_nothing: bool = False
) -> Iterator[App]:
    """The application on a local state directory. Only ``create=True`` (commands that set up a
    deployment) initialises one; otherwise a directory that is not an rsign state is refused.
    A new state directory whose start-up fails is removed again; with ``all_or_nothing`` (an
    enrolment) also when the command itself fails: a refused first enrolment leaves nothing."""
    first = undo_on_failure(state_dir) if create else None
    with first or nullcontext():
        settings = load_settings(state_dir, embedded=EMBEDDED, create=create)
        app = build_app(settings, pool=pool)
        if first is not None and not all_or_nothing:
            first.keep()
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
