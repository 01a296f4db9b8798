"""Pure conversions between the neutral resource model, cgroup v1 and cgroup v2 values.

No I/O here: every function is a total function of its arguments, tested at its boundaries
(tests/unit/cgroups/test_cgroups_convert.py) and with hypothesis properties.
"""

from __future__ import annotations

import math
import re

# Kernel limits (kernel/sched/sched.h: MIN_SHARES/MAX_SHARES; include/linux/cgroup.h:
# CGROUP_WEIGHT_MIN/DFL/MAX).
SHARES_MIN = 2
SHARES_DEFAULT = 1024
SHARES_MAX = 262144
WEIGHT_MIN = 1
WEIGHT_DEFAULT = 100
WEIGHT_MAX = 10000

# v1 memory files report "no limit" as PAGE_COUNTER_MAX * PAGE_SIZE, rounded to the page size
# (9223372036854771712 with 4 KiB pages, less with 64 KiB pages). No real limit comes close to
# 2**62 bytes (4 EiB), so everything above it means unlimited on every page size.
V1_UNLIMITED_THRESHOLD = 1 << 62


def shares_to_weight(shares: int) -> int:
    """Convert v1 ``cpu.shares`` [2..262144] to v2 ``cpu.weight`` [1..10000]; 0 (unset) gives 0.

    This is the log-quadratic mapping of opencontainers/cgroups v0.0.5 (runc >= 1.3.2, crun >=
    1.23): it maps the minimum, the default and the maximum onto each other (2->1, 1024->100,
    262144->10000). The older linear formula ``1 + (shares-2)*9999/262142`` (kept as
    :func:`shares_to_weight_linear`) gave the default 1024 shares a weight of 39, so containers
    converted from v1 settings lost CPU priority against everything else on the host
    (runc#4772, kubernetes#131216). Out-of-range input is clamped.
    """
    if shares == 0:
        return 0
    if shares <= SHARES_MIN:
        return WEIGHT_MIN
    if shares >= SHARES_MAX:
        return WEIGHT_MAX
    lg = math.log2(shares)
    exponent = (lg * lg + 125 * lg) / 612.0 - 7.0 / 34.0
    return math.ceil(10**exponent)


def shares_to_weight_linear(shares: int) -> int:
    """The pre-2025 runc conversion ``1 + ((shares - 2) * 9999) // 262142`` (0 gives 0).

    Only for recognising weights written by older runtimes; LXCoNe writes
    :func:`shares_to_weight`. Out-of-range input is clamped.
    """
    if shares == 0:
        return 0
    shares = min(max(shares, SHARES_MIN), SHARES_MAX)
    return 1 + ((shares - 2) * 9999) // 262142


def weight_to_shares(weight: int) -> int:
    """Convert v2 ``cpu.weight`` [1..10000] to v1 ``cpu.shares``; 0 (unset) gives 0.

    The inverse of :func:`shares_to_weight`: the largest share value that converts back to
    ``weight``, so ``shares_to_weight(weight_to_shares(w)) == w`` for every valid weight and the
    three anchors map exactly (1->2, 100->1024, 10000->262144). Out-of-range input is clamped.
    """
    if weight == 0:
        return 0
    if weight <= WEIGHT_MIN:
        return SHARES_MIN
    if weight >= WEIGHT_MAX:
        return SHARES_MAX
    # Solve (l*l + 125*l)/612 - 7/34 = log10(weight) for l = log2(shares).
    c = 612.0 * (math.log10(weight) + 7.0 / 34.0)
    lg = (-125.0 + math.sqrt(125.0 * 125.0 + 4.0 * c)) / 2.0
    shares = min(max(int(2.0**lg), SHARES_MIN), SHARES_MAX)
    # Float rounding can put the estimate one step off the bucket edge; walk to the exact edge.
    while shares < SHARES_MAX and shares_to_weight(shares + 1) <= weight:
        shares += 1
    while shares > SHARES_MIN and shares_to_weight(shares) > weight:
        shares -= 1
    return shares


def memsw_limit(memory_bytes: int, swap_bytes: int) -> int:
    """v1 ``memory.memsw.limit_in_bytes`` from a memory limit and an *extra* swap allowance.

    The neutral model uses v2 semantics (``memory.swap.max`` is swap on top of memory); v1 limits
    memory+swap together. -1 (unlimited) in either gives -1.
    """
    if memory_bytes == -1 or swap_bytes == -1:
        return -1
    return memory_bytes + swap_bytes


def swap_from_memsw(memory_bytes: int, memsw_bytes: int) -> int:
    """The extra swap allowance implied by v1 limits (inverse of :func:`memsw_limit`).

    -1 means unlimited. Raises ValueError if memsw < memory (the kernel never allows that).
    """
    if memsw_bytes == -1:
        return -1
    if memory_bytes == -1 or memsw_bytes < memory_bytes:
        raise ValueError(f"memsw limit {memsw_bytes} below memory limit {memory_bytes}")
    return memsw_bytes - memory_bytes


def oci_swap_to_v2(memory_swap: int, memory: int) -> int:
    """Convert an OCI/v1-style ``memory+swap`` total to a v2 ``memory.swap.max`` value.

    Same cases as runc's ``ConvertMemorySwapToCgroupV2Value``: 0 means unset (returned as is,
    except that unlimited memory with unset swap means unlimited swap), -1 means unlimited.
    Raises ValueError when the swap total cannot be converted.
    """
    if memory == -1 and memory_swap == 0:
        return -1
    if memory_swap in (-1, 0):
        return memory_swap
    if memory == -1:
        return memory_swap
    if memory == 0:
        raise ValueError("unable to set swap limit without memory limit")
    if memory < 0:
        raise ValueError(f"invalid memory value: {memory}")
    if memory_swap < memory:
        raise ValueError("memory+swap limit should be >= memory limit")
    return memory_swap - memory


def v1_limit(value: int) -> int | None:
    """A v1 byte limit as read from the kernel: None when it means "unlimited"."""
    return None if value >= V1_UNLIMITED_THRESHOLD else value


def parse_max(text: str) -> int | None:
    """Parse a v2 single value: ``max`` gives None, else a non-negative integer.

    Raises ValueError for anything else.
    """
    s = text.strip()
    if s == "max":
        return None
    if not (s.isascii() and s.isdigit()):
        raise ValueError(f"expected an unsigned integer or 'max', got {text!r}")
    return int(s)


def format_max(value: int | None) -> str:
    """Format a limit for a v2 file: None or -1 give ``max``."""
    return "max" if value is None or value == -1 else str(value)


def format_cpu_max(quota_us: int | None, period_us: int | None) -> str:
    """Format v2 ``cpu.max``: ``"$QUOTA $PERIOD"``; quota None or -1 gives ``max``.

    With ``period_us`` None only the quota is written and the kernel keeps the current period.
    """
    quota = format_max(quota_us)
    return quota if period_us is None else f"{quota} {period_us}"


def parse_cpu_max(text: str) -> tuple[int | None, int]:
    """Parse v2 ``cpu.max`` into ``(quota_us or None for max, period_us)``.

    Raises ValueError on malformed content.
    """
    fields = text.split()
    if len(fields) != 2 or not (fields[1].isascii() and fields[1].isdigit()):
        raise ValueError(f"bad cpu.max content {text!r}")
    return parse_max(fields[0]), int(fields[1])


def v1_cfs_quota(quota_us: int | None) -> int:
    """v1 ``cpu.cfs_quota_us`` value for a quota: None or -1 give -1 (unlimited)."""
    return -1 if quota_us is None else quota_us


_CPUSET_RE = re.compile(r"^\d+(-\d+)?(,\d+(-\d+)?)*$")

# NR_CPUS is at most 8192 in distribution kernels (CONFIG_NR_CPUS_RANGE_END); MAX_NUMNODES is
# at most 1024. A bigger id cannot exist, so it is refused before any write.
CPUSET_MAX_ID = 8191


def parse_cpuset(text: str) -> frozenset[int]:
    """Parse a cpuset list (``"0-1,3"``) into the set of ids.

    The kernel's list format (lib/bitmap-str.c) without the ``:used/group`` stride extension,
    which no container config needs. Raises ValueError for bad syntax, a descending range, an id
    above CPUSET_MAX_ID, or an empty list.
    """
    if not _CPUSET_RE.match(text):
        raise ValueError(f"bad cpuset list {text!r} (expected e.g. '0-1,3')")
    ids: set[int] = set()
    for part in text.split(","):
        lo_s, _, hi_s = part.partition("-")
        lo = int(lo_s)
        hi = int(hi_s) if hi_s else lo
        if hi < lo:
            raise ValueError(f"bad cpuset list {text!r}: range {part} is descending")
        if hi > CPUSET_MAX_ID:
            raise ValueError(f"bad cpuset list {text!r}: id {hi} > {CPUSET_MAX_ID}")
        ids.update(range(lo, hi + 1))
    return frozenset(ids)


def format_cpuset(ids: frozenset[int] | set[int]) -> str:
    """Format a set of ids as the kernel's compact list (``{0,1,3}`` gives ``"0-1,3"``)."""
    parts: list[str] = []
    run: list[int] = []
    for i in sorted(ids):
        if run and i == run[-1] + 1:
            run.append(i)
            continue
        if run:
            parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
        run = [i]
    if run:
        parts.append(str(run[0]) if len(run) == 1 else f"{run[0]}-{run[-1]}")
    return ",".join(parts)


def ticks_to_ns(ticks: int, hz: int) -> int:
    """Convert USER_HZ clock ticks (v1 ``cpuacct.stat``) to nanoseconds."""
    return ticks * 1_000_000_000 // hz
