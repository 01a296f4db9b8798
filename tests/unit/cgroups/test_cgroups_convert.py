"""lxcone.cgroups.convert: boundaries and properties of the pure conversions."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lxcone.cgroups import convert

SHARES = st.integers(min_value=convert.SHARES_MIN, max_value=convert.SHARES_MAX)
WEIGHTS = st.integers(min_value=convert.WEIGHT_MIN, max_value=convert.WEIGHT_MAX)


# Cases of opencontainers/cgroups v0.0.5 utils_test.go TestConvertCPUSharesToCgroupV2Value.
@pytest.mark.parametrize(
    ("shares", "weight"),
    [
        (0, 0),  # unset
        (1, 1),  # below the minimum (out of range)
        (2, 1),  # minimum
        (3, 2),  # just above the minimum
        (1024, 100),  # default maps to default
        (262143, 10000),  # just below the maximum
        (262144, 10000),  # maximum
        (262145, 10000),  # above the maximum (out of range)
    ],
)
def test_shares_to_weight_boundaries(shares: int, weight: int) -> None:
    assert convert.shares_to_weight(shares) == weight


@pytest.mark.parametrize(
    ("weight", "shares"), [(0, 0), (1, 2), (100, 1024), (10000, 262144), (-5, 2), (20000, 262144)]
)
def test_weight_to_shares_boundaries(weight: int, shares: int) -> None:
    assert convert.weight_to_shares(weight) == shares


def test_linear_conversion_is_the_old_runc_formula() -> None:
    assert convert.shares_to_weight_linear(0) == 0
    assert convert.shares_to_weight_linear(2) == 1
    assert convert.shares_to_weight_linear(1024) == 39  # why the quadratic one replaced it
    assert convert.shares_to_weight_linear(262144) == 10000


def test_every_weight_round_trips_exactly() -> None:
    # Exhaustive: 10000 values, cheap.
    for w in range(convert.WEIGHT_MIN, convert.WEIGHT_MAX + 1):
        s = convert.weight_to_shares(w)
        assert convert.SHARES_MIN <= s <= convert.SHARES_MAX
        assert convert.shares_to_weight(s) == w, w


@given(SHARES, SHARES)
def test_shares_to_weight_is_monotonic_and_in_range(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    wlo, whi = convert.shares_to_weight(lo), convert.shares_to_weight(hi)
    assert convert.WEIGHT_MIN <= wlo <= whi <= convert.WEIGHT_MAX


@given(WEIGHTS, WEIGHTS)
def test_weight_to_shares_is_monotonic_and_in_range(a: int, b: int) -> None:
    lo, hi = min(a, b), max(a, b)
    slo, shi = convert.weight_to_shares(lo), convert.weight_to_shares(hi)
    assert convert.SHARES_MIN <= slo <= shi <= convert.SHARES_MAX
    if lo < hi:
        assert slo < shi  # injective on weights


@given(SHARES)
def test_shares_round_trip_within_one_weight_step(shares: int) -> None:
    w = convert.shares_to_weight(shares)
    back = convert.weight_to_shares(w)
    # Same weight bucket, and the bucket is the representative's upper edge.
    assert convert.shares_to_weight(back) == w
    assert back >= shares
    # Tolerance: one weight step is ~1.5/w of the share value (d ln(w)/d ln(s) >= 0.69), so
    # the loss is below 2/w relative, plus 3 shares at the very bottom where buckets are tiny.
    assert back - shares <= shares * 2.0 / w + 3


@given(st.integers(min_value=1, max_value=1 << 50), st.integers(min_value=0, max_value=1 << 50))
def test_memsw_round_trip(memory: int, swap: int) -> None:
    memsw = convert.memsw_limit(memory, swap)
    assert memsw >= memory
    assert convert.swap_from_memsw(memory, memsw) == swap


def test_memsw_unlimited_cases() -> None:
    assert convert.memsw_limit(-1, 0) == -1
    assert convert.memsw_limit(1 << 30, -1) == -1
    assert convert.memsw_limit(1 << 30, 0) == 1 << 30
    assert convert.swap_from_memsw(1 << 30, -1) == -1
    with pytest.raises(ValueError):
        convert.swap_from_memsw(1 << 30, 1 << 20)


# Cases of runc's TestConvertMemorySwapToCgroupV2Value.
@pytest.mark.parametrize(
    ("memswap", "memory", "expected"),
    [
        (0, 0, 0),
        (-1, 0, -1),
        (-1, -1, -1),
        (-1, 1000, -1),
        (1000, 1000, 0),
        (500, 200, 300),
        (0, -1, -1),
        (500, -1, 500),
    ],
)
def test_oci_swap_to_v2(memswap: int, memory: int, expected: int) -> None:
    assert convert.oci_swap_to_v2(memswap, memory) == expected


@pytest.mark.parametrize(("memswap", "memory"), [(300, 400), (300, 0), (-2, -3)])
def test_oci_swap_to_v2_errors(memswap: int, memory: int) -> None:
    with pytest.raises(ValueError):
        convert.oci_swap_to_v2(memswap, memory)


def test_max_parsing_and_formatting() -> None:
    assert convert.parse_max("max\n") is None
    assert convert.parse_max("42\n") == 42
    for bad in ("", "-1", "1.5", "maxx"):
        with pytest.raises(ValueError):
            convert.parse_max(bad)
    assert convert.format_max(None) == "max"
    assert convert.format_max(-1) == "max"
    assert convert.format_max(0) == "0"


def test_cpu_max() -> None:
    assert convert.format_cpu_max(50000, 100000) == "50000 100000"
    assert convert.format_cpu_max(-1, 100000) == "max 100000"
    assert convert.format_cpu_max(50000, None) == "50000"
    assert convert.parse_cpu_max("max 100000\n") == (None, 100000)
    assert convert.parse_cpu_max("50000 100000\n") == (50000, 100000)
    for bad in ("max", "1 2 3", "x 100000", "max -1"):
        with pytest.raises(ValueError):
            convert.parse_cpu_max(bad)


@given(st.integers(min_value=1000, max_value=(1 << 44) - 1), st.integers(1000, 1_000_000))
def test_cpu_max_round_trip(quota: int, period: int) -> None:
    assert convert.parse_cpu_max(convert.format_cpu_max(quota, period)) == (quota, period)


def test_v1_limit_unlimited_threshold() -> None:
    assert convert.v1_limit(9223372036854771712) is None  # 4 KiB pages
    assert convert.v1_limit(9223372036854710272) is None  # 64 KiB pages
    assert convert.v1_limit(1 << 30) == 1 << 30
    assert convert.v1_cfs_quota(None) == -1
    assert convert.v1_cfs_quota(-1) == -1
    assert convert.v1_cfs_quota(50000) == 50000


@pytest.mark.parametrize(
    ("text", "ids"),
    [("0", {0}), ("0-1,3", {0, 1, 3}), ("2-2", {2}), ("0-3,8-9", {0, 1, 2, 3, 8, 9})],
)
def test_parse_cpuset(text: str, ids: set[int]) -> None:
    assert convert.parse_cpuset(text) == ids


@pytest.mark.parametrize("bad", ["", " ", "a", "1-", "-1", "3-1", "0,,1", "0-1,", "1 2", "9000"])
def test_parse_cpuset_rejects(bad: str) -> None:
    with pytest.raises(ValueError):
        convert.parse_cpuset(bad)


@given(st.frozensets(st.integers(min_value=0, max_value=convert.CPUSET_MAX_ID), min_size=1))
def test_cpuset_format_parse_round_trip(ids: frozenset[int]) -> None:
    text = convert.format_cpuset(ids)
    assert convert.parse_cpuset(text) == ids


def test_ticks_to_ns() -> None:
    assert convert.ticks_to_ns(12, 100) == 120_000_000
