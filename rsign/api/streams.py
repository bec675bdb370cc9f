"""Streaming handlers are closed when their call ends, however it ends.

gRPC Python abandons a streaming handler's generator when the call ends before the generator
does (the client cancels, the deadline passes, the server shuts down and cancels what is left
after the grace period): it stops calling ``next`` and never calls ``close``. The generator's
cleanup (for ``SignHashStream``: wait for the chunks still at the HSM, audit them, write
``batch.end``; for every stream: leave the request context, give back admission slots) then runs
whenever the garbage collector reaches it: at interpreter exit, after the HSM pool is closed (the
audit records are lost, or it waits on a job nobody will run), or on whatever thread happens to
trigger a collection, possibly one holding the store's write lock (a self-deadlock that also
blocks the shutdown checkpoint).

So every response stream is closed when its call ends, on a thread of its own, in the call's own
context (request id, client, actor: the audit records of the cleanup name the right caller), and
shutdown waits, bounded, until all are closed.
"""

from __future__ import annotations

import contextvars
import inspect
import logging
import threading
from collections.abc import Callable, Generator, Iterator
from typing import Any

import grpc

log = logging.getLogger(__name__)

Handler = Callable[[Any, grpc.ServicerContext], Iterator[Any]]


class OpenStreams:
    """The response streams of one server that are not yet finished or closed."""

    def __init__(self) -> None:
        self._cv = threading.Condition()
        self._open = 0

    @property
    def open(self) -> int:
        with self._cv:
            return self._open

    def wait_closed(self, timeout: float) -> bool:
        """True once every stream is finished or closed; False if some are still open at ``timeout``."""
        with self._cv:
            return self._cv.wait_for(lambda: self._open == 0, timeout)

    def wrap(self, handler: Handler) -> Handler:
        """A streaming handler (a generator function) whose generators are closed when their call ends."""

        def guarded(request: Any, ctx: grpc.ServicerContext) -> Iterator[Any]:
            return _Stream(self, handler(request, ctx), ctx)

        return guarded

    def _opened(self) -> None:
        with self._cv:
            self._open += 1

    def _closed(self) -> None:
        with self._cv:
            self._open -= 1
            self._cv.notify_all()


class _Stream:
    """The iterator gRPC drives. It records whether gRPC is inside the generator right now and the
    call's context as of the last item, so that the closer never races the handler thread."""

    def __init__(self, owner: OpenStreams, gen: Iterator[Any], ctx: grpc.ServicerContext) -> None:
        assert isinstance(gen, Generator), "streaming handlers are generator functions"
        self._owner = owner
        self._gen: Generator[Any, None, None] = gen
        self._cv = threading.Condition()
        self._running = False
        self._over = False
        self._snapshot: contextvars.Context | None = None
        owner._opened()
        if not ctx.add_callback(self._call_ended):
            self._call_ended()  # the call is already over

    def __iter__(self) -> _Stream:
        return self

    def __next__(self) -> Any:
        with self._cv:
            self._running = True
        try:
            item = next(self._gen)
            # The call's context (set up by the interceptor inside the generator) as it is now.
            self._snapshot = contextvars.copy_context()
            return item
        except BaseException:
            self._finish()  # ended (StopIteration) or failed: the generator is closed
            raise
        finally:
            with self._cv:
                self._running = False
                self._cv.notify_all()

    def _finish(self) -> None:
        with self._cv:
            over, self._over = self._over, True
        if not over:
            self._owner._closed()

    def _call_ended(self) -> None:
        # Runs on gRPC's completion-queue thread: nothing slow here.
        if inspect.getgeneratorstate(self._gen) == inspect.GEN_CLOSED:
            self._finish()
            return
        threading.Thread(target=self._close, daemon=True, name="rsign-stream-close").start()

    def _close(self) -> None:
        try:
            with self._cv:
                # If gRPC's thread is inside the generator (the call was cancelled while it
                # waited for the HSM or a request), it comes out at the generator's next step.
                # Held while closing: a late ``next`` then finds the generator closed.
                self._cv.wait_for(lambda: not self._running)
                if self._snapshot is None:
                    self._gen.close()  # never yielded: no call context was set up
                else:
                    self._snapshot.run(self._gen.close)
        except Exception:  # the cleanup logs its own errors; never lose the count
            log.exception("closing a response stream whose call ended failed")
        finally:
            self._finish()
