"""Passkey approval rules that need no browser: what Authorize and AuthorizeCheck refuse over
gRPC, and the domain's own checks on a verified assertion (whose passkey, user verification,
counter), which hold whatever the transport let through."""

from __future__ import annotations

import secrets

import grpc
import pytest

from rsign.domain.approvals import VerifiedAssertion
from rsign.domain.errors import PermissionDenied
from rsign.domain.principal import Principal
from rsign.v1 import rsign_pb2 as pb
from tests.conftest import Env, Signer, digests, make_signer


def code(e: pytest.ExceptionInfo[grpc.RpcError]) -> grpc.StatusCode:
    return e.value.code()  # type: ignore[no-any-return,attr-defined]


def principal(env: Env, s: Signer) -> Principal:
    c = s.client()
    return env.app.auth.authenticate(c.token)


def with_passkey(env: Env, s: Signer, count: int = 5) -> bytes:
    """A stored passkey (as enrolment stores one): its public key is never used here, since these
    tests hand the domain an assertion the transport would have verified."""
    cid = secrets.token_bytes(16)
    env.app.passkeys.add(principal(env, s), cid, b"cose-key", count, "test")
    return cid


def test_no_passkey_no_pending_approval(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    with pytest.raises(grpc.RpcError) as e:
        c.authorize_passkey(cid, digests(1))
    assert code(e) == grpc.StatusCode.FAILED_PRECONDITION and "no passkey" in str(e.value.details())  # type: ignore[attr-defined]


def test_otp_and_passkey_together_are_refused(env: Env, signer: Signer) -> None:
    cid = signer.add_key("ec-p256")
    c = signer.client()
    req = pb.AuthorizeRequest(
        credential_id=cid, hash_algorithm=pb.SHA256, hashes=digests(1), otp="123456", passkey=True
    )
    with pytest.raises(grpc.RpcError) as e:
        c.signing.Authorize(req, metadata=c._md())
    assert code(e) == grpc.StatusCode.INVALID_ARGUMENT


def test_activation_checks_run_before_a_pending_approval(env: Env, signer: Signer) -> None:
    with_passkey(env, signer)
    other = make_signer(env, "other")
    foreign = other.add_key("ec-p256")
    c = signer.client()
    with pytest.raises(grpc.RpcError) as e:
        c.authorize_passkey(foreign, digests(1))
    assert code(e) == grpc.StatusCode.PERMISSION_DENIED and "not yours" in str(e.value.details())  # type: ignore[attr-defined]
    cid = signer.add_key("ec-p256")
    with pytest.raises(grpc.RpcError) as e:
        c.authorize_passkey(cid, digests(2), ["only one label"])
    assert code(e) == grpc.StatusCode.INVALID_ARGUMENT


def test_poll_is_for_the_session_that_asked(env: Env, signer: Signer) -> None:
    with_passkey(env, signer)
    cid = signer.add_key("ec-p256")
    p = signer.client().authorize_passkey(cid, digests(1))
    with pytest.raises(grpc.RpcError) as e:
        signer.client().authorize_check(p.handle)  # the same official, another session
    assert code(e) == grpc.StatusCode.PERMISSION_DENIED
    with pytest.raises(grpc.RpcError) as e:
        signer.client().authorize_check("no-such-handle")
    assert code(e) == grpc.StatusCode.NOT_FOUND


def test_the_domain_checks_whose_passkey_uv_and_counter(env: Env, signer: Signer) -> None:
    mine = with_passkey(env, signer, count=5)
    other = make_signer(env, "other")
    theirs = with_passkey(env, other)
    cid = signer.add_key("ec-p256")
    c = signer.client()
    p = c.authorize_passkey(cid, digests(1))
    approval_id = p.approval_path.rsplit("/", 1)[-1]
    for assertion, why in [
        (VerifiedAssertion(theirs, 9, True), "not enrolled for the official"),
        (VerifiedAssertion(mine, 9, False), "did not verify the user"),
        (VerifiedAssertion(mine, 5, True), "counter went backwards"),
        (VerifiedAssertion(mine, 3, True), "counter went backwards"),
    ]:
        with pytest.raises(PermissionDenied, match=why):
            env.app.approvals.approve(approval_id, assertion)
    assert c.authorize_check(p.handle).sad == ""
    env.app.approvals.approve(approval_id, VerifiedAssertion(mine, 6, True))
    with pytest.raises(PermissionDenied, match="already approved"):
        env.app.approvals.approve(approval_id, VerifiedAssertion(mine, 7, True))
    auth = c.authorize_check(p.handle)
    assert auth.sad
    # The counter the approval saw is stored: the next approval needs a higher one.
    p2 = c.authorize_passkey(cid, digests(1))
    with pytest.raises(PermissionDenied, match="counter"):
        env.app.approvals.approve(p2.approval_path.rsplit("/", 1)[-1], VerifiedAssertion(mine, 6, True))


def test_a_key_rotated_after_approval_voids_it(env: Env, signer: Signer) -> None:
    mine = with_passkey(env, signer, count=0)
    cid = signer.add_key("ec-p256")
    c = signer.client()
    p = c.authorize_passkey(cid, digests(1))
    env.app.approvals.approve(p.approval_path.rsplit("/", 1)[-1], VerifiedAssertion(mine, 1, True))
    env.app.keys.rotate(cid)
    with pytest.raises(grpc.RpcError) as e:
        c.authorize_check(p.handle)
    assert code(e) == grpc.StatusCode.PERMISSION_DENIED and "rotated" in str(e.value.details())  # type: ignore[attr-defined]
