"""Fake cgroupfs trees in tmp_path, and a tiny fake "kernel" for them.

The trees are plain directories and files. ``FakeKernel`` patches the three write-side entry
points of ``lxcone.cgroups.fs`` (make_dir, remove_dir, write_file) to add what the real kernel
does on top of plain files: a new cgroup directory is born with its control files, rmdir of a
cgroup with tasks or children is EBUSY, cgroup.procs appends, subtree_control takes "+ctrl",
and cgroup.freeze / freezer.state report the state. Every write is recorded in ``writes``.

The v1 dumps below were read on the project host (kernel 6.18, hybrid layout). The v2 memory.stat
and io.stat dumps follow the kernel's documented format (Documentation/admin-guide/cgroup-v2.rst)
because this host has no v2 memory or io controller; the v2 cpu.stat core part was read from the
host's unified hierarchy.
"""

from __future__ import annotations

import errno
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lxcone.cgroups import Layout, detect_layout, fs
from lxcone.cgroups.errors import CgroupError

V1_UNLIMITED = "9223372036854771712"

# --- v1 dumps, read on the project host -------------------------------------------------------

V1_MEMORY_STAT = """\
cache 2957312
rss 2191360
rss_huge 0
shmem 0
mapped_file 151552
dirty 32768
writeback 0
workingset_refault_anon 0
workingset_refault_file 4237
swap 0
swapcached 0
pgpgin 122759
pgpgout 121506
pgfault 223374
pgmajfault 85
inactive_anon 1961984
active_anon 12288
inactive_file 577536
active_file 2379776
unevictable 0
hierarchical_memory_limit 9223372036854771712
hierarchical_memsw_limit 9223372036854771712
total_cache 2957312
total_rss 2191360
total_rss_huge 0
total_shmem 0
total_mapped_file 151552
total_dirty 32768
total_writeback 0
total_workingset_refault_anon 0
total_workingset_refault_file 4237
total_swap 0
total_swapcached 0
total_pgpgin 122759
total_pgpgout 121506
total_pgfault 223374
total_pgmajfault 85
total_inactive_anon 1961984
total_active_anon 12288
total_inactive_file 577536
total_active_file 2379776
total_unevictable 0
"""

# A cgroup after its only task was OOM-killed at a 48 MiB limit (memory.oom_control below).
V1_OOM_CONTROL = "oom_kill_disable 0\nunder_oom 0\noom_kill 1\n"
V1_OOM_CONTROL_PRE_4_13 = "oom_kill_disable 0\nunder_oom 1\n"

# cpu.stat of a busy loop under cpu_quota_us=20000 / period 100000.
V1_CPU_STAT = """\
nr_periods 7
nr_throttled 7
throttled_time 518882163
nr_bursts 0
burst_time 0
"""
V1_CPUACCT_STAT = "user 12\nsystem 3\n"
V1_CPUACCT_USAGE = "157845959\n"
V1_CPUACCT_USAGE_USER = "136000000\n"
V1_CPUACCT_USAGE_SYS = "40000000\n"

# dd with O_DIRECT in a cgroup with a throttle rule on 254:0 (vda).
V1_BLKIO_SERVICE_BYTES = """\
254:0 Read 0
254:0 Write 3276800
254:0 Sync 3276800
254:0 Async 0
254:0 Discard 0
254:0 Total 3276800
Total 3276800
"""
V1_BLKIO_SERVICED = """\
254:0 Read 0
254:0 Write 51
254:0 Sync 51
254:0 Async 0
254:0 Discard 0
254:0 Total 51
Total 51
"""
V1_BLKIO_EMPTY = "Total 0\n"

# --- v2 dumps ----------------------------------------------------------------------------------

# Core part read on the host's unified hierarchy; the throttling part appears when the cpu
# controller is enabled (format of kernel/sched/core.c cpu_extra_stat_show).
V2_CPU_STAT = """\
usage_usec 90497416
user_usec 59337923
system_usec 31159493
nice_usec 0
nr_periods 120
nr_throttled 37
throttled_usec 1850000
nr_bursts 0
burst_usec 0
"""
V2_CPU_STAT_CORE_ONLY = """\
usage_usec 157845
user_usec 121971
system_usec 35874
nice_usec 0
"""

V2_MEMORY_STAT = """\
anon 2191360
file 2957312
kernel 1064960
kernel_stack 65536
pagetables 106496
sec_pagetables 0
percpu 1440
sock 0
vmalloc 0
shmem 0
zswap 0
zswapped 0
file_mapped 151552
file_dirty 32768
file_writeback 0
swapcached 0
anon_thp 0
file_thp 0
shmem_thp 0
inactive_anon 1961984
active_anon 12288
inactive_file 577536
active_file 2379776
unevictable 0
slab_reclaimable 610304
slab_unreclaimable 245760
slab 856064
workingset_refault_anon 0
workingset_refault_file 4237
workingset_activate_anon 0
workingset_activate_file 118
workingset_restore_anon 0
workingset_restore_file 0
workingset_nodereclaim 0
pgdemote_kswapd 0
pgdemote_direct 0
pgdemote_khugepaged 0
pgscan 0
pgsteal 0
pgscan_kswapd 0
pgscan_direct 0
pgscan_khugepaged 0
pgsteal_kswapd 0
pgsteal_direct 0
pgsteal_khugepaged 0
pgfault 223374
pgmajfault 85
pgrefill 0
pgactivate 2047
pgdeactivate 0
pglazyfree 0
pglazyfreed 0
zswpin 0
zswpout 0
zswpwb 0
thp_fault_alloc 0
thp_collapse_alloc 0
thp_swpout 0
thp_swpout_fallback 0
"""
V2_MEMORY_EVENTS = "low 0\nhigh 0\nmax 12\noom 2\noom_kill 2\noom_group_kill 0\n"
V2_IO_STAT = """\
254:0 rbytes=1482752 wbytes=3276800 rios=96 wios=51 dbytes=0 dios=0
7:0 rbytes=4096 wbytes=0 rios=1 wios=0 dbytes=0 dios=0
"""

# --- layouts -----------------------------------------------------------------------------------

V1_SEPARATE = ("cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids")
V1_COMOUNTED = {
    "cpu,cpuacct": ("cpu", "cpuacct"),
    "cpuset": ("cpuset",),
    "memory": ("memory",),
    "devices": ("devices",),
    "freezer": ("freezer",),
    "blkio": ("blkio",),
    "pids": ("pids",),
    "net_cls,net_prio": ("net_cls", "net_prio"),
}
V2_CONTROLLERS = "cpuset cpu io memory hugetlb pids rdma misc"

_V1_ROOT_FILES = {
    "cpuset": {"cpuset.cpus": "0-3\n", "cpuset.mems": "0\n"},
    "memory": {
        "memory.limit_in_bytes": V1_UNLIMITED + "\n",
        "memory.memsw.limit_in_bytes": V1_UNLIMITED + "\n",
    },
    "cpu": {"cpu.shares": "1024\n", "cpu.cfs_period_us": "100000\n", "cpu.cfs_quota_us": "-1\n"},
}


def _v1_leaf_files(controllers: tuple[str, ...]) -> dict[str, str]:
    """The files a fresh v1 cgroup directory has, per controller (kernel defaults)."""
    files = {"cgroup.procs": "", "tasks": "", "notify_on_release": "0\n"}
    for c in controllers:
        if c == "cpuset":
            files.update({"cpuset.cpus": "\n", "cpuset.mems": "\n"})
        elif c == "memory":
            files.update(
                {
                    "memory.limit_in_bytes": V1_UNLIMITED + "\n",
                    "memory.memsw.limit_in_bytes": V1_UNLIMITED + "\n",
                    "memory.usage_in_bytes": "0\n",
                    "memory.memsw.usage_in_bytes": "0\n",
                    "memory.stat": "cache 0\nrss 0\ntotal_cache 0\ntotal_rss 0\n"
                    "total_inactive_file 0\n",
                    "memory.oom_control": "oom_kill_disable 0\nunder_oom 0\noom_kill 0\n",
                }
            )
        elif c == "cpu":
            files.update(
                {
                    "cpu.shares": "1024\n",
                    "cpu.cfs_period_us": "100000\n",
                    "cpu.cfs_quota_us": "-1\n",
                    "cpu.stat": "nr_periods 0\nnr_throttled 0\nthrottled_time 0\n",
                }
            )
        elif c == "cpuacct":
            files.update(
                {
                    "cpuacct.usage": "0\n",
                    "cpuacct.usage_user": "0\n",
                    "cpuacct.usage_sys": "0\n",
                    "cpuacct.stat": "user 0\nsystem 0\n",
                }
            )
        elif c == "pids":
            files.update({"pids.max": "max\n", "pids.current": "0\n"})
        elif c == "freezer":
            files.update({"freezer.state": "THAWED\n"})
        elif c == "blkio":
            for name in ("io_service_bytes", "io_serviced"):
                files[f"blkio.throttle.{name}"] = V1_BLKIO_EMPTY
                files[f"blkio.throttle.{name}_recursive"] = V1_BLKIO_EMPTY
        elif c == "devices":
            files.update({"devices.list": "a *:* rwm\n"})
    return files


def _v2_leaf_files(enabled: list[str]) -> dict[str, str]:
    files = {
        "cgroup.procs": "",
        "cgroup.controllers": " ".join(enabled) + ("\n" if enabled else ""),
        "cgroup.subtree_control": "",
        "cgroup.events": "populated 0\nfrozen 0\n",
        "cgroup.freeze": "0\n",
        "cpu.stat": V2_CPU_STAT_CORE_ONLY,
    }
    if "cpu" in enabled:
        files.update({"cpu.weight": "100\n", "cpu.max": "max 100000\n", "cpu.stat": V2_CPU_STAT})
    if "memory" in enabled:
        files.update(
            {
                "memory.current": "0\n",
                "memory.max": "max\n",
                "memory.high": "max\n",
                "memory.swap.current": "0\n",
                "memory.swap.max": "max\n",
                "memory.stat": "anon 0\nfile 0\ninactive_file 0\n",
                "memory.events": "low 0\nhigh 0\nmax 0\noom 0\noom_kill 0\n",
            }
        )
    if "pids" in enabled:
        files.update({"pids.max": "max\n", "pids.current": "0\n"})
    if "io" in enabled:
        files.update({"io.stat": ""})
    if "cpuset" in enabled:
        files.update({"cpuset.cpus": "\n", "cpuset.mems": "\n"})
    return files


def write_files(d: Path | str, files: dict[str, str]) -> None:
    for name, content in files.items():
        Path(d, name).write_text(content)


@dataclass
class FakeTree:
    """A fake /sys/fs/cgroup: its root, its mountinfo text and its hierarchies."""

    root: Path
    mountinfo: str
    v1: dict[str, tuple[str, ...]] = field(default_factory=dict)  # mount dir -> controllers
    unified: Path | None = None


def _mountinfo_line(n: int, mountpoint: Path, fstype: str, options: str) -> str:
    return (
        f"{n} 31 0:{n} / {mountpoint} rw,nosuid,nodev,noexec,relatime - {fstype} {fstype} {options}"
    )


def make_v1_tree(root: Path, comounted: bool = False, unified: bool = False) -> FakeTree:
    """A v1 tree (hybrid with ``unified``); ``comounted`` uses cpu,cpuacct and net_cls,net_prio."""
    groups = V1_COMOUNTED if comounted else {c: (c,) for c in V1_SEPARATE}
    lines = [f"31 23 0:26 / {root} rw,nosuid,nodev,noexec - tmpfs tmpfs ro,mode=755"]
    tree = FakeTree(root=root, mountinfo="")
    n = 32
    for dirname, ctrls in groups.items():
        d = root / dirname
        d.mkdir(parents=True)
        write_files(d, _v1_leaf_files(ctrls))
        for c in ctrls:
            write_files(d, _V1_ROOT_FILES.get(c, {}))
        tree.v1[str(d)] = ctrls
        lines.append(_mountinfo_line(n, d, "cgroup", "rw," + ",".join(ctrls)))
        n += 1
    sysd = root / "systemd"
    sysd.mkdir()
    write_files(sysd, _v1_leaf_files(()))
    tree.v1[str(sysd)] = ("name=systemd",)
    lines.append(_mountinfo_line(n, sysd, "cgroup", "rw,xattr,name=systemd"))
    if unified:
        u = root / "unified"
        u.mkdir()
        write_files(u, _v2_leaf_files([]))
        Path(u, "cgroup.controllers").write_text("hugetlb\n")
        tree.unified = u
        lines.append(_mountinfo_line(n + 1, u, "cgroup2", "rw,nsdelegate"))
    # Unrelated mounts must be ignored.
    lines.append("22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:5 - proc proc rw")
    tree.mountinfo = "\n".join(lines) + "\n"
    return tree


def make_v2_tree(root: Path, controllers: str = V2_CONTROLLERS) -> FakeTree:
    """A pure v2 tree: cgroup2 mounted at ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    write_files(root, _v2_leaf_files([]))
    Path(root, "cgroup.controllers").write_text(controllers + "\n")
    line = _mountinfo_line(30, root, "cgroup2", "rw,nsdelegate,memory_recursiveprot")
    return FakeTree(root=root, mountinfo=line + "\n", unified=root)


class FakeKernel:
    """Kernel side effects for a FakeTree (see module doc). Install with ``install()``."""

    def __init__(self, tree: FakeTree) -> None:
        self.tree = tree
        self.writes: list[tuple[str, str]] = []
        self.mkdirs: list[str] = []
        # v1: how many FROZEN writes leave freezer.state at FREEZING (a task not freezable yet).
        self.freeze_delay = 0
        # v2: cgroup.freeze=1 never reaches "frozen 1" (a task stuck in the kernel).
        self.freeze_stuck = False
        self._orig_write = fs.write_file
        self._orig_make = fs.make_dir
        self._orig_remove = fs.remove_dir

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeKernel:
        monkeypatch.setattr(fs, "write_file", self.write_file)
        monkeypatch.setattr(fs, "make_dir", self.make_dir)
        monkeypatch.setattr(fs, "remove_dir", self.remove_dir)
        return self

    def _hierarchy(self, path: str) -> tuple[str, tuple[str, ...] | None]:
        for mount, ctrls in self.tree.v1.items():
            if path.startswith(mount + "/"):
                return mount, ctrls
        if self.tree.unified is not None and path.startswith(str(self.tree.unified) + "/"):
            return str(self.tree.unified), None
        raise AssertionError(f"{path} is outside the fake tree")

    def make_dir(self, path: str) -> bool:
        created = self._orig_make(path)
        if not created:
            return False
        self.mkdirs.append(path)
        _, ctrls = self._hierarchy(path)
        if ctrls is not None:
            write_files(path, _v1_leaf_files(ctrls))
        else:
            parent = os.path.dirname(path)
            enabled = Path(parent, "cgroup.subtree_control").read_text().split()
            write_files(path, _v2_leaf_files(enabled))
        return True

    def remove_dir(self, path: str) -> None:
        p = Path(path)
        if not p.exists():
            raise CgroupError(errno.ENOENT, path, "rmdir")
        if any(c.is_dir() for c in p.iterdir()) or Path(path, "cgroup.procs").read_text().strip():
            raise CgroupError(errno.EBUSY, path, "rmdir")
        for f in p.iterdir():
            f.unlink()
        self._orig_remove(path)

    def write_file(self, d: str, name: str, data: str | int) -> None:
        text = str(data)
        self.writes.append((f"{d}/{name}", text))
        path = Path(d, name)
        if not path.exists():
            # Let the real function produce the real error.
            self._orig_write(d, name, text)
            return
        if name == "cgroup.procs":
            path.write_text(path.read_text() + text + "\n")
            return
        if name == "cgroup.subtree_control":
            enabled = path.read_text().split()
            avail = Path(d, "cgroup.controllers").read_text().split()
            for tok in text.split():
                ctrl = tok[1:]
                if ctrl not in avail:
                    raise CgroupError(errno.ENOENT, str(path), "write", text)
                if tok[0] == "+" and ctrl not in enabled:
                    enabled.append(ctrl)
                elif tok[0] == "-" and ctrl in enabled:
                    enabled.remove(ctrl)
            path.write_text(" ".join(enabled) + "\n")
            for child in Path(d).iterdir():
                if child.is_dir():
                    write_files(child, {"cgroup.controllers": " ".join(enabled) + "\n"})
            return
        if name == "freezer.state":
            state = text.strip()
            if state == "FROZEN" and self.freeze_delay > 0:
                self.freeze_delay -= 1
                state = "FREEZING"
            path.write_text(state + "\n")
            return
        if name == "cgroup.freeze":
            path.write_text(text + "\n")
            frozen = text.strip() == "1" and not self.freeze_stuck
            Path(d, "cgroup.events").write_text(f"populated 1\nfrozen {int(frozen)}\n")
            return
        self._orig_write(d, name, text)

    def writes_under(self, prefix: str) -> list[tuple[str, str]]:
        return [w for w in self.writes if w[0].startswith(prefix)]


def layout_of(tree: FakeTree) -> Layout:
    """The Layout detect_layout() finds for a fake tree (from its mountinfo text)."""
    return detect_layout(str(tree.root), tree.mountinfo)


LAYOUTS = ("v1", "comounted", "hybrid", "v2")


def make_tree(kind: str, root: Path) -> FakeTree:
    """A fake tree for one of LAYOUTS (v1 with separate or co-mounted controllers, hybrid, v2)."""
    if kind == "v2":
        return make_v2_tree(root)
    if kind not in LAYOUTS:
        raise ValueError(f"unknown layout {kind!r}")
    return make_v1_tree(root, comounted=kind == "comounted", unified=kind == "hybrid")
