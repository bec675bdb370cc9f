"""The unary benchmark's yardstick: a naive gRPC signing server.

One RPC signs one digest with an EC P-256 key on the same kind of token (the benchmark's SoftHSMv2
token, keys found by CKA_ID) in HSM worker processes (``rsign.hsm.pool.HsmPool``, as rsign does),
and nothing else: no login, no TOTP, no SAD, no audit, no database. It shows what signing over gRPC
costs on this machine, so that ``rsign bench --unary`` can say how much rsign's controls add.

Run as ``python -m rsign.dev.bench_naive --state-dir DIR --listen 127.0.0.1:PORT --workers N``, in a
process of its own like ``rsign serve``. Development tooling only: anyone who reaches its port can
sign with any key on the token, so it listens on loopback addresses only.
"""

from __future__ import annotations

import argparse
import ipaddress
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import FrameType

import grpc

from rsign.dev.bench_common import ServerProcess, free_port
from rsign.dev.embedded import EMBEDDED
from rsign.domain.algorithms import HashAlg, KeyAlgorithm, Scheme, sign_spec
from rsign.hsm.ports import ItemFailure
from rsign.runtime.config import load_settings

SERVICE = "rsign.bench.NaiveSigner"
METHOD = f"/{SERVICE}/Sign"
_THREADS = 64  # like rsign's default rpc_threads


def request(cka_id: bytes, digest: bytes) -> bytes:
    """The raw request (no .proto): a length byte, the key's CKA_ID, then the SHA-256 digest."""
    return bytes([len(cka_id)]) + cka_id + digest


def _parse(data: bytes) -> tuple[bytes, bytes]:
    n = data[0] if data else 0
    cka_id, digest = data[1 : 1 + n], data[1 + n :]
    if not n or len(cka_id) != n or len(digest) != 32:
        raise ValueError("expected a length byte, a CKA_ID and a 32-byte SHA-256 digest")
    return cka_id, digest


def serve(state_dir: Path, listen: str, workers: int) -> None:
    from rsign.hsm.pool import HsmPool

    host = listen.rsplit(":", 1)[0].strip("[]")
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit("the naive benchmark server signs for anyone: it listens on a loopback address only")
    settings = load_settings(state_dir, embedded=EMBEDDED)
    pool = HsmPool(settings.hsm, workers=workers)
    spec = sign_spec(KeyAlgorithm.EC_P256, HashAlg.SHA256, Scheme.ECDSA)

    def sign(data: bytes, context: grpc.ServicerContext) -> bytes:
        try:
            cka_id, digest = _parse(data)
        except ValueError as exc:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        result = pool.sign(cka_id, spec, [digest])[0]
        if isinstance(result, ItemFailure):
            context.abort(grpc.StatusCode.INTERNAL, result.reason)
        return result

    # No serializers: requests and responses are the raw bytes.
    handler = grpc.method_handlers_generic_handler(SERVICE, {"Sign": grpc.unary_unary_rpc_method_handler(sign)})
    server = grpc.server(ThreadPoolExecutor(max_workers=_THREADS), handlers=[handler])
    server.add_insecure_port(listen)
    stop = threading.Event()

    def on_signal(_signo: int, _frame: FrameType | None) -> None:
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    server.start()
    try:
        while not stop.wait(1.0):  # a plain wait() would hold off the signal handler on some Pythons
            pass
    finally:
        server.stop(grace=2).wait(5)
        pool.close()


def reachable(address: str) -> bool:
    with grpc.insecure_channel(address) as ch:
        try:
            grpc.channel_ready_future(ch).result(timeout=1)
            return True
        except grpc.FutureTimeoutError:
            return False


def naive_server(state_dir: Path, workers: int, log: Path | None = None) -> ServerProcess:
    """The naive server on ``state_dir``'s token, not yet started (it listens once its HSM
    workers are logged in, so reachable means ready)."""
    address = f"127.0.0.1:{free_port()}"
    argv = [sys.executable, "-m", "rsign.dev.bench_naive", "--state-dir", str(state_dir), "--listen", address]
    return ServerProcess([*argv, "--workers", str(workers)], address, reachable, name="naive signing server", log=log)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--state-dir", type=Path, required=True)
    p.add_argument("--listen", required=True)
    p.add_argument("--workers", type=int, required=True)
    args = p.parse_args(argv)
    serve(args.state_dir, args.listen, args.workers)


if __name__ == "__main__":
    main()
