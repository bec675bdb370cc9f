"""Call admission budgets (rsign.api.capacity) without a server: caps per session, per user across
sessions, server-wide, and a configuration that would bring starvation back is refused."""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Iterator

import pytest

from rsign.api.capacity import Admission, Capacity, first_message
from rsign.domain.errors import ConfigurationError, ResourceExhausted, StreamIdle
from rsign.domain.principal import Principal, Role

CAP = Capacity(
    threads=10,
    stream_threads=3,
    reserved_threads=2,
    streams_per_session=2,
    streams_per_user=3,
    unary_per_session=4,
    unary_per_user=5,
    idle_seconds=1.0,
)


def who(user: str, session: int) -> Principal:
    return Principal(user, session, Role.SIGNER, "agency")


def test_per_session_and_per_user_stream_caps() -> None:
    adm = Admission(CAP)
    a1, a2, b1 = who("a", 1), who("a", 2), who("b", 3)
    held = [adm.admit_caller(a1, streaming=True), adm.admit_caller(a1, streaming=True)]
    with pytest.raises(ResourceExhausted, match=r"too many streams in progress in this session \(at most 2\)"):
        adm.admit_caller(a1, streaming=True)
    held.append(adm.admit_caller(a2, streaming=True))  # another session of the same user: 3 in all
    with pytest.raises(
        ResourceExhausted, match=r"too many streams in progress for a \(at most 3 across all sessions\)"
    ):
        adm.admit_caller(a2, streaming=True)
    held.append(adm.admit_caller(b1, streaming=True))  # another user is not affected
    # Unary calls have budgets of their own: a user's streams do not use them up.
    held += [adm.admit_caller(a1, streaming=False) for _ in range(4)]
    with pytest.raises(ResourceExhausted, match=r"too many calls in progress in this session \(at most 4\)"):
        adm.admit_caller(a1, streaming=False)
    for release in held:
        release()
    assert adm.in_progress(("session", "streams", 1)) == 0
    assert not adm._held  # per-session counters do not accumulate


def test_server_budgets_keep_reserved_threads() -> None:
    adm = Admission(CAP)
    streams = [adm.admit_server(streaming=True) for _ in range(3)]
    with pytest.raises(ResourceExhausted, match=r"server is busy \(3 streams in progress"):
        adm.admit_server(streaming=True)
    unary = [adm.admit_server(streaming=False) for _ in range(5)]  # 10 threads - 2 reserved = 8 in all
    with pytest.raises(ResourceExhausted, match=r"server is busy \(8 calls in progress"):
        adm.admit_server(streaming=False)
    assert adm.in_progress("authenticated") == 8 and adm.in_progress("streams") == 3
    streams[0]()
    streams[0]()  # a second release is a no-op, never a free slot
    assert adm.in_progress("authenticated") == 7 and adm.in_progress("streams") == 2
    for release in streams[1:] + unary:
        release()
    assert adm.in_progress("authenticated") == 0


def test_refused_admission_takes_no_slot() -> None:
    adm = Admission(dataclasses.replace(CAP, streams_per_session=5, streams_per_user=1))
    release = adm.admit_caller(who("a", 1), streaming=True)
    with pytest.raises(ResourceExhausted):
        adm.admit_caller(who("a", 1), streaming=True)  # session has room, user has not: neither taken
    assert adm.in_progress(("session", "streams", 1)) == 1
    release()


@pytest.mark.parametrize(
    ("change", "words"),
    [
        ({"reserved_threads": 0}, "rpc_reserved_threads"),
        ({"reserved_threads": 10}, "rpc_reserved_threads"),
        ({"stream_threads": 9}, "rpc_stream_threads"),
        ({"streams_per_user": 0}, "streams_per_user"),
        ({"idle_seconds": 0.0}, "stream_idle_seconds"),
    ],
)
def test_configuration_that_would_starve_is_refused(change: dict[str, float], words: str) -> None:
    with pytest.raises(ConfigurationError, match=words):
        dataclasses.replace(CAP, **change).check()  # type: ignore[arg-type]


def test_first_message_times_out_and_passes_errors_through() -> None:
    gate = threading.Event()

    def silent() -> Iterator[int]:
        gate.wait(5)
        yield 1

    t0 = time.monotonic()
    with pytest.raises(StreamIdle, match=r"^no message for 0.3 s: stream closed$"):
        first_message(silent(), 0.3)
    assert time.monotonic() - t0 < 1.0
    gate.set()
    assert first_message(iter([7, 8]), 1.0) == 7
    assert first_message(iter([]), 1.0) is None

    def broken() -> Iterator[int]:
        raise ValueError("bad message")
        yield 0

    with pytest.raises(ValueError, match="bad message"):
        first_message(broken(), 1.0)
