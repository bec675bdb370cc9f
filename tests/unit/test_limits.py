"""Request limits and bounded audit records, without a token: the checker's messages, the tables'
coverage of every request field, and truncation-with-digest of audit values."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
from google.protobuf.descriptor import FieldDescriptor

from rsign.api.decoding import Unparsable
from rsign.api.validation import REQUESTS, STREAM_FIRST, validate
from rsign.domain import limits
from rsign.domain.events import Action, AuditEvent
from rsign.domain.limits import Nested, RequestRejected, Rules
from rsign.domain.settings import HsmConfig, Settings
from rsign.store.models import AuditRecord
from rsign.v1 import rsign_pb2 as pb

SETTINGS = Settings(state_dir=Path("/nonexistent"), database_url="sqlite://", hsm=HsmConfig("m", "t", "p"))
MIB = 1 << 20


def rejected(msg: object) -> RequestRejected:
    with pytest.raises(RequestRejected) as e:
        validate(msg, SETTINGS)
    return e.value


def test_messages_name_the_field_and_the_limit() -> None:
    e = rejected(pb.LoginRequest(user_id="u" * MIB))
    assert (e.field, e.message) == ("user_id", f"user_id is {MIB} characters; at most 128 are allowed")
    assert rejected(pb.LoginRequest()).message == "user_id is required"
    assert rejected(pb.LoginRequest(user_id="a", otp="1\x002")).message == "otp contains a NUL character"
    e = rejected(pb.AuthorizeRequest(credential_id="C", hash_algorithm=7, hashes=[b"x" * 32]))  # type: ignore[arg-type]
    assert e.message == "hash_algorithm is 7; it must be SHA256, SHA384 or SHA512"
    e = rejected(pb.AuthorizeRequest(credential_id="C", hash_algorithm=pb.SHA256, hashes=[b"x" * 65]))
    assert e.message == "hashes[0] is 65 bytes; at most 64 are allowed"
    n = SETTINGS.multisign_max + 1
    e = rejected(
        pb.SignHashRequest(credential_id="C", hash_algorithm=pb.SHA256, signature_scheme=pb.ECDSA, hashes=[b"x"] * n)
    )
    assert e.message == f"hashes has {n} items; at most {SETTINGS.multisign_max} are allowed"
    e = rejected(pb.ListEventsRequest(filter=pb.EventFilter(to_time=-5)))
    assert e.field == "filter.to_time" and e.message.startswith("filter.to_time is -5; it must be 0 (no bound)")
    e = rejected(pb.SetSealUsersRequest(credential_id="S", user_ids=["ok", "x" * 200]))
    assert e.message == "user_ids[1] is 200 characters; at most 128 are allowed"
    e = rejected(pb.SearchCredentialsRequest(expires_within_days=40_000))
    assert e.message == "expires_within_days is 40000; it must be between 0 and 36500 days"
    assert rejected(Unparsable("rsign.v1.LoginRequest")).message == (
        "the request is not a valid rsign.v1.LoginRequest message (it cannot be decoded)"
    )


def test_within_limits_passes() -> None:
    validate(pb.LoginRequest(user_id="u" * 128, pin="p" * 128, otp="123456"), SETTINGS)
    validate(pb.ListEventsRequest(filter=pb.EventFilter(from_time=limits.UNIX_TIME_MIN, to_time=0)), SETTINGS)
    validate(pb.SignHashStreamRequest(hashes=[b"x" * 32]), SETTINGS)  # a later message of a stream
    with pytest.raises(RequestRejected, match="credential_id is required"):
        validate(pb.SignHashStreamRequest(hashes=[b"x" * 32]), SETTINGS, first=True)


def _fields(rules: Rules, desc: object) -> None:
    names = {f.name for f in desc.fields}  # type: ignore[attr-defined]
    assert set(rules.fields) == names, desc.full_name  # type: ignore[attr-defined]
    for f in desc.fields:  # type: ignore[attr-defined]
        if f.type == FieldDescriptor.TYPE_MESSAGE:
            rule = rules.fields[f.name]
            assert isinstance(rule, Nested), f.full_name
            _fields(rule.rules, f.message_type)


def test_every_field_of_every_request_has_a_rule() -> None:
    inputs = {m.input_type.full_name for s in pb.DESCRIPTOR.services_by_name.values() for m in s.methods}
    assert {t.DESCRIPTOR.full_name for t in REQUESTS} == inputs
    for t, rules in REQUESTS.items():
        _fields(rules, t.DESCRIPTOR)
    assert set(STREAM_FIRST) <= set(REQUESTS)


def test_bounded_keeps_a_prefix_the_digest_and_the_length() -> None:
    assert limits.bounded("short", 10) == "short"
    value = "đ" * MIB
    b = limits.bounded(value, 128)
    assert len(b) == 128
    assert b.startswith("đđđ") and b.endswith(f", {MIB} chars)")
    assert hashlib.sha256(value.encode()).hexdigest()[:32] in b
    assert limits.bounded(value + "x", 128) != b  # different originals stay distinguishable


def test_audit_event_is_bounded_whatever_builds_it() -> None:
    ev = AuditEvent(Action.LOGIN, actor="u" * MIB, credential_id="c" * MIB, reason="r" * MIB, client="c" * 500)
    for name, most in limits.AUDIT_FIELD_MAX.items():
        assert len(getattr(ev, name)) <= most, name
    assert ev.actor.startswith("uuu") and f"{MIB} chars)" in ev.actor
    ev = AuditEvent(Action.LOGIN, details={"filter": {"agency": "a" * MIB}, "n": 3})
    assert len(ev.details["filter"]["agency"]) == limits.AUDIT_STRING_MAX and ev.details["n"] == 3
    ev = AuditEvent(Action.KEY_SEAL_USERS, details={"users": ["u" * 1000] * 2000})
    text = json.dumps(ev.details)
    assert len(text) < 2 * limits.AUDIT_STRING_MAX and "truncated" in ev.details
    # Ordinary details are kept as they are, up to a seal's largest list of the longest user ids.
    normal = {"sad_id": 7, "scheme": "ECDSA", "users": [f"{i:0128d}" for i in range(limits.USER_IDS_MAX)]}
    assert AuditEvent(Action.SIGN, details=normal).details == normal


def test_audit_limits_fit_the_columns() -> None:
    for name, most in limits.AUDIT_FIELD_MAX.items():
        length = getattr(AuditRecord.__table__.c[name].type, "length", None)
        assert length is None or most <= length, name
