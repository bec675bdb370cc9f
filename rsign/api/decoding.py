"""Request decoding that never raises: a malformed rsign.v1 request becomes ``Unparsable``.

grpc answers a request its deserializer cannot decode with INTERNAL ("Exception deserializing
request!") and logs a traceback, for every such request. The interceptor installs ``tolerant``
instead, so the bytes that fail to decode arrive at the servicer as ``Unparsable``, which request
validation (``rsign.api.validation``) refuses with INVALID_ARGUMENT like any other bad field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from google.protobuf.message import DecodeError

from rsign.domain.limits import RequestRejected
from rsign.v1 import rsign_pb2 as pb


@dataclass(frozen=True)
class Unparsable:
    """Stands for a request message that could not be decoded."""

    type_name: str

    def error(self) -> RequestRejected:
        return RequestRejected("", f"the request is not a valid {self.type_name} message (it cannot be decoded)")


def tolerant(method: str, deserializer: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """For an rsign.v1 method (``/rsign.v1.Service/Method``), a deserializer that returns
    ``Unparsable`` instead of raising. Other services (health) keep their own: their servicers do
    not expect ``Unparsable``."""
    service, _, name = method.lstrip("/").rpartition("/")
    package, _, short = service.rpartition(".")
    desc = pb.DESCRIPTOR.services_by_name.get(short) if package == pb.DESCRIPTOR.package else None
    if deserializer is None or desc is None or name not in desc.methods_by_name:
        return deserializer
    type_name = desc.methods_by_name[name].input_type.full_name
    inner = deserializer

    def parse(data: bytes) -> Any:
        try:
            return inner(data)
        except DecodeError:  # what protobuf raises for any malformed input
            return Unparsable(type_name)

    return parse
