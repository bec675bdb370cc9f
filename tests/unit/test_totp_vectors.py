"""RFC 6238 Appendix B (all 18 vectors) and RFC 4226 Appendix D, through rsign.auth.totp."""

from __future__ import annotations

import pytest

from rsign.auth import totp

SEEDS = {
    "sha1": b"12345678901234567890",
    "sha256": b"12345678901234567890123456789012",  # 32 bytes, as in the RFC's reference code
    "sha512": b"1234567890" * 6 + b"1234",  # 64 bytes
}
VECTORS = [
    (59, "94287082", "sha1"),
    (59, "46119246", "sha256"),
    (59, "90693936", "sha512"),
    (1111111109, "07081804", "sha1"),
    (1111111109, "68084774", "sha256"),
    (1111111109, "25091201", "sha512"),
    (1111111111, "14050471", "sha1"),
    (1111111111, "67062674", "sha256"),
    (1111111111, "99943326", "sha512"),
    (1234567890, "89005924", "sha1"),
    (1234567890, "91819424", "sha256"),
    (1234567890, "93441116", "sha512"),
    (2000000000, "69279037", "sha1"),
    (2000000000, "90698825", "sha256"),
    (2000000000, "38618901", "sha512"),
    (20000000000, "65353130", "sha1"),
    (20000000000, "77737706", "sha256"),
    (20000000000, "47863826", "sha512"),
]


@pytest.mark.parametrize(("t", "expected", "alg"), VECTORS)
def test_rfc6238_appendix_b(t: int, expected: str, alg: str) -> None:
    assert totp.code_at(SEEDS[alg], t, digits=8, algorithm=alg) == expected


def test_all_eighteen_vectors_present() -> None:
    assert len(VECTORS) == 18


def test_twenty_byte_seed_is_wrong_for_sha256() -> None:
    # The classic mistake the RFC's reference code avoids.
    assert totp.code_at(SEEDS["sha1"], 59, digits=8, algorithm="sha256") == "32247374"


def test_rfc4226_hotp_values_as_totp_steps() -> None:
    expected = ["755224", "287082", "359152", "969429", "338314", "254676", "287922", "162583", "399871", "520489"]
    got = [totp.code_at(SEEDS["sha1"], counter * totp.STEP_SECONDS) for counter in range(10)]
    assert got == expected


def test_window_is_plus_minus_one_step() -> None:
    seed = totp.new_seed()
    now = 1_000_000 * 30 + 10
    base = totp.step_of(now)
    for delta, accepted in [(-2, False), (-1, True), (0, True), (1, True), (2, False)]:
        code = totp.code_for_step(seed, base + delta)
        assert (base + delta in totp.matching_steps(seed, code, now, window=1)) is accepted


def test_seed_is_at_least_160_bits() -> None:
    assert len(totp.new_seed()) * 8 >= 160
    assert "secret=" in totp.provisioning_uri(totp.new_seed(), "lo.van.tuan")
