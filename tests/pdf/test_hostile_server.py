"""A broken or hostile server between the SDK and rsign: its SignHash answers are altered (a bit
flipped, a signature dropped or added, one swapped for another document's). ``sign_pdfs`` must
refuse them and write no signed file. The server is real rsign behind a real gRPC proxy."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import pytest

from rsign.client import BadServerAnswer, Client
from rsign.v1 import rsign_pb2 as pb
from tests.conftest import Env, Signer
from tests.pdf.tools import make_pdf

Tamper = Callable[[list[bytes]], list[bytes]]

if TYPE_CHECKING:  # grpc-stubs' generic; not subscriptable at run time
    _Handler = grpc.GenericRpcHandler[bytes, bytes]
else:
    _Handler = grpc.GenericRpcHandler


class Proxy(_Handler):
    """Forwards every unary call to rsign as bytes; SignHash answers go through ``tamper``."""

    def __init__(self, upstream: grpc.Channel) -> None:
        self.upstream = upstream
        self.tamper: Tamper = lambda sigs: sigs

    def service(self, details: grpc.HandlerCallDetails) -> grpc.RpcMethodHandler[bytes, bytes] | None:
        method: str = details.method  # type: ignore[attr-defined]
        call = self.upstream.unary_unary(method, None, None)  # bytes in, bytes out

        def handle(request: bytes, context: grpc.ServicerContext) -> bytes:
            md = tuple(
                (k, v) for k, v in context.invocation_metadata() if k != "user-agent" and not k.startswith("grpc-")
            )
            try:
                answer: bytes = call(request, metadata=md, timeout=30)
            except grpc.RpcError as err:
                context.abort(err.code(), str(err.details()))  # type: ignore[attr-defined]
            if method.endswith("/SignHash"):
                resp = pb.SignHashResponse.FromString(answer)
                sigs = self.tamper([bytes(s) for s in resp.signatures])
                del resp.signatures[:]
                resp.signatures.extend(sigs)
                answer = resp.SerializeToString()
            return answer

        return grpc.unary_unary_rpc_method_handler(handle)


@pytest.fixture(scope="module")
def proxy(env: Env) -> Iterator[tuple[Proxy, str]]:
    upstream = grpc.insecure_channel(env.server.address)
    handler = Proxy(upstream)
    server = grpc.server(futures.ThreadPoolExecutor(4), handlers=[handler])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        yield handler, f"127.0.0.1:{port}"
    finally:
        server.stop(0)
        upstream.close()


def flip(sigs: list[bytes]) -> list[bytes]:
    return [sigs[0][:-1] + bytes([sigs[0][-1] ^ 1]), *sigs[1:]]


TAMPERS: dict[str, Tamper] = {
    "flipped": flip,
    "dropped": lambda sigs: sigs[:-1],
    "added": lambda sigs: [*sigs, sigs[0]],
    "swapped": lambda sigs: [*reversed(sigs)],
    "garbage": lambda sigs: [b"\x30\x00", *sigs[1:]],
}


@pytest.mark.parametrize("algorithm", ["ec-p256", "rsa-2048"])
@pytest.mark.parametrize("tamper", list(TAMPERS))
def test_a_tampered_answer_writes_no_signed_file(
    proxy: tuple[Proxy, str], signer: Signer, tmp_path: Path, tamper: str, algorithm: str
) -> None:
    handler, address = proxy
    cid = signer.add_key(algorithm)
    docs = [make_pdf(tmp_path / f"doc{i}.pdf", f"Quyet dinh so {i}") for i in range(3)]
    out = tmp_path / "signed"
    handler.tamper = TAMPERS[tamper]
    try:
        with Client(address) as c:
            c.login(signer.user_id, signer.pin, signer.code())
            with pytest.raises(BadServerAnswer, match="nothing was written"):
                c.sign_pdfs(cid, docs, otp=signer.code(), out_dir=out)
    finally:
        handler.tamper = lambda sigs: sigs
    assert list(out.iterdir()) == []


def test_an_honest_answer_through_the_proxy_signs(proxy: tuple[Proxy, str], signer: Signer, tmp_path: Path) -> None:
    _, address = proxy
    cid = signer.add_key("ec-p256")
    docs = [make_pdf(tmp_path / f"doc{i}.pdf") for i in range(2)]
    with Client(address) as c:
        c.login(signer.user_id, signer.pin, signer.code())
        signed = c.sign_pdfs(cid, docs, otp=signer.code(), out_dir=tmp_path / "signed")
    assert [p.name for p in signed] == ["doc0.pdf", "doc1.pdf"] and all(p.stat().st_size > 0 for p in signed)
