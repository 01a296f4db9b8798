"""The neutral resource model (what to limit) and the stats model (what was measured).

Both are independent of the cgroup version: managers translate them, using the pure functions of
:mod:`lxcone.cgroups.convert`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from types import MappingProxyType

from lxcone.cgroups import convert
from lxcone.cgroups.errors import CgroupError

INT64_MAX = (1 << 63) - 1
# kernel/sched/core.c: min_cfs_quota_period = 1 ms, max_cfs_quota_period = 1 s, and
# max_cfs_runtime = MAX_BW us with MAX_BW = 2**(64 - BW_SHIFT) - 1 (BW_SHIFT = 20).
CPU_PERIOD_MIN_US = 1_000
CPU_PERIOD_MAX_US = 1_000_000
CPU_QUOTA_MIN_US = 1_000
CPU_QUOTA_MAX_US = (1 << 44) - 1
# kernel/cgroup/pids.c refuses pids.max >= PIDS_MAX = PID_MAX_LIMIT + 1 (PID_MAX_LIMIT = 2**22).
PIDS_MAX = 1 << 22

# A raw v2 key is CONTROLLER.PARAM ("memory.high", "io.max", "hugetlb.2MB.max").
_UNIFIED_KEY_RE = re.compile(r"^[a-z][a-z0-9_]*\.[a-zA-Z0-9_.]+$")
# cgroup.* core files are refused except these: the others (procs, threads, subtree_control,
# freeze, kill, type) are the manager's own business and writing them from a config would break
# placement, freezing or destroy.
_UNIFIED_CORE_ALLOWED = frozenset({"cgroup.max.depth", "cgroup.max.descendants"})


@dataclass(frozen=True)
class Resources:
    """Resource limits for one container cgroup. ``None`` leaves the setting unchanged.

    Units are in the field names. ``-1`` means "unlimited" where noted. Call :meth:`validate`
    (``CgroupManager.set`` does it before writing anything).
    """

    memory_limit_bytes: int | None = None
    """Hard memory limit (v1 memory.limit_in_bytes, v2 memory.max); -1 = unlimited."""
    memory_swap_limit_bytes: int | None = None
    """Swap allowed *on top of* memory (v2 memory.swap.max semantics); -1 = unlimited.
    v1 gets memory.memsw.limit_in_bytes = memory + swap."""
    cpu_quota_us: int | None = None
    """CFS quota per period in microseconds (>= 1000); -1 = unlimited."""
    cpu_period_us: int | None = None
    """CFS period in microseconds [1000..1000000]."""
    cpu_shares: int | None = None
    """v1-style relative weight [2..262144]; converted for v2. Exclusive with cpu_weight."""
    cpu_weight: int | None = None
    """v2-style relative weight [1..10000]; converted for v1. Exclusive with cpu_shares."""
    cpuset_cpus: str | None = None
    """Allowed CPUs, kernel list syntax (``"0-1,3"``)."""
    cpuset_mems: str | None = None
    """Allowed memory nodes, kernel list syntax."""
    pids_limit: int | None = None
    """Maximum number of tasks [0..4194304]; -1 = unlimited."""
    unified: Mapping[str, str] = field(default_factory=dict, hash=False)
    """Raw v2 files (``{"memory.high": "1G"}``), written last; refused on v1 and hybrid."""

    def __post_init__(self) -> None:
        # Frozen means frozen: keep a private read-only copy so the caller's dict cannot change
        # what was validated.
        object.__setattr__(self, "unified", MappingProxyType(dict(self.unified)))

    def validate(self) -> None:
        """Check every field; raise ValueError naming the first bad field (TypeError for a
        non-int where an int is expected). Does no I/O."""
        _limit("memory_limit_bytes", self.memory_limit_bytes, 1, INT64_MAX)
        _limit("memory_swap_limit_bytes", self.memory_swap_limit_bytes, 0, INT64_MAX)
        _limit("cpu_quota_us", self.cpu_quota_us, CPU_QUOTA_MIN_US, CPU_QUOTA_MAX_US)
        _range("cpu_period_us", self.cpu_period_us, CPU_PERIOD_MIN_US, CPU_PERIOD_MAX_US)
        _range("cpu_shares", self.cpu_shares, convert.SHARES_MIN, convert.SHARES_MAX)
        _range("cpu_weight", self.cpu_weight, convert.WEIGHT_MIN, convert.WEIGHT_MAX)
        if self.cpu_shares is not None and self.cpu_weight is not None:
            raise ValueError(
                "Resources.cpu_weight: cpu_shares and cpu_weight are alternatives; set one"
            )
        for name in ("cpuset_cpus", "cpuset_mems"):
            value = getattr(self, name)
            if value is None:
                continue
            if not isinstance(value, str):
                raise TypeError(f"Resources.{name}: expected str, got {type(value).__name__}")
            try:
                convert.parse_cpuset(value)
            except ValueError as e:
                raise ValueError(f"Resources.{name}: {e}") from None
        _limit("pids_limit", self.pids_limit, 0, PIDS_MAX)
        for key, value in self.unified.items():
            validate_unified_key(key, value)

    def is_empty(self) -> bool:
        """True if no field is set (set() would write nothing)."""
        plain = (getattr(self, f.name) for f in fields(self) if f.name != "unified")
        return all(v is None for v in plain) and not self.unified


def validate_unified_key(key: str, value: str) -> None:
    """Check one raw v2 ``unified`` entry; raise ValueError naming it."""
    if not isinstance(key, str) or not isinstance(value, str):
        raise TypeError(f"Resources.unified: keys and values must be str, got {key!r}: {value!r}")
    if "/" in key or ".." in key or not _UNIFIED_KEY_RE.match(key):
        raise ValueError(f"Resources.unified: bad key {key!r} (expected CONTROLLER.PARAM)")
    if key.startswith("cgroup.") and key not in _UNIFIED_CORE_ALLOWED:
        raise ValueError(f"Resources.unified: {key!r} is managed by LXCoNe itself")
    if not value.strip() or "\0" in value or "\n" in value.rstrip("\n"):
        raise ValueError(f"Resources.unified: bad value {value!r} for {key!r}")


def _check_int(name: str, value: object) -> int:
    # bool is an int subclass; True as a memory limit is a bug, not 1 byte.
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Resources.{name}: expected int, got {type(value).__name__}")
    return value


def _limit(name: str, value: int | None, lo: int, hi: int) -> None:
    """A value that is -1 (unlimited) or in [lo, hi]."""
    if value is None:
        return
    v = _check_int(name, value)
    if v != -1 and not lo <= v <= hi:
        raise ValueError(f"Resources.{name}: must be -1 (unlimited) or in [{lo}, {hi}], got {v}")


def _range(name: str, value: int | None, lo: int, hi: int) -> None:
    if value is None:
        return
    v = _check_int(name, value)
    if not lo <= v <= hi:
        raise ValueError(f"Resources.{name}: must be in [{lo}, {hi}], got {v}")


@dataclass
class Stats:
    """One sample of a container cgroup's counters. ``None`` = not available on this host/layout.

    Counters are cumulative since the cgroup was created (compute rates from two samples).
    ``errors`` lists the per-file failures of this sample; a sample is never refused as a whole.
    """

    cpu_usage_ns: int | None = None
    cpu_user_ns: int | None = None
    cpu_system_ns: int | None = None
    cpu_nr_periods: int | None = None
    cpu_nr_throttled: int | None = None
    cpu_throttled_ns: int | None = None
    memory_usage_bytes: int | None = None
    memory_working_set_bytes: int | None = None
    """usage - inactive_file, floored at 0 (what the OOM killer and cAdvisor look at)."""
    memory_rss_bytes: int | None = None
    """v1 total_rss, v2 anon."""
    memory_cache_bytes: int | None = None
    """v1 total_cache, v2 file."""
    memory_swap_bytes: int | None = None
    memory_limit_bytes: int | None = None
    """None = unlimited (or unknown: see errors)."""
    oom_events: int | None = None
    """OOM kills in the cgroup (v1 memory.oom_control oom_kill, v2 memory.events oom_kill)."""
    pids_current: int | None = None
    pids_limit: int | None = None
    """None = unlimited."""
    io_read_bytes: int | None = None
    io_write_bytes: int | None = None
    io_read_ops: int | None = None
    io_write_ops: int | None = None
    errors: list[CgroupError] = field(default_factory=list)
