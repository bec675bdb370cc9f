"""The worker process side of the HSM pool: its entry point (one PKCS#11 library initialisation,
one logged-in session, a loop answering jobs from its pipe), the parent's handle on it, and the
rebuilding of an error the worker reported as the same domain exception."""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import select
from collections.abc import Callable
from typing import Any

from rsign.domain.errors import HsmUnavailable, RsignError
from rsign.domain.settings import HsmConfig


def _worker_main(conn: multiprocessing.connection.Connection, config: HsmConfig, warm: bool) -> None:
    """Entry point of a worker process (started with ``spawn``: no inherited gRPC state)."""
    from rsign.hsm.pkcs11_adapter import Pkcs11Token

    try:
        token = Pkcs11Token(config)
        # Workers start together: on a fresh token two may each create a sealing key, which the
        # adapter tolerates (it tries every sealing key when unsealing).
        token.ensure_seal_key()
        if warm:
            token.warm()
    except RsignError as exc:
        conn.send(("fatal", type(exc).__name__, exc.message))
        return
    conn.send(("ready", os.getpid()))
    ops: dict[str, Callable[..., Any]] = {
        "sign": token.sign,
        "generate_keypair": token.generate_keypair,
        "generate_keypairs": token.generate_keypairs,
        "public_key": token.public_key,
        "seal": token.seal,
        "generate_mac_key": token.generate_mac_key,
        "destroy_keypair": token.destroy_keypair,
        "mac": token.mac,
        "unseal": token.unseal,
        "seal_key_id": token.seal_key_id,
        "rotate_seal_key": token.rotate_seal_key,
        "reseal": token.reseal,
        "read_anchor": token.read_anchor,
        "write_anchor": token.write_anchor,
        "reset_anchor": token.reset_anchor,
        "ping": lambda: os.getpid(),
    }
    while True:
        try:
            op, args = conn.recv()
        except (EOFError, OSError):
            break
        try:
            conn.send(("ok", ops[op](*args)))
        except RsignError as exc:
            conn.send(("err", type(exc).__name__, exc.message))
        except Exception as exc:  # report, never die silently with the job
            conn.send(("err", "HsmUnavailable", f"HSM worker error ({type(exc).__name__})"))
    token.close()


class Worker:
    """A worker process. ``start`` returns at once; ``wait_ready`` blocks until it is logged in,
    so a pool starts all its workers in parallel (on a token with 25,000 keys each one spends
    seconds loading it)."""

    def __init__(self, ctx: Any, config: HsmConfig, start_timeout: float, warm: bool) -> None:
        parent, child = ctx.Pipe()
        self.conn: multiprocessing.connection.Connection = parent
        self._timeout = start_timeout
        self.proc = ctx.Process(target=_worker_main, args=(child, config, warm), daemon=True, name="rsign-hsm-worker")
        self.proc.start()
        child.close()
        self.pid: int = self.proc.pid or 0
        # What the pool's receiver waits on for this worker's answers (see HsmPool._await).
        self.readable = select.poll()
        self.readable.register(self.conn.fileno(), select.POLLIN)

    def wait_ready(self) -> Worker:
        if not self.conn.poll(self._timeout):
            self.kill()
            raise HsmUnavailable("HSM worker did not start in time")
        msg = self.conn.recv()
        if msg[0] != "ready":
            self.kill()
            raise HsmUnavailable(f"HSM worker could not start: {msg[2]}")
        self.pid = msg[1]
        return self

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(timeout=5)
        self.conn.close()


def rebuild_error(kind: str, message: str) -> RsignError:
    import rsign.domain.errors as errors

    cls = getattr(errors, kind, None)
    if isinstance(cls, type) and issubclass(cls, RsignError):
        return cls(message)
    return HsmUnavailable(message)
