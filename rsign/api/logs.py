"""Log output for ``rsign serve``: text or JSON lines, and one access line per RPC.

The access line is built from the interceptor's ``CallRecord`` alone (method, status, duration,
request id, principal, client): the request and its metadata never reach a log, so no PIN, OTP,
session token or SAD can. Other records are formatted as they are; rsign's messages never carry
secrets (``rsign.domain.errors``), and the JSON formatter adds only the fields named here.
"""

from __future__ import annotations

import json
import logging
from datetime import UTC, datetime
from typing import Any

from rsign.api.interceptors import CallRecord

ACCESS = logging.getLogger("rsign.access")
# The extra fields an access record carries (and the only extras the JSON formatter copies).
_ACCESS_FIELDS = ("request_id", "method", "code", "duration_ms", "principal", "role", "client", "streaming")


def access_log(call: CallRecord) -> None:
    if not ACCESS.isEnabledFor(logging.INFO):
        return
    ms = round(call.seconds * 1000, 2)
    ACCESS.info(
        "%s %s %.1f ms request=%s principal=%s client=%s",
        call.method,
        call.code,
        ms,
        call.request_id,
        call.principal or "-",
        call.client,
        extra={
            "request_id": call.request_id,
            "method": call.method,
            "code": call.code,
            "duration_ms": ms,
            "principal": call.principal,
            "role": call.role,
            "client": call.client,
            "streaming": call.streaming,
        },
    )


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the access fields when present, and
    the exception (type and traceback) when there is one."""

    def format(self, record: logging.LogRecord) -> str:
        out: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for name in _ACCESS_FIELDS:
            if name in record.__dict__:
                out[name] = record.__dict__[name]
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, ensure_ascii=False)


def configure(log_format: str) -> None:
    """Set the format of every handler on the root logger and turn the access log on."""
    if log_format == "json":
        for handler in logging.getLogger().handlers:
            handler.setFormatter(JsonFormatter())
    ACCESS.setLevel(logging.INFO)
