"""Every size and range limit on what callers send, and on what the audit keeps, in one place.

Requests are checked against declarative rules (``Text``, ``Texts``, ``Blob``, ``Blobs``,
``Choice``, ``IntRange``, ``Coerced``, ``UnixTime``, ``Nested``) before anything is written or the HSM is
called; a violation is ``RequestRejected`` (``InvalidRequest``: INVALID_ARGUMENT) naming the field
and the limit. The transports hold the tables of rules per request type; this module holds the
numbers and the checker, and knows nothing of protobuf (it reads attributes).

Audit records are bounded too (``bounded``, ``bounded_details``): a refused request's oversized
value is kept as a prefix plus the SHA-256 of the whole and its length, so an auditor can still
tell values apart and match a suspected original, while one record stays small.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, TypeAlias

from rsign.domain.errors import InvalidRequest

if TYPE_CHECKING:
    from rsign.domain.settings import Settings

# -- request fields --------------------------------------------------------------------------
# Strings are counted in characters (code points), like the database's VARCHAR(n).
ID_MAX = 128  # user and credential ids (the users/credentials id columns are 128)
NAME_MAX = 256  # person names and agencies (columns are 256)
PIN_MAX = 128  # Argon2 takes any length; nobody types more
OTP_MAX = 16  # TOTP codes are 6 digits; room for spaces a person might paste
TOKEN_MAX = 128  # SADs (43 characters), page tokens
KEYWORD_MAX = 32  # role, scope, status, key algorithm, audit result
ACTION_MAX = 64  # audit action filter (the audit_log.action column is 64)
REASON_MAX = 256  # free-text reasons (credential status_reason column is 256)
SEARCH_MAX = 256  # search strings: names and agencies are at most this long anyway
USER_IDS_MAX = 1000  # user ids in one request (a seal's authorized users)
DIGEST_MAX = 64  # bytes: SHA-512; the exact length per algorithm is checked (and audited) later
CERT_CHAIN_MAX = 256 * 1024  # bytes: a PEM chain of a few certificates is a few kilobytes
EXPIRY_DAYS_MAX = 36_500  # a century
# Audit time filters: 0 (no bound), or within [2000-01-01, 2100-01-01] UTC.
UNIX_TIME_MIN = int(datetime(2000, 1, 1, tzinfo=UTC).timestamp())
UNIX_TIME_MAX = int(datetime(2100, 1, 1, tzinfo=UTC).timestamp())

# -- audit records ---------------------------------------------------------------------------
# Per column; no larger than the audit_log columns (rsign/store/models.py), which PostgreSQL
# enforces. A unit test keeps the two in step.
AUDIT_FIELD_MAX: Mapping[str, int] = {
    "actor": 128,
    "agency": 256,
    "credential_id": 128,
    "digest": 160,
    "reason": 2048,
    "request_id": 64,
    "client": 128,
}
AUDIT_STRING_MAX = 1024  # any string inside details
# Serialized details. Large enough for a seal's USER_IDS_MAX user ids (the largest legitimate
# details), small enough that no record costs more than a fraction of a megabyte.
AUDIT_DETAILS_MAX = 256 * 1024
_DIGEST_HEX = 32  # 128 bits of SHA-256: names the original unambiguously, fits short columns


def bounded(value: str, limit: int) -> str:
    """``value`` if it has at most ``limit`` characters; else a prefix and the SHA-256 (first 128
    bits) and length of the whole, ``limit`` characters in all."""
    if len(value) <= limit:
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogatepass")).hexdigest()[:_DIGEST_HEX]
    suffix = f"…(sha256:{digest}…, {len(value)} chars)"
    return value[: max(0, limit - len(suffix))] + suffix[:limit]


def _bound_json(value: Any) -> tuple[Any, int]:
    """Strings inside ``value`` bounded, and an upper bound on its JSON size (each character may
    become a 6-character escape)."""
    if isinstance(value, str):
        b = bounded(value, AUDIT_STRING_MAX)
        return b, 6 * len(b) + 2
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        size = 2
        for k, v in value.items():
            key, ks = _bound_json(str(k))
            val, vs = _bound_json(v)
            out[key] = val
            size += ks + vs + 2
        return out, size
    if isinstance(value, list | tuple):
        items = [_bound_json(v) for v in value]
        return [v for v, _ in items], 2 + sum(s + 1 for _, s in items)
    return value, 32  # numbers, booleans, None


_SCALARS = frozenset({int, float, bool, type(None)})


def _room(value: Any, budget: int) -> int:
    """What is left of ``budget`` (an upper bound on JSON characters) after ``value``; -1 if it
    runs out or a string is over ``AUDIT_STRING_MAX``. Builds nothing, and handles the flat
    str/number values inline: the hot path (one record per signature) pays about a microsecond."""
    t = type(value)
    if t is str:
        return budget - 6 * len(value) - 2 if len(value) <= AUDIT_STRING_MAX else -1
    if t in _SCALARS:
        return budget - 32
    if t is dict or isinstance(value, Mapping):
        budget -= 2
        for k, v in value.items():
            if type(k) is not str or len(k) > AUDIT_STRING_MAX:
                return -1
            budget -= 6 * len(k) + 4
            tv = type(v)
            if tv is str:
                if len(v) > AUDIT_STRING_MAX:
                    return -1
                budget -= 6 * len(v) + 2
            elif tv in _SCALARS:
                budget -= 32
            else:
                budget = _room(v, budget)
            if budget < 0:
                return -1
        return budget
    if isinstance(value, list | tuple):
        budget -= 2
        for v in value:
            budget = _room(v, budget - 1)
            if budget < 0:
                return -1
        return budget
    return -1  # anything else (a str subclass, an object): the slow path bounds or rejects it


def bounded_details(details: dict[str, Any]) -> dict[str, Any]:
    """``details`` itself when small (the common case); else with every string bounded; if that
    still serializes to more than ``AUDIT_DETAILS_MAX`` characters, a single bounded summary of
    the whole instead."""
    if _room(details, AUDIT_DETAILS_MAX) >= 0:
        return details
    out, estimate = _bound_json(details)
    if estimate <= AUDIT_DETAILS_MAX:
        return dict(out)
    text = json.dumps(out, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    if len(text) <= AUDIT_DETAILS_MAX:
        return dict(out)
    return {"truncated": bounded(text, AUDIT_STRING_MAX)}


# -- request rules ---------------------------------------------------------------------------


class RequestRejected(InvalidRequest):
    """A request field broke its rule; ``field`` names it (dotted for nested messages)."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name


# A number, or one read from the settings (multisign_max).
Limit: TypeAlias = "int | Callable[[Settings], int]"


def _limit(limit: Limit, settings: Settings) -> int:
    return limit if isinstance(limit, int) else limit(settings)


def _check_text(name: str, value: str, max_len: int, required: bool) -> None:
    if required and not value:
        raise RequestRejected(name, f"{name} is required")
    if len(value) > max_len:
        raise RequestRejected(name, f"{name} is {len(value)} characters; at most {max_len} are allowed")
    if "\x00" in value:  # PostgreSQL text cannot hold NUL; no legitimate value has one
        raise RequestRejected(name, f"{name} contains a NUL character")


@dataclass(frozen=True)
class Text:
    max_len: int
    required: bool = False

    def check(self, name: str, value: Any, settings: Settings) -> None:
        _check_text(name, value, self.max_len, self.required)


@dataclass(frozen=True)
class Texts:
    """A repeated string field."""

    max_count: Limit
    max_len: int

    def check(self, name: str, value: Sequence[str], settings: Settings) -> None:
        most = _limit(self.max_count, settings)
        if len(value) > most:
            raise RequestRejected(name, f"{name} has {len(value)} items; at most {most} are allowed")
        for i, item in enumerate(value):
            _check_text(f"{name}[{i}]", item, self.max_len, False)


@dataclass(frozen=True)
class Blob:
    max_len: int

    def check(self, name: str, value: bytes, settings: Settings) -> None:
        if len(value) > self.max_len:
            raise RequestRejected(name, f"{name} is {len(value)} bytes; at most {self.max_len} are allowed")


@dataclass(frozen=True)
class Blobs:
    """A repeated bytes field (digests)."""

    max_count: Limit
    max_len: int
    required: bool = False

    def check(self, name: str, value: Sequence[bytes], settings: Settings) -> None:
        most = _limit(self.max_count, settings)
        if self.required and not value:
            raise RequestRejected(name, f"{name}: at least one is required")
        if len(value) > most:
            raise RequestRejected(name, f"{name} has {len(value)} items; at most {most} are allowed")
        if not value or max(map(len, value)) <= self.max_len:
            return  # at C speed: the batch path checks thousands per message
        for i, item in enumerate(value):
            if len(item) > self.max_len:
                raise RequestRejected(name, f"{name}[{i}] is {len(item)} bytes; at most {self.max_len} are allowed")


@dataclass(frozen=True)
class Choice:
    """An enum field (proto3 enums are open: any int32 arrives)."""

    allowed: Mapping[int, str]  # value -> name

    def check(self, name: str, value: int, settings: Settings) -> None:
        if value not in self.allowed:
            names = list(self.allowed.values())
            expected = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
            raise RequestRejected(name, f"{name} is {value}; it must be {expected}")


@dataclass(frozen=True)
class IntRange:
    low: int
    high: Limit
    unit: str = ""

    def check(self, name: str, value: int, settings: Settings) -> None:
        high = _limit(self.high, settings)
        if not self.low <= value <= high:
            unit = f" {self.unit}" if self.unit else ""
            raise RequestRejected(name, f"{name} is {value}; it must be between {self.low} and {high}{unit}")


@dataclass(frozen=True)
class Coerced:
    """A count the service brings into its range itself (page sizes and result limits are capped
    at 1000, as AIP-158 recommends): every value is accepted."""

    def check(self, name: str, value: int, settings: Settings) -> None:
        return None


@dataclass(frozen=True)
class UnixTime:
    """Unix seconds: 0 (no bound) or within [UNIX_TIME_MIN, UNIX_TIME_MAX]."""

    def check(self, name: str, value: int, settings: Settings) -> None:
        if value and not UNIX_TIME_MIN <= value <= UNIX_TIME_MAX:
            raise RequestRejected(
                name,
                f"{name} is {value}; it must be 0 (no bound) or Unix seconds between"
                f" {UNIX_TIME_MIN} (2000-01-01) and {UNIX_TIME_MAX} (2100-01-01)",
            )


@dataclass(frozen=True)
class Nested:
    """A sub-message with its own rules; absent is fine (its fields read as defaults)."""

    rules: Rules

    def check(self, name: str, value: Any, settings: Settings) -> None:
        check(value, self.rules, settings, prefix=f"{name}.")


Rule = Text | Texts | Blob | Blobs | Choice | IntRange | Coerced | UnixTime | Nested


@dataclass(frozen=True)
class Rules:
    """The rules of one message type: field name -> rule. Fields not named are not checked; the
    transport's table covers every field of every request (a test says so)."""

    fields: Mapping[str, Rule] = field(default_factory=dict)


def check(msg: Any, rules: Rules, settings: Settings, prefix: str = "") -> None:
    """Raise ``RequestRejected`` for the first field of ``msg`` that breaks its rule."""
    for name, rule in rules.fields.items():
        rule.check(prefix + name, getattr(msg, name), settings)
