"""Every refusal that has a principal or a credential to name leaves an audit record (issue 10,
item 7): Authorize by a locked or suspended user, calls on an ended session, reading another's
credential, and every administrative operation refused by policy, state or an unknown target."""

from __future__ import annotations

import json
import secrets
from collections.abc import Mapping
from typing import Any

import grpc
import pytest

from rsign.api.admin_client import RemoteAdmin
from rsign.domain.events import EventFilter
from rsign.domain.principal import LOCAL_OPERATOR
from tests.conftest import Env, Signer, digests, make_signer


def code(e: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return e.value.code()  # type: ignore[no-any-return,attr-defined]


def newest(env: Env, action: str, actor: str) -> Mapping[str, Any]:
    with env.app.store.read() as t:
        found = t.last_events(EventFilter(action=action, actor=actor, result="failure"), 1)
    assert found, f"no {action} failure record for {actor}"
    return found[0]


def test_authorize_by_a_locked_user_is_recorded(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    hs = digests(2)
    for _ in range(env.settings.lockout_threshold):
        with pytest.raises(grpc.RpcError):
            c.authorize(cid, hs, "000000")
    with env.app.store.read() as t:
        before = t.audit_head()
    with pytest.raises(grpc.RpcError) as e:
        c.authorize(cid, hs, signer.code())
    assert code(e) == grpc.StatusCode.FAILED_PRECONDITION and "locked" in str(e.value.details())  # type: ignore[attr-defined]
    rec = newest(env, "sad.issue", signer.user_id)
    assert before is not None and int(rec["seq"]) > before[0]
    assert rec["reason"] == "user locked" and rec["agency"] == "Sở Nội vụ, tỉnh Sơn La"


def test_calls_on_an_ended_session_are_recorded(env: Env, signer: Signer) -> None:
    c = signer.client()
    c.list_credentials()
    token = c.token
    c.logout()
    c.token = token
    with pytest.raises(grpc.RpcError) as e:
        c.list_credentials()
    assert code(e) == grpc.StatusCode.UNAUTHENTICATED
    rec = newest(env, "auth.refuse", signer.user_id)
    assert rec["reason"] == "session revoked"
    # A token nobody was given names nobody: refused, not recorded (it would let anyone fill the log).
    with env.app.store.read() as t:
        before = t.audit_head()
    c.token = secrets.token_urlsafe(32)
    with pytest.raises(grpc.RpcError) as e:
        c.list_credentials()
    assert code(e) == grpc.StatusCode.UNAUTHENTICATED
    with env.app.store.read() as t:
        assert t.audit_head() == before


def test_suspended_user_and_foreign_credential_are_recorded(env: Env, signer: Signer) -> None:
    other = make_signer(env)
    theirs = other.add_key("ec-p256")
    c = signer.client()
    with pytest.raises(grpc.RpcError) as e:
        c.get_credential(theirs)
    assert code(e) == grpc.StatusCode.PERMISSION_DENIED
    rec = newest(env, "sad.refuse", signer.user_id)
    assert rec["credential_id"] == theirs and json.loads(rec["details"])["stage"] == "credential.get"
    env.app.admin.suspend(LOCAL_OPERATOR, signer.user_id, "on leave")
    with pytest.raises(grpc.RpcError) as e:
        c.list_credentials()
    assert code(e) == grpc.StatusCode.UNAUTHENTICATED
    assert newest(env, "auth.refuse", signer.user_id)["reason"] == "session user suspended"


def test_refused_administration_is_recorded(env: Env) -> None:
    signer = make_signer(env)
    admin_a = make_signer(env, "admin.a", agency="Sở Y tế", role="agency_admin")
    officer = make_signer(env, "officer", role="key_officer")
    officer2 = make_signer(env, "officer", role="key_officer")
    target = make_signer(env, agency="Sở Tư pháp")

    as_signer = RemoteAdmin(signer.client())
    with pytest.raises(grpc.RpcError) as e:
        as_signer.suspend(LOCAL_OPERATOR, target.user_id, "no reason")
    assert code(e) == grpc.StatusCode.PERMISSION_DENIED
    rec = newest(env, "user.suspend", signer.user_id)
    assert json.loads(rec["details"]) == {"error": "PermissionDenied", "user_id": target.user_id}

    # An agency admin reaching into another agency.
    with pytest.raises(grpc.RpcError) as e:
        RemoteAdmin(admin_a.client()).reset_totp(LOCAL_OPERATOR, target.user_id)
    assert code(e) == grpc.StatusCode.PERMISSION_DENIED
    assert "Sở Tư pháp" in newest(env, "user.reset_totp", admin_a.user_id)["reason"]

    ops = RemoteAdmin(officer.client())
    with pytest.raises(grpc.RpcError) as e:
        ops.set_enabled(LOCAL_OPERATOR, "NO-SUCH-CREDENTIAL", False)
    assert code(e) == grpc.StatusCode.NOT_FOUND
    assert newest(env, "key.disable", officer.user_id)["credential_id"] == "NO-SUCH-CREDENTIAL"

    # State: destroying a credential that is not revoked.
    cid = f"REF-{secrets.token_hex(3)}"
    ops.generate(LOCAL_OPERATOR, cid, "ec-p256", holder=target.user_id)
    with pytest.raises(grpc.RpcError) as e:
        ops.destroy(LOCAL_OPERATOR, cid)
    assert code(e) == grpc.StatusCode.FAILED_PRECONDITION
    assert newest(env, "key.destroy", officer.user_id)["credential_id"] == cid

    # The same officer approving twice: key.destroy writes its own record; exactly one.
    ops.revoke(LOCAL_OPERATOR, cid, "other")
    assert ops.destroy(LOCAL_OPERATOR, cid) == "requested"
    with pytest.raises(grpc.RpcError) as e:
        ops.destroy(LOCAL_OPERATOR, cid)
    assert code(e) == grpc.StatusCode.PERMISSION_DENIED
    with env.app.store.read() as t:
        refusals = t.find_events(EventFilter(action="key.destroy", credential_id=cid, result="failure"), 0, 100)
    assert [r["reason"] for r in refusals] == [
        f"credential {cid} is active; revoke it before destroying",
        "the same officer approved twice",
    ]
    assert RemoteAdmin(officer2.client()).destroy(LOCAL_OPERATOR, cid) == "destroyed"


def test_refused_audit_reads_are_recorded(env: Env, signer: Signer) -> None:
    """A signer asking for the audit log, and an agency auditor asking for another agency's records,
    are refused and leave a failure record naming what was asked."""
    c = signer.client()
    for call, action in (
        (lambda: c.list_events(page_size=5), "audit.query"),
        (lambda: c.export_events(), "audit.export"),
        (lambda: c.verify_log(), "audit.verify"),
    ):
        with pytest.raises(grpc.RpcError) as e:
            call()
        assert code(e) == grpc.StatusCode.PERMISSION_DENIED
        assert newest(env, action, signer.user_id)["reason"]
    auditor = make_signer(env, "auditor.refused", agency="Sở Y tế", role="auditor")
    a = auditor.client()
    with pytest.raises(grpc.RpcError) as e:
        a.list_events(agency="Sở Tư pháp")
    assert code(e) == grpc.StatusCode.PERMISSION_DENIED
    rec = newest(env, "audit.query", auditor.user_id)
    assert json.loads(str(rec["details"]))["filter"]["agency"] == "Sở Tư pháp"
