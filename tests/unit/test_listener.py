"""The listener's rules that need no server: which addresses are loopback, how a TLS client is
named in the audit log, which option combinations make sense."""

from __future__ import annotations

from pathlib import Path

import pytest

from rsign.api.listener import CLIENT_MAX, describe_client, is_loopback, split_listen, tls_files
from rsign.domain.errors import ConfigurationError


@pytest.mark.parametrize(
    ("listen", "loopback"),
    [
        ("127.0.0.1:50051", True),
        ("127.8.9.10:1", True),
        ("localhost:50051", True),
        ("[::1]:50051", True),
        ("0.0.0.0:50051", False),
        ("[::]:50051", False),
        ("10.1.2.3:50051", False),
        ("rsign.internal:50051", False),  # a name may resolve anywhere
    ],
)
def test_loopback(listen: str, loopback: bool) -> None:
    assert is_loopback(listen) is loopback


@pytest.mark.parametrize("bad", ["", "50051", ":50051", "host:", "host:port"])
def test_listen_must_be_host_and_port(bad: str) -> None:
    with pytest.raises(ConfigurationError, match="HOST:PORT"):
        split_listen(bad)


def test_a_port_out_of_range_is_named() -> None:
    with pytest.raises(ConfigurationError, match="port 70000 is out of range"):
        split_listen("host:70000")


def test_client_description_is_bounded_and_still_names_the_certificate() -> None:
    peer = "ipv4:127.0.0.1:54321"
    assert describe_client(peer, "CN=centre,O=Sở Nội vụ", "ab" * 32) == f"{peer} cert:CN=centre,O=Sở Nội vụ"
    long_subject = "CN=" + "x" * 60 + ",OU=" + "y" * 60 + ",O=" + "z" * 60
    a = describe_client(peer, long_subject, "1" * 64)
    b = describe_client(peer, long_subject, "2" * 64)
    assert len(a) == len(b) == CLIENT_MAX
    assert a.startswith(f"{peer} cert:CN=xxx") and a.endswith("... sha256:1111111111111111")
    assert a != b  # two certificates with the same long subject stay apart
    huge_peer = "ipv6:[" + "f" * 200 + "]:1"
    assert len(describe_client(huge_peer, long_subject, "1" * 64)) == CLIENT_MAX


def test_tls_file_combinations() -> None:
    assert tls_files(None, None, None) is None
    assert tls_files("", "", "") is None
    files = tls_files("s.crt", "s.key", "ca.pem")
    assert files is not None and files.mutual and files.client_ca == Path("ca.pem")
    assert tls_files("s.crt", "s.key", "") == tls_files(Path("s.crt"), Path("s.key"), None)
    with pytest.raises(ConfigurationError, match="go together"):
        tls_files("s.crt", None, None)
    with pytest.raises(ConfigurationError, match="go together"):
        tls_files(None, "s.key", None)
    with pytest.raises(ConfigurationError, match="client CA needs"):
        tls_files(None, None, "ca.pem")
