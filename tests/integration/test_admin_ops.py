"""The two ``AdminOps`` implementations, the local ``AdminService`` and ``RemoteAdmin`` over gRPC,
answer the same operations with the same domain records. mypy checks both against the one
protocol (the annotations below); this checks what they return."""

from __future__ import annotations

import secrets
from dataclasses import replace

import grpc
import pytest

from rsign.admin.ports import AdminOps, MoveResult
from rsign.api.admin_client import RemoteAdmin
from rsign.domain.errors import FailedPrecondition
from rsign.domain.principal import LOCAL_OPERATOR, CredentialStatus, UserStatus
from rsign.domain.records import CredentialView, KeyVersionView
from tests.conftest import Env, Signer, make_signer


def _remote_view(c: CredentialView) -> CredentialView:
    return replace(c, cka_id=b"")  # the API does not disclose HSM object ids


def _remote_versions(vs: list[KeyVersionView]) -> list[KeyVersionView]:
    return [replace(v, cka_id=b"") for v in vs]


def test_local_and_remote_admin_return_the_same_records(env: Env) -> None:
    officer = make_signer(env, "ops.admin", role="admin")
    client = officer.client()
    try:
        local: AdminOps = env.app.admin
        remote: AdminOps = RemoteAdmin(client)
        who = LOCAL_OPERATOR
        agency = f"Sở Thử nghiệm {secrets.token_hex(3)}"

        # Enrolled through the server: the seed read back from the URI is the one that logs in.
        pin = f"P{secrets.randbelow(10**8):08d}"
        enr = remote.enrol(who, f"ops.user.{secrets.token_hex(3)}", "Cầm Thị Hoa", pin, agency)
        assert enr.otpauth_uri.startswith(f"otpauth://totp/rsign:{enr.user_id}?secret=")
        Signer(env, enr.user_id, pin, enr.seed).client().close()
        assert "seed" not in repr(enr) and enr.otpauth_uri not in repr(enr)

        (mine,) = local.search_users(who, agency=agency)
        assert remote.search_users(who, agency=agency) == [mine]
        suspended = remote.suspend(who, enr.user_id, "leave")
        assert suspended == replace(mine, status=UserStatus.SUSPENDED)
        assert local.search_users(who, agency=agency) == [suspended]
        assert remote.reactivate(who, enr.user_id) == mine
        with pytest.raises(FailedPrecondition, match="is not locked"):  # nothing to unlock
            local.unlock(who, enr.user_id)

        generated = remote.generate(who, f"OPS-{secrets.token_hex(3)}", "ec-p256", holder=enr.user_id)
        cid = generated.credential_id
        (stored,) = local.search_credentials(who, agency=agency)
        assert generated == _remote_view(stored) and generated.certificate and generated.not_after
        assert remote.history(who, cid) == _remote_versions(local.history(who, cid))
        rotated = remote.rotate(who, cid)
        assert rotated.key_version == 2
        assert remote.history(who, cid) == _remote_versions(local.history(who, cid))
        assert remote.set_enabled(who, cid, False).status == CredentialStatus.DISABLED
        assert remote.set_enabled(who, cid, True) == _remote_view(local.search_credentials(who, agency=agency)[0])
        expiring = local.expiring(who, 36500, agency)
        assert expiring and remote.expiring(who, 36500, agency) == [_remote_view(c) for c in expiring]
        assert remote.csr(who, cid).startswith(b"-----BEGIN CERTIFICATE REQUEST-----")

        moved = remote.move(who, enr.user_id, agency + " (mới)")
        assert isinstance(moved, MoveResult) and moved.revoked == [cid]
        assert local.search_users(who, agency=agency + " (mới)") == [moved.user]
        assert remote.search_credentials(who, agency=agency, status="revoked") == [
            _remote_view(c) for c in local.search_credentials(who, agency=agency, status="revoked")
        ]
    finally:
        client.close()


def test_a_remote_call_acts_for_the_session_not_for_who(env: Env) -> None:
    """``who`` is not sent: naming the local operator gives an agency admin nothing more."""
    aa = make_signer(env, "ops.aa", agency="UBND huyện Sốp Cộp", role="agency_admin")
    other = make_signer(env, "ops.other", agency="UBND huyện Mai Sơn")
    client = aa.client()
    try:
        remote: AdminOps = RemoteAdmin(client)
        with pytest.raises(grpc.RpcError) as e:
            remote.suspend(LOCAL_OPERATOR, other.user_id, "not theirs")
        assert e.value.code() == grpc.StatusCode.PERMISSION_DENIED
    finally:
        client.close()
