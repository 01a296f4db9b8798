"""cgroup v2 (pure unified hosts): one directory, plain set_X/stat_X functions per controller.

Shaped like opencontainers/cgroups ``fs2/``: there is a single directory, so there are no
per-controller objects; :meth:`V2Manager.set` calls the setters in a fixed order and
``STAT_STEPS`` lists the stat functions. Each carries the kernel version that introduced
its files.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import posixpath

from lxcone.cgroups import base, convert, fs
from lxcone.cgroups.collect import keyed_opt, read_opt, uint_opt, working_set
from lxcone.cgroups.errors import CgroupError, CgroupParseError
from lxcone.cgroups.resources import Resources, Stats

# Enabled in every ancestor's cgroup.subtree_control by create(), when the host offers them.
# freezing needs no controller in v2 (cgroup.freeze is a core file, since 5.2).
WANTED_CONTROLLERS = ("cpuset", "cpu", "io", "memory", "pids")


def set_pids(d: str, res: Resources) -> None:
    """pids.max from Resources.pids_limit (-1 = max). pids controller, since kernel 4.5."""
    if res.pids_limit is not None:
        fs.write_file(d, "pids.max", convert.format_max(res.pids_limit))


def set_memory(d: str, res: Resources) -> None:
    """memory.max and memory.swap.max (memory controller since 4.5; swap.max needs
    CONFIG_MEMCG_SWAP). Independent files on v2: no ordering constraint as on v1."""
    if res.memory_limit_bytes is not None:
        fs.write_file(d, "memory.max", convert.format_max(res.memory_limit_bytes))
    if res.memory_swap_limit_bytes is not None:
        fs.write_file(d, "memory.swap.max", convert.format_max(res.memory_swap_limit_bytes))


def set_cpu(d: str, res: Resources) -> None:
    """cpu.weight (from cpu_weight, or cpu_shares converted) and cpu.max "$QUOTA $PERIOD".
    cpu controller, since kernel 4.15."""
    weight = res.cpu_weight
    if weight is None and res.cpu_shares is not None:
        weight = convert.shares_to_weight(res.cpu_shares)
    if weight is not None:
        fs.write_file(d, "cpu.weight", weight)
    quota, period = res.cpu_quota_us, res.cpu_period_us
    if quota is None and period is None:
        return
    if quota is None:
        # "max 50000" would silently drop an existing quota: keep it and change the period.
        cur_quota, _ = _parse_cpu_max(d)
        fs.write_file(d, "cpu.max", convert.format_cpu_max(cur_quota, period))
        return
    fs.write_file(d, "cpu.max", convert.format_cpu_max(quota, period))


def _parse_cpu_max(d: str) -> tuple[int | None, int]:
    text = fs.read_file(d, "cpu.max")
    try:
        return convert.parse_cpu_max(text)
    except ValueError as e:
        raise CgroupParseError(fs.join(d, "cpu.max"), text, str(e)) from None


def set_cpuset(d: str, res: Resources) -> None:
    """cpuset.cpus / cpuset.mems. cpuset controller on v2 since kernel 5.0; an empty value
    means "inherit the parent's effective set", so nothing needs copying as on v1."""
    if res.cpuset_cpus is not None:
        fs.write_file(d, "cpuset.cpus", res.cpuset_cpus)
    if res.cpuset_mems is not None:
        fs.write_file(d, "cpuset.mems", res.cpuset_mems)


def set_unified(d: str, res: Resources) -> None:
    """Raw v2 files from Resources.unified, written last so they win over the neutral fields
    (same as runc's setUnified)."""
    for key, value in res.unified.items():
        fs.write_file(d, key, value)


def stat_cpu(d: fs.Dir, st: Stats) -> None:
    """cpu.stat: usage/user/system (core file since 4.15, us) and, with the cpu controller
    enabled, nr_periods/nr_throttled/throttled_usec."""
    cs = keyed_opt(d, "cpu.stat", st)
    if cs is None:
        return
    st.cpu_usage_ns = _us_to_ns(cs.get("usage_usec"))
    st.cpu_user_ns = _us_to_ns(cs.get("user_usec"))
    st.cpu_system_ns = _us_to_ns(cs.get("system_usec"))
    st.cpu_nr_periods = cs.get("nr_periods")
    st.cpu_nr_throttled = cs.get("nr_throttled")
    st.cpu_throttled_ns = _us_to_ns(cs.get("throttled_usec"))


def _us_to_ns(v: int | None) -> int | None:
    return None if v is None else v * 1000


def stat_memory_current(d: fs.Dir, st: Stats) -> None:
    """memory.current only (the cheapest memory figure). Memory controller, since 4.5."""
    st.memory_usage_bytes = uint_opt(d, "memory.current", st)


def stat_memory(d: fs.Dir, st: Stats) -> None:
    """memory.max, memory.swap.current (optional: CONFIG_MEMCG_SWAP) and memory.events
    oom_kill (since 4.13). Memory controller, since kernel 4.5."""
    st.memory_limit_bytes = uint_opt(d, "memory.max", st)
    st.memory_swap_bytes = uint_opt(d, "memory.swap.current", st, optional=True)
    ev = keyed_opt(d, "memory.events", st, ("oom_kill",))
    if ev is not None:
        st.oom_events = ev.get("oom_kill")


def stat_memory_stat(d: fs.Dir, st: Stats) -> None:
    """memory.stat anon, file, inactive_file: rss, cache and working set (the kernel generates
    every counter of this file on each read: the most expensive stat file)."""
    usage = st.memory_usage_bytes
    if usage is None:
        usage = uint_opt(d, "memory.current", st)
    ms = keyed_opt(d, "memory.stat", st, ("anon", "file", "inactive_file"))
    if ms is not None:
        st.memory_working_set_bytes = working_set(usage, ms.get("inactive_file"))
        st.memory_rss_bytes = ms.get("anon")
        st.memory_cache_bytes = ms.get("file")


def stat_pids(d: fs.Dir, st: Stats) -> None:
    """pids.current and pids.max (``max`` = None). Since kernel 4.5."""
    st.pids_current = uint_opt(d, "pids.current", st)
    st.pids_limit = uint_opt(d, "pids.max", st)


def stat_io(d: fs.Dir, st: Stats) -> None:
    """io.stat rbytes/wbytes/rios/wios summed over devices. Since kernel 4.16."""
    text = read_opt(d, "io.stat", st)
    if text is None:
        return
    try:
        per_dev = fs.parse_nested_keyed(text, fs.path_of(d, "io.stat"))
    except CgroupError as e:
        st.errors.append(e)
        return
    totals = {"rbytes": 0, "wbytes": 0, "rios": 0, "wios": 0}
    for entry in per_dev.values():
        for key in totals:
            totals[key] += entry.get(key) or 0
    st.io_read_bytes = totals["rbytes"]
    st.io_write_bytes = totals["wbytes"]
    st.io_read_ops = totals["rios"]
    st.io_write_ops = totals["wios"]


# Every stat function in the order it must run (usage before what derives from it), with the
# controller that must be enabled for its files to exist (None: core files).
STAT_STEPS = (
    (stat_cpu, None),
    (stat_memory_current, "memory"),
    (stat_memory, "memory"),
    (stat_memory_stat, "memory"),
    (stat_pids, "pids"),
    (stat_io, "io"),
)
# Which of them each StatsReader group needs.
STAT_GROUPS = {
    "usage": frozenset({stat_cpu, stat_memory_current}),
    "cpu": frozenset({stat_cpu}),
    "memory": frozenset({stat_memory_current, stat_memory}),
    "memory_stat": frozenset({stat_memory_stat}),
    "pids": frozenset({stat_pids}),
    "io": frozenset({stat_io}),
}


def _required_controllers(res: Resources) -> dict[str, str]:
    """controller -> the Resources field that needs it."""
    need: dict[str, str] = {}
    if res.pids_limit is not None:
        need["pids"] = "pids_limit"
    for f in ("memory_limit_bytes", "memory_swap_limit_bytes"):
        if getattr(res, f) is not None:
            need.setdefault("memory", f)
    for f in ("cpu_shares", "cpu_weight", "cpu_quota_us", "cpu_period_us"):
        if getattr(res, f) is not None:
            need.setdefault("cpu", f)
    for f in ("cpuset_cpus", "cpuset_mems"):
        if getattr(res, f) is not None:
            need.setdefault("cpuset", f)
    for key in res.unified:
        ctrl = key.partition(".")[0]
        if ctrl != "cgroup":
            need.setdefault(ctrl, f"unified[{key!r}]")
    return need


def find_root(path: str) -> str:
    """The cgroup2 mount point above ``path``: the topmost ancestor with cgroup.controllers."""
    d = path
    while True:
        parent = posixpath.dirname(d)
        if parent == d or not os.path.exists(parent + "/cgroup.controllers"):
            return d
        d = parent


class V2Manager:
    """A container cgroup on a pure cgroup v2 host."""

    def __init__(
        self,
        path: str,
        *,
        root: str | None = None,
        parent_depth: int | None = None,
        controllers: tuple[str, ...] = WANTED_CONTROLLERS,
    ) -> None:
        self.paths: dict[str, str] = {"unified": path}
        self._path = path
        self._root = root
        self._parent_depth = parent_depth
        self._want = controllers

    def __repr__(self) -> str:
        return f"V2Manager({self._path!r})"

    def _enable_controllers(self, d: str) -> None:
        # Only add what is missing and available, never remove: other cgroups below this
        # ancestor may rely on what is enabled.
        avail = fs.read_file(d, "cgroup.controllers").split()
        enabled = fs.read_file(d, "cgroup.subtree_control").split()
        missing = [c for c in self._want if c in avail and c not in enabled]
        if not missing:
            return
        try:
            fs.write_file(d, "cgroup.subtree_control", " ".join("+" + c for c in missing))
        except CgroupError:
            # One controller can fail alone (e.g. cpu with a realtime task in the subtree,
            # EBUSY for a non-root cgroup with tasks). Enable the others one by one; a missing
            # one surfaces later as a clear ValueError from set() (runc does the same).
            for c in missing:
                with contextlib.suppress(CgroupError):
                    fs.write_file(d, "cgroup.subtree_control", "+" + c)

    def create(self) -> None:
        root = self._root or find_root(self._path)
        rel = posixpath.relpath(self._path, root)
        cur = root
        for part in rel.split("/"):
            # Enable in each ancestor (root included) before creating the next level, so the
            # new directory is born with the controllers' interface files.
            self._enable_controllers(cur)
            cur = cur + "/" + part
            fs.make_dir(cur)

    def create_unified(self) -> None:
        self.create()

    def create_v1(self) -> None:
        pass  # no v1 hierarchy

    def join_files(self) -> list[str]:
        return []

    def unified_dir(self) -> str | None:
        return self._path

    def apply(self, pid: int) -> None:
        base.write_pid(self._path + "/cgroup.procs", pid)

    def set(self, res: Resources) -> None:
        res.validate()
        need = _required_controllers(res)
        if need:
            have = set(fs.read_file(self._path, "cgroup.controllers").split())
            for ctrl, field_name in need.items():
                if ctrl not in have:
                    raise ValueError(
                        f"Resources.{field_name}: the {ctrl} controller is not enabled in "
                        f"{self._path} (cgroup.controllers: {' '.join(sorted(have)) or '-'})"
                    )
        swap = res.memory_swap_limit_bytes
        if swap is not None and not os.path.exists(self._path + "/memory.swap.max"):
            if swap != -1:
                raise ValueError(
                    "Resources.memory_swap_limit_bytes: this kernel has no swap accounting "
                    "(memory.swap.max missing)"
                )
            # "Unlimited swap" is what a kernel without swap accounting does anyway (as on v1).
            res = dataclasses.replace(res, memory_swap_limit_bytes=None)
        d = self._path
        set_pids(d, res)  # pids (since 4.5)
        set_memory(d, res)  # memory (since 4.5)
        set_cpu(d, res)  # cpu (since 4.15)
        set_cpuset(d, res)  # cpuset (since 5.0)
        set_unified(d, res)  # raw keys last

    def _frozen(self, kd: fs.KeptDir) -> bool:
        ev = fs.parse_keyed_subset(
            kd.read("cgroup.events"), kd.path + "/cgroup.events", ("frozen",)
        )
        return ev.get("frozen") == 1

    def freeze(self, timeout: float = 10.0) -> None:
        # cgroup.freeze (since 5.2) is asynchronous: each task stops at its next return to user
        # space; cgroup.events "frozen 1" reports when all have.
        fs.write_file(self._path, "cgroup.freeze", "1")
        with fs.KeptDir(self._path) as kd:
            if base.poll_until(lambda: self._frozen(kd), timeout):
                return
        fs.write_file(self._path, "cgroup.freeze", "0")
        raise TimeoutError(f"cgroup {self._path} did not reach FROZEN within {timeout} s")

    def thaw(self, timeout: float = 10.0) -> None:
        fs.write_file(self._path, "cgroup.freeze", "0")
        with fs.KeptDir(self._path) as kd:
            if base.poll_until(lambda: not self._frozen(kd), timeout):
                return
        raise TimeoutError(f"cgroup {self._path} did not reach THAWED within {timeout} s")

    def freezer_state(self) -> str:
        # Like runc: cgroup.freeze is the request, cgroup.events the outcome.
        if fs.read_file(self._path, "cgroup.freeze").strip() == "0":
            return base.THAWED
        ev = fs.read_keyed(self._path, "cgroup.events")
        return base.FROZEN if ev.get("frozen") == 1 else base.FREEZING

    def pids(self) -> list[int]:
        return base.collect_pids(self._path)

    def _controllers(self, st: Stats) -> set[str] | None:
        # Files of controllers not enabled here do not exist; skip them rather than report
        # ENOENT noise. None (unreadable, error recorded) means "try everything".
        text = read_opt(self._path, "cgroup.controllers", st)
        return None if text is None else set(text.split())

    def stats(self) -> Stats:
        st = Stats()
        ctrls = self._controllers(st)
        for fn, ctrl in STAT_STEPS:
            if ctrl is None or ctrls is None or ctrl in ctrls:
                fn(self._path, st)
        return st

    def exists(self) -> bool:
        return base.dir_exists(self._path)

    def destroy(self, timeout: float = 5.0) -> None:
        base.remove_tree(self._path, base.monotonic_deadline(timeout))

    def remove_parent_if_empty(self) -> None:
        base.remove_parents([self._path], 1 if self._parent_depth is None else self._parent_depth)
