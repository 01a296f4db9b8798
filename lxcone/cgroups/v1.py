"""cgroup v1 (and hybrid): one directory per hierarchy, one tiny class per controller.

Shaped like opencontainers/cgroups ``fs/``: each controller is a small object with ``name``, a
create hook, ``check`` (read-only validation that needs the host), ``set`` and ``stats``; the
manager loops over :data:`SUBSYSTEMS` in order. Controllers we do not manage (net_cls, hugetlb,
perf_event, ...) and named hierarchies (``name=systemd``) get a :class:`Subsystem` that only
creates, joins and removes the directory, so tasks still land in a per-container cgroup there.

Hybrid hosts use this manager too, with an extra ``unified`` directory that is created, joined
and removed alongside (systemd inside the container expects its own cgroup2 node); limits and
stats stay on v1, where the controllers are.
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Mapping

from lxcone.cgroups import base, convert, fs
from lxcone.cgroups.collect import keyed_opt, read_opt, uint_opt, working_set
from lxcone.cgroups.errors import CgroupError
from lxcone.cgroups.resources import Resources, Stats
from lxcone.cgroups.v2 import V2Manager


class Subsystem:
    """A v1 hierarchy we only place tasks in (no limits, no stats)."""

    def __init__(self, name: str) -> None:
        self.name = name

    def create_hook(self, path: str) -> None:
        """Called after ``path`` (and missing parents) was created. Raises CgroupError."""

    def wants(self, res: Resources) -> bool:
        """True if ``res`` sets something this controller applies."""
        return False

    def check(self, path: str, res: Resources) -> None:
        """Read-only checks before any write; raise ValueError naming the field."""

    def set(self, path: str, res: Resources) -> None:
        """Apply the fields of ``res`` this controller owns. Raises CgroupError."""

    def stats(self, d: fs.Dir, st: Stats) -> None:
        """Fill the fields of ``st`` this controller owns; failures go to ``st.errors``."""

    def __repr__(self) -> str:
        return f"<v1 {self.name}>"


class Cpuset(Subsystem):
    def __init__(self) -> None:
        super().__init__("cpuset")

    def create_hook(self, path: str) -> None:
        # A new v1 cpuset starts with empty cpus and mems, and attaching a task to it then
        # fails with ENOSPC; copy the parent's values down, into every empty level we created
        # (runc cpusetEnsureParent). Non-empty directories are never written.
        for name in ("cpuset.cpus", "cpuset.mems"):
            _inherit(path, name)

    def wants(self, res: Resources) -> bool:
        return res.cpuset_cpus is not None or res.cpuset_mems is not None

    def set(self, path: str, res: Resources) -> None:
        if res.cpuset_cpus is not None:
            fs.write_file(path, "cpuset.cpus", res.cpuset_cpus)
        if res.cpuset_mems is not None:
            fs.write_file(path, "cpuset.mems", res.cpuset_mems)


def _inherit(path: str, name: str, depth: int = 0) -> None:
    if fs.read_file(path, name).strip():
        return
    parent = posixpath.dirname(path)
    if depth > 64 or parent == path:
        raise CgroupError(errno.ENOSPC, fs.join(path, name), "inherit")
    _inherit(parent, name, depth + 1)
    fs.write_file(path, name, fs.read_file(parent, name).strip())


class Memory(Subsystem):
    def __init__(self) -> None:
        super().__init__("memory")

    def wants(self, res: Resources) -> bool:
        return res.memory_limit_bytes is not None or res.memory_swap_limit_bytes is not None

    def check(self, path: str, res: Resources) -> None:
        swap = res.memory_swap_limit_bytes
        if swap not in (None, -1) and not os.path.exists(path + "/memory.memsw.limit_in_bytes"):
            raise ValueError(
                "Resources.memory_swap_limit_bytes: this kernel has no swap accounting "
                "(memory.memsw.* missing: boot with swapaccount=1)"
            )

    def set(self, path: str, res: Resources) -> None:
        mem, swap = res.memory_limit_bytes, res.memory_swap_limit_bytes
        if mem is None and swap is None:
            return
        has_memsw = os.path.exists(path + "/memory.memsw.limit_in_bytes")
        if not has_memsw:
            if mem is not None:
                fs.write_file(path, "memory.limit_in_bytes", mem)
            return
        cur_mem = _v1_bytes(fs.read_int(path, "memory.limit_in_bytes"))
        cur_memsw = _v1_bytes(fs.read_int(path, "memory.memsw.limit_in_bytes"))
        new_mem = cur_mem if mem is None else mem
        if swap is None:
            # Keep the current *extra* swap allowance, as v2 memory.swap.max would when only
            # memory.max changes.
            swap = -1 if cur_memsw == -1 else max(0, cur_memsw - max(cur_mem, 0))
        new_memsw = convert.memsw_limit(new_mem, swap)
        # The kernel keeps memory <= memsw at every step and refuses a write that breaks it, so
        # the order depends on the direction (runc setMemoryAndSwap): raise memsw first when the
        # current memory limit fits under the new memsw, else lower memory first.
        if new_memsw == -1 or (cur_mem != -1 and cur_mem <= new_memsw):
            fs.write_file(path, "memory.memsw.limit_in_bytes", new_memsw)
            if mem is not None:
                fs.write_file(path, "memory.limit_in_bytes", new_mem)
        else:
            fs.write_file(path, "memory.limit_in_bytes", new_mem)
            fs.write_file(path, "memory.memsw.limit_in_bytes", new_memsw)

    def stats(self, d: fs.Dir, st: Stats) -> None:
        self.stat_usage(d, st)
        self.stat_limits(d, st)
        self.stat_detail(d, st)

    def stat_usage(self, d: fs.Dir, st: Stats) -> None:
        """memory.usage_in_bytes only (the cheapest memory figure)."""
        st.memory_usage_bytes = uint_opt(d, "memory.usage_in_bytes", st)

    def stat_limits(self, d: fs.Dir, st: Stats) -> None:
        """limit, swap used and OOM kills."""
        limit = uint_opt(d, "memory.limit_in_bytes", st)
        st.memory_limit_bytes = None if limit is None else convert.v1_limit(limit)
        # memsw only exists with swap accounting; swap used = memsw usage - memory usage.
        memsw = uint_opt(d, "memory.memsw.usage_in_bytes", st, optional=True)
        usage = st.memory_usage_bytes
        if memsw is not None and usage is not None:
            st.memory_swap_bytes = max(0, memsw - usage)
        # oom_kill appeared in memory.oom_control in 4.13; before it only under_oom (0/1).
        oom = keyed_opt(d, "memory.oom_control", st, ("oom_kill", "under_oom"))
        if oom is not None:
            st.oom_events = oom.get("oom_kill", oom.get("under_oom"))

    def stat_detail(self, d: fs.Dir, st: Stats) -> None:
        """memory.stat: working set, rss, cache. The kernel generates ~40 counters for this
        file (about 7 us per read on the project hosts, the most expensive stat file)."""
        usage = st.memory_usage_bytes
        if usage is None:
            usage = uint_opt(d, "memory.usage_in_bytes", st)
        ms = keyed_opt(d, "memory.stat", st, ("total_inactive_file", "total_rss", "total_cache"))
        if ms is not None:
            st.memory_working_set_bytes = working_set(usage, ms.get("total_inactive_file"))
            st.memory_rss_bytes = ms.get("total_rss")
            st.memory_cache_bytes = ms.get("total_cache")


def _v1_bytes(value: int) -> int:
    """A v1 byte limit as read, with the kernel's "unlimited" spelled -1."""
    return -1 if value < 0 or convert.v1_limit(value) is None else value


class Cpu(Subsystem):
    def __init__(self) -> None:
        super().__init__("cpu")

    def wants(self, res: Resources) -> bool:
        return any(
            v is not None
            for v in (res.cpu_shares, res.cpu_weight, res.cpu_quota_us, res.cpu_period_us)
        )

    def set(self, path: str, res: Resources) -> None:
        shares = res.cpu_shares
        if shares is None and res.cpu_weight is not None:
            shares = convert.weight_to_shares(res.cpu_weight)
        if shares is not None:
            fs.write_file(path, "cpu.shares", shares)
        quota, period = res.cpu_quota_us, res.cpu_period_us
        if period is not None and quota is not None:
            # quota/period is checked against the parent's bandwidth at every write, so one of
            # the two orders can fail with EINVAL where the other succeeds (runc fs/cpu.go).
            try:
                fs.write_file(path, "cpu.cfs_period_us", period)
            except CgroupError as e:
                if e.errno != errno.EINVAL:
                    raise
                fs.write_file(path, "cpu.cfs_quota_us", convert.v1_cfs_quota(quota))
                fs.write_file(path, "cpu.cfs_period_us", period)
                return
            fs.write_file(path, "cpu.cfs_quota_us", convert.v1_cfs_quota(quota))
        elif period is not None:
            fs.write_file(path, "cpu.cfs_period_us", period)
        elif quota is not None:
            fs.write_file(path, "cpu.cfs_quota_us", convert.v1_cfs_quota(quota))

    def stats(self, d: fs.Dir, st: Stats) -> None:
        cs = keyed_opt(d, "cpu.stat", st)
        if cs is not None:
            st.cpu_nr_periods = cs.get("nr_periods")
            st.cpu_nr_throttled = cs.get("nr_throttled")
            st.cpu_throttled_ns = cs.get("throttled_time")  # v1 reports ns


class Cpuacct(Subsystem):
    def __init__(self) -> None:
        super().__init__("cpuacct")

    def stats(self, d: fs.Dir, st: Stats) -> None:
        self.stat_usage(d, st)
        self.stat_times(d, st)

    def stat_usage(self, d: fs.Dir, st: Stats) -> None:
        """cpuacct.usage: scheduler runtime of all tasks, ns."""
        st.cpu_usage_ns = uint_opt(d, "cpuacct.usage", st)

    def stat_times(self, d: fs.Dir, st: Stats) -> None:
        """user and system time, ns."""
        # usage_user/usage_sys (ns) since 4.7; older kernels only have cpuacct.stat in USER_HZ
        # ticks. usage is sched runtime, not user+sys (those come from tick accounting).
        user = uint_opt(d, "cpuacct.usage_user", st, optional=True)
        if user is not None:
            st.cpu_user_ns = user
            st.cpu_system_ns = uint_opt(d, "cpuacct.usage_sys", st)
            return
        ticks = keyed_opt(d, "cpuacct.stat", st)
        if ticks is not None:
            hz = os.sysconf("SC_CLK_TCK")
            if "user" in ticks:
                st.cpu_user_ns = convert.ticks_to_ns(ticks["user"], hz)
            if "system" in ticks:
                st.cpu_system_ns = convert.ticks_to_ns(ticks["system"], hz)


class Pids(Subsystem):
    def __init__(self) -> None:
        super().__init__("pids")

    def wants(self, res: Resources) -> bool:
        return res.pids_limit is not None

    def set(self, path: str, res: Resources) -> None:
        if res.pids_limit is not None:
            fs.write_file(path, "pids.max", convert.format_max(res.pids_limit))

    def stats(self, d: fs.Dir, st: Stats) -> None:
        st.pids_current = uint_opt(d, "pids.current", st)
        st.pids_limit = uint_opt(d, "pids.max", st)


class Blkio(Subsystem):
    def __init__(self) -> None:
        super().__init__("blkio")

    def stats(self, d: fs.Dir, st: Stats) -> None:
        # The _recursive files include child cgroups (a container may create its own); they are
        # missing on some old kernels. Observed on 6.18 (tests/kernel/monitor): they count
        # I/O without any throttle rule for O_DIRECT, page-cache misses and fsync'd writes;
        # only background writeback is charged to the flusher, not to the container.
        for attr, base_name in (("bytes", "io_service_bytes"), ("ops", "io_serviced")):
            text = read_opt(d, f"blkio.throttle.{base_name}_recursive", st, optional=True)
            name = f"blkio.throttle.{base_name}_recursive"
            if text is None:
                name = f"blkio.throttle.{base_name}"
                text = read_opt(d, name, st)
            if text is None:
                continue
            try:
                rw = fs.parse_blkio_rwstat(text, fs.path_of(d, name))
            except CgroupError as e:
                st.errors.append(e)
                continue
            setattr(st, f"io_read_{attr}", rw.get("Read", 0))
            setattr(st, f"io_write_{attr}", rw.get("Write", 0))


class Freezer(Subsystem):
    """Freezing is a manager operation (freeze/thaw), not a Resources field."""

    def __init__(self) -> None:
        super().__init__("freezer")


class Devices(Subsystem):
    """Device rules belong to the runtime's device policy, not to Resources (yet)."""

    def __init__(self) -> None:
        super().__init__("devices")


# set() and stats() run in this order (runc's fs.subsystems order). Across controllers the order
# does not matter to the kernel; within one it does (memory vs memsw, cfs period vs quota) and
# each class handles that itself.
SUBSYSTEMS: tuple[Subsystem, ...] = (
    Cpuset(),
    Devices(),
    Memory(),
    Cpu(),
    Cpuacct(),
    Pids(),
    Blkio(),
    Freezer(),
)
_BY_NAME = {s.name: s for s in SUBSYSTEMS}

# StatsReader plan: every (subsystem, method) in the order they must run (memory usage before
# the functions that derive from it), and which of them each stats group needs.
STAT_STEPS: tuple[tuple[str, str], ...] = (
    ("cpuacct", "stat_usage"),
    ("cpuacct", "stat_times"),
    ("cpu", "stats"),
    ("memory", "stat_usage"),
    ("memory", "stat_limits"),
    ("memory", "stat_detail"),
    ("pids", "stats"),
    ("blkio", "stats"),
)
STAT_GROUPS: dict[str, frozenset[tuple[str, str]]] = {
    "usage": frozenset({("cpuacct", "stat_usage"), ("memory", "stat_usage")}),
    "cpu": frozenset({("cpuacct", "stat_usage"), ("cpuacct", "stat_times"), ("cpu", "stats")}),
    "memory": frozenset({("memory", "stat_usage"), ("memory", "stat_limits")}),
    "memory_stat": frozenset({("memory", "stat_detail")}),
    "pids": frozenset({("pids", "stats")}),
    "io": frozenset({("blkio", "stats")}),
}


def subsystem(name: str) -> Subsystem:
    """The subsystem object for a v1 controller or named hierarchy."""
    return _BY_NAME.get(name) or Subsystem(name)


class V1Manager:
    """A container cgroup on a v1 or hybrid host (see module doc)."""

    def __init__(self, paths: Mapping[str, str], parent_depth: int | None = None) -> None:
        self.paths: dict[str, str] = dict(paths)
        self._unified = self.paths.get("unified")
        self._v1 = {k: v for k, v in self.paths.items() if k != "unified"}
        self._parent_depth = parent_depth

    def __repr__(self) -> str:
        return f"V1Manager({self.paths!r})"

    def _dirs(self) -> list[str]:
        dirs = base.distinct(list(self._v1.values()))
        if self._unified is not None:
            dirs.append(self._unified)
        return dirs

    def create(self) -> None:
        self.create_unified()
        self.create_v1()

    def create_unified(self) -> None:
        if self._unified is not None:
            base.mkdir_p(self._unified)

    def create_v1(self) -> None:
        for d in base.distinct(list(self._v1.values())):
            base.mkdir_p(d)
        for name, d in self._v1.items():
            subsystem(name).create_hook(d)

    def join_files(self) -> list[str]:
        return [d + "/tasks" for d in base.distinct(list(self._v1.values()))]

    def unified_dir(self) -> str | None:
        return self._unified

    def apply(self, pid: int) -> None:
        for d in self._dirs():
            base.write_pid(d + "/cgroup.procs", pid)

    def set(self, res: Resources) -> None:
        res.validate()
        if res.unified:
            raise ValueError(
                "Resources.unified: raw cgroup v2 keys cannot be applied on a "
                f"{'hybrid' if self._unified else 'v1'} host (controllers are on v1): "
                f"{sorted(res.unified)}"
            )
        for sub in SUBSYSTEMS:
            if sub.wants(res) and sub.name not in self._v1:
                raise ValueError(
                    f"Resources: the {sub.name} controller is not mounted on this host, "
                    f"cannot apply {_fields_of(sub, res)}"
                )
        for sub in SUBSYSTEMS:
            if sub.wants(res):
                sub.check(self._v1[sub.name], res)
        for sub in SUBSYSTEMS:
            if sub.wants(res):
                sub.set(self._v1[sub.name], res)

    def _freezer(self) -> str | None:
        """The v1 freezer directory; None on a hybrid host without a v1 freezer, where the
        unified directory's cgroup.freeze (5.2+) does the job: our tasks are in it too."""
        d = self._v1.get("freezer")
        if d is None and self._unified is None:
            raise CgroupError(errno.EOPNOTSUPP, "freezer", "no v1 hierarchy for")
        return d

    def _unified_freezer(self) -> V2Manager:
        # Only called when _freezer() returned None, i.e. there is a unified directory.
        return V2Manager(self._unified or "")

    def freeze(self, timeout: float = 10.0) -> None:
        d = self._freezer()
        if d is None:
            self._unified_freezer().freeze(timeout)
            return
        fs.write_file(d, "freezer.state", base.FROZEN)
        with fs.KeptDir(d) as kd:

            def frozen() -> bool:
                if kd.read("freezer.state").strip() == base.FROZEN:
                    return True
                # Still FREEZING: some task was not freezable yet (mid-fork, or in an
                # uninterruptible sleep). Writing FROZEN again makes the kernel retry the tasks
                # not frozen yet, including ones forked after the first write (runc does the
                # same in a loop).
                fs.write_file(d, "freezer.state", base.FROZEN)
                return False

            if base.poll_until(frozen, timeout):
                return
        # Do not leave the container half-frozen (runc thaws on a failed freeze too).
        fs.write_file(d, "freezer.state", base.THAWED)
        raise TimeoutError(f"cgroup {d} did not reach FROZEN within {timeout} s")

    def thaw(self, timeout: float = 10.0) -> None:
        d = self._freezer()
        if d is None:
            self._unified_freezer().thaw(timeout)
            return
        fs.write_file(d, "freezer.state", base.THAWED)
        with fs.KeptDir(d) as kd:
            if base.poll_until(lambda: kd.read("freezer.state").strip() == base.THAWED, timeout):
                return
        raise TimeoutError(f"cgroup {d} did not reach THAWED within {timeout} s")

    def freezer_state(self) -> str:
        d = self._freezer()
        if d is None:
            return self._unified_freezer().freezer_state()
        return fs.read_file(d, "freezer.state").strip()

    def pids(self) -> list[int]:
        for name in ("pids", "freezer", "memory", "cpu", "devices"):
            if name in self._v1:
                return base.collect_pids(self._v1[name])
        return base.collect_pids(self._dirs()[0])

    def stats(self) -> Stats:
        st = Stats()
        for sub in SUBSYSTEMS:
            d = self._v1.get(sub.name)
            if d is not None:
                sub.stats(d, st)
        return st

    def exists(self) -> bool:
        return any(base.dir_exists(d) for d in self._dirs())

    def destroy(self, timeout: float = 5.0) -> None:
        deadline = base.monotonic_deadline(timeout)
        first: CgroupError | None = None
        for d in self._dirs():
            try:
                base.remove_tree(d, deadline)
            except CgroupError as e:
                # Keep going: one busy hierarchy must not leave the others behind.
                first = first or e
        if first is not None:
            raise first

    def remove_parent_if_empty(self) -> None:
        base.remove_parents(self._dirs(), 1 if self._parent_depth is None else self._parent_depth)


def _fields_of(sub: Subsystem, res: Resources) -> str:
    names = {
        "cpuset": ("cpuset_cpus", "cpuset_mems"),
        "memory": ("memory_limit_bytes", "memory_swap_limit_bytes"),
        "cpu": ("cpu_shares", "cpu_weight", "cpu_quota_us", "cpu_period_us"),
        "pids": ("pids_limit",),
    }.get(sub.name, ())
    return ", ".join(f"Resources.{n}" for n in names if getattr(res, n) is not None)
