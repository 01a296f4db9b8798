"""V1Manager (v1, co-mounted v1 and hybrid) on fake trees."""

from __future__ import annotations

import errno
import os
from pathlib import Path

import pytest
from cgroups_fakefs import (
    V1_BLKIO_SERVICE_BYTES,
    V1_BLKIO_SERVICED,
    V1_CPU_STAT,
    V1_CPUACCT_STAT,
    V1_CPUACCT_USAGE,
    V1_CPUACCT_USAGE_SYS,
    V1_CPUACCT_USAGE_USER,
    V1_MEMORY_STAT,
    V1_OOM_CONTROL,
    V1_OOM_CONTROL_PRE_4_13,
    V1_UNLIMITED,
    FakeKernel,
    FakeTree,
    layout_of,
    make_v1_tree,
    write_files,
)

from lxcone.cgroups import CgroupError, Resources, V1Manager, new_manager
from lxcone.cgroups import base as cg_base


def _mgr(tree: FakeTree, parent: str = "lxcone-test/sub", name: str = "one-1") -> V1Manager:
    mgr = new_manager(parent, name, layout_of(tree))
    assert isinstance(mgr, V1Manager)
    return mgr


def test_paths_cover_every_hierarchy_once(v1_tree: FakeTree) -> None:
    mgr = _mgr(v1_tree)
    r = v1_tree.root
    assert mgr.paths["memory"] == f"{r}/memory/lxcone-test/sub/one-1"
    assert mgr.paths["name=systemd"] == f"{r}/systemd/lxcone-test/sub/one-1"
    assert "unified" not in mgr.paths
    assert mgr.join_files() == [d + "/tasks" for d in cg_base.distinct(list(mgr.paths.values()))]
    assert len(mgr.join_files()) == 9
    assert mgr.unified_dir() is None


def test_comounted_paths_share_one_directory(comounted_tree: FakeTree) -> None:
    mgr = _mgr(comounted_tree)
    assert mgr.paths["cpu"] == mgr.paths["cpuacct"]
    assert mgr.paths["net_cls"] == mgr.paths["net_prio"]
    files = mgr.join_files()
    assert len(files) == len(set(files)) == 9  # 8 mounts + name=systemd


def test_hybrid_adds_the_unified_directory(hybrid_tree: FakeTree) -> None:
    mgr = _mgr(hybrid_tree)
    assert mgr.paths["unified"] == f"{hybrid_tree.root}/unified/lxcone-test/sub/one-1"
    # Init is born there with clone3(CLONE_INTO_CGROUP), and joins only the v1 ones itself.
    assert mgr.unified_dir() == mgr.paths["unified"]
    assert all(f.endswith("/tasks") and "/unified/" not in f for f in mgr.join_files())
    assert len(mgr.join_files()) == 9


def test_create_is_idempotent_and_copies_cpuset_into_every_new_level(
    hybrid_tree: FakeTree, kernel: object
) -> None:
    fk: FakeKernel = kernel(hybrid_tree)  # type: ignore[operator]
    mgr = _mgr(hybrid_tree)
    mgr.create()
    assert mgr.exists()
    cs = Path(mgr.paths["cpuset"])
    for d in (cs, cs.parent, cs.parent.parent):
        assert (d / "cpuset.cpus").read_text().strip() == "0-3"
        assert (d / "cpuset.mems").read_text().strip() == "0"
    assert Path(mgr.paths["unified"]).is_dir()
    n = len(fk.writes)
    mgr.create()
    assert fk.writes[n:] == []  # nothing rewritten: non-empty cpusets are left alone
    # The hierarchy root was never written.
    assert not fk.writes_under(f"{hybrid_tree.root}/cpuset/cpuset.")


def test_create_unified_makes_only_the_cgroup2_directory(
    hybrid_tree: FakeTree, kernel: object
) -> None:
    # What the monitor clones init into; the v1 directories follow (create()) meanwhile.
    fk: FakeKernel = kernel(hybrid_tree)  # type: ignore[operator]
    mgr = _mgr(hybrid_tree)
    mgr.create_unified()
    assert Path(mgr.paths["unified"]).is_dir()
    assert [k for k, d in mgr.paths.items() if Path(d).exists()] == ["unified"]
    assert fk.writes == []
    mgr.create_unified()  # idempotent
    mgr.create_v1()  # and create_v1() makes the rest, as create() would
    assert all(Path(d).is_dir() for d in mgr.paths.values())
    assert Path(mgr.paths["cpuset"], "cpuset.cpus").read_text().strip() == "0-3"


def test_create_unified_on_pure_v1_makes_nothing(v1_tree: FakeTree, kernel: object) -> None:
    kernel(v1_tree)  # type: ignore[operator]
    mgr = _mgr(v1_tree)
    mgr.create_unified()
    assert not mgr.exists()


def test_create_keeps_a_parent_cpuset_that_is_already_set(
    v1_tree: FakeTree, kernel: object
) -> None:
    kernel(v1_tree)  # type: ignore[operator]
    parent = v1_tree.root / "cpuset" / "lxcone-test"
    parent.mkdir()
    write_files(parent, {"cpuset.cpus": "1\n", "cpuset.mems": "0\n"})
    mgr = _mgr(v1_tree, parent="lxcone-test", name="one-2")
    mgr.create()
    assert (parent / "cpuset.cpus").read_text() == "1\n"
    assert Path(mgr.paths["cpuset"], "cpuset.cpus").read_text().strip() == "1"


def test_apply_writes_the_pid_to_every_procs_file(hybrid_tree: FakeTree, kernel: object) -> None:
    kernel(hybrid_tree)  # type: ignore[operator]
    mgr = _mgr(hybrid_tree)
    mgr.create()
    mgr.apply(4242)
    for d in {*mgr.paths.values()}:
        assert Path(d, "cgroup.procs").read_text() == "4242\n"
    assert mgr.pids() == [4242]


def test_apply_retries_einval_then_gives_up(
    v1_tree: FakeTree, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[str] = []

    def flaky(d: str, name: str, data: object) -> None:
        calls.append(d)
        if len(calls) < 3:
            raise CgroupError(errno.EINVAL, f"{d}/{name}", "write", str(data))

    monkeypatch.setattr(cg_base.fs, "write_file", flaky)
    monkeypatch.setattr(cg_base, "PROCS_RETRY_S", 0.0)
    cg_base.write_pid("/x/cgroup.procs", 1)
    assert len(calls) == 3

    def always(d: str, name: str, data: object) -> None:
        raise CgroupError(errno.EINVAL, f"{d}/{name}", "write", str(data))

    monkeypatch.setattr(cg_base.fs, "write_file", always)
    with pytest.raises(CgroupError) as ei:
        cg_base.write_pid("/x/cgroup.procs", 1)
    assert ei.value.errno == errno.EINVAL

    def esrch(d: str, name: str, data: object) -> None:
        raise CgroupError(errno.ESRCH, f"{d}/{name}", "write", str(data))

    monkeypatch.setattr(cg_base.fs, "write_file", esrch)
    with pytest.raises(ProcessLookupError):
        cg_base.write_pid("/x/cgroup.procs", 1)


def _read(mgr: V1Manager, ctrl: str, name: str) -> str:
    return Path(mgr.paths[ctrl], name).read_text().strip()


def test_set_writes_every_field(comounted_tree: FakeTree, kernel: object) -> None:
    kernel(comounted_tree)  # type: ignore[operator]
    mgr = _mgr(comounted_tree)
    mgr.create()
    mgr.set(
        Resources(
            memory_limit_bytes=256 << 20,
            memory_swap_limit_bytes=64 << 20,
            cpu_quota_us=50000,
            cpu_period_us=100000,
            cpu_weight=100,
            cpuset_cpus="0-1",
            cpuset_mems="0",
            pids_limit=-1,
        )
    )
    assert _read(mgr, "memory", "memory.limit_in_bytes") == str(256 << 20)
    assert _read(mgr, "memory", "memory.memsw.limit_in_bytes") == str(320 << 20)
    assert _read(mgr, "cpu", "cpu.cfs_quota_us") == "50000"
    assert _read(mgr, "cpu", "cpu.cfs_period_us") == "100000"
    assert _read(mgr, "cpu", "cpu.shares") == "1024"  # weight 100 -> 1024
    assert _read(mgr, "cpuset", "cpuset.cpus") == "0-1"
    assert _read(mgr, "pids", "pids.max") == "max"


def test_set_cpu_shares_and_unlimited_quota(v1_tree: FakeTree, kernel: object) -> None:
    kernel(v1_tree)  # type: ignore[operator]
    mgr = _mgr(v1_tree)
    mgr.create()
    mgr.set(Resources(cpu_shares=512, cpu_quota_us=20000))
    assert _read(mgr, "cpu", "cpu.shares") == "512"
    assert _read(mgr, "cpu", "cpu.cfs_quota_us") == "20000"
    mgr.set(Resources(cpu_quota_us=-1))
    assert _read(mgr, "cpu", "cpu.cfs_quota_us") == "-1"
    mgr.set(Resources(cpu_period_us=50000))
    assert _read(mgr, "cpu", "cpu.cfs_period_us") == "50000"


def test_set_cpu_period_einval_retries_in_the_other_order(
    v1_tree: FakeTree, kernel: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    fk: FakeKernel = kernel(v1_tree)  # type: ignore[operator]
    mgr = _mgr(v1_tree)
    mgr.create()
    real = fk.write_file
    refused = []

    def picky(d: str, name: str, data: object) -> None:
        if name == "cpu.cfs_period_us" and not refused:
            refused.append(data)
            raise CgroupError(errno.EINVAL, f"{d}/{name}", "write", str(data))
        real(d, name, data)  # type: ignore[arg-type]

    monkeypatch.setattr(cg_base.fs, "write_file", picky)
    mgr.set(Resources(cpu_quota_us=10000, cpu_period_us=20000))
    assert _read(mgr, "cpu", "cpu.cfs_quota_us") == "10000"
    assert _read(mgr, "cpu", "cpu.cfs_period_us") == "20000"


class _MemsswKernel:
    """Enforce the kernel rule memory.limit <= memsw.limit on every write."""

    def __init__(self, fk: FakeKernel) -> None:
        self.fk = fk

    def write_file(self, d: str, name: str, data: str | int) -> None:
        value = int(str(data))
        unl = int(V1_UNLIMITED)
        value = unl if value == -1 else value
        mem = int(Path(d, "memory.limit_in_bytes").read_text())
        memsw = int(Path(d, "memory.memsw.limit_in_bytes").read_text())
        if name == "memory.limit_in_bytes":
            mem = value
        elif name == "memory.memsw.limit_in_bytes":
            memsw = value
        if mem > memsw:
            raise CgroupError(errno.EINVAL, f"{d}/{name}", "write", str(data))
        self.fk.writes.append((f"{d}/{name}", str(data)))
        Path(d, name).write_text(f"{value}\n")


@pytest.mark.parametrize(
    ("steps"),
    [
        # (memory, swap) successive settings; each must succeed under memory <= memsw.
        [(512 << 20, 0), (256 << 20, 0), (1 << 30, 0)],
        [(256 << 20, 256 << 20), (128 << 20, None), (1 << 30, None)],
        [(1 << 30, 0), (None, 512 << 20), (None, 0), (-1, None)],
        [(256 << 20, -1), (128 << 20, 0), (-1, -1)],
    ],
)
def test_v1_memory_and_swap_write_order_never_breaks_the_kernel_rule(
    v1_tree: FakeTree, kernel: object, monkeypatch: pytest.MonkeyPatch, steps: list
) -> None:
    fk: FakeKernel = kernel(v1_tree)  # type: ignore[operator]
    mgr = _mgr(v1_tree)
    mgr.create()
    strict = _MemsswKernel(fk)
    monkeypatch.setattr(cg_base.fs, "write_file", strict.write_file)
    unl = int(V1_UNLIMITED)
    cur_mem, cur_swap = -1, -1
    for mem, swap in steps:
        mgr.set(Resources(memory_limit_bytes=mem, memory_swap_limit_bytes=swap))
        if mem is not None:
            cur_mem = mem
        if swap is not None:
            cur_swap = swap
        want_mem = unl if cur_mem == -1 else cur_mem
        want_memsw = unl if cur_mem == -1 or cur_swap == -1 else cur_mem + cur_swap
        assert int(_read(mgr, "memory", "memory.limit_in_bytes")) == want_mem
        assert int(_read(mgr, "memory", "memory.memsw.limit_in_bytes")) == want_memsw


def test_swap_without_swap_accounting_is_a_value_error(v1_tree: FakeTree, kernel: object) -> None:
    fk: FakeKernel = kernel(v1_tree)  # type: ignore[operator]
    mgr = _mgr(v1_tree)
    mgr.create()
    Path(mgr.paths["memory"], "memory.memsw.limit_in_bytes").unlink()
    n = len(fk.writes)
    with pytest.raises(ValueError, match="memory_swap_limit_bytes"):
        mgr.set(Resources(memory_limit_bytes=1 << 30, memory_swap_limit_bytes=0))
    assert fk.writes[n:] == []
    # Memory alone still works, and "unlimited swap" needs no accounting.
    mgr.set(Resources(memory_limit_bytes=1 << 30, memory_swap_limit_bytes=-1))
    assert _read(mgr, "memory", "memory.limit_in_bytes") == str(1 << 30)


@pytest.mark.parametrize("kind", ["v1", "comounted", "hybrid"])
def test_unified_keys_are_refused_on_v1_and_hybrid(
    tmp_path: Path, kernel: object, kind: str
) -> None:
    tree = make_v1_tree(tmp_path / "cg", comounted=kind == "comounted", unified=kind == "hybrid")
    fk: FakeKernel = kernel(tree)  # type: ignore[operator]
    mgr = _mgr(tree)
    mgr.create()
    n = len(fk.writes)
    with pytest.raises(ValueError, match=r"Resources\.unified"):
        mgr.set(Resources(pids_limit=5, unified={"memory.high": "1G"}))
    assert fk.writes[n:] == []


def test_missing_controller_is_a_value_error(tmp_path: Path, kernel: object) -> None:
    tree = make_v1_tree(tmp_path / "cg")
    del tree.v1[f"{tree.root}/pids"]
    tree.mountinfo = "\n".join(
        line for line in tree.mountinfo.splitlines() if not line.endswith("rw,pids")
    )
    kernel(tree)  # type: ignore[operator]
    mgr = _mgr(tree)
    assert "pids" not in mgr.paths
    mgr.create()
    with pytest.raises(ValueError, match="pids controller is not mounted"):
        mgr.set(Resources(pids_limit=10))


def test_stats_from_real_v1_dumps(comounted_tree: FakeTree, kernel: object) -> None:
    kernel(comounted_tree)  # type: ignore[operator]
    mgr = _mgr(comounted_tree)
    mgr.create()
    write_files(
        mgr.paths["cpu"],
        {
            "cpu.stat": V1_CPU_STAT,
            "cpuacct.usage": V1_CPUACCT_USAGE,
            "cpuacct.usage_user": V1_CPUACCT_USAGE_USER,
            "cpuacct.usage_sys": V1_CPUACCT_USAGE_SYS,
        },
    )
    write_files(
        mgr.paths["memory"],
        {
            "memory.stat": V1_MEMORY_STAT,
            "memory.usage_in_bytes": "5500928\n",
            "memory.memsw.usage_in_bytes": "5505024\n",
            "memory.limit_in_bytes": "50331648\n",
            "memory.oom_control": V1_OOM_CONTROL,
        },
    )
    write_files(
        mgr.paths["blkio"],
        {
            "blkio.throttle.io_service_bytes_recursive": V1_BLKIO_SERVICE_BYTES,
            "blkio.throttle.io_serviced_recursive": V1_BLKIO_SERVICED,
        },
    )
    write_files(mgr.paths["pids"], {"pids.current": "3\n", "pids.max": "100\n"})
    st = mgr.stats()
    assert st.errors == []
    assert st.cpu_usage_ns == 157845959
    assert st.cpu_user_ns == 136000000 and st.cpu_system_ns == 40000000
    assert (st.cpu_nr_periods, st.cpu_nr_throttled, st.cpu_throttled_ns) == (7, 7, 518882163)
    assert st.memory_usage_bytes == 5500928
    assert st.memory_working_set_bytes == 5500928 - 577536
    assert st.memory_rss_bytes == 2191360 and st.memory_cache_bytes == 2957312
    assert st.memory_swap_bytes == 4096
    assert st.memory_limit_bytes == 50331648
    assert st.oom_events == 1
    assert (st.pids_current, st.pids_limit) == (3, 100)
    assert (st.io_read_bytes, st.io_write_bytes) == (0, 3276800)
    assert (st.io_read_ops, st.io_write_ops) == (0, 51)


def test_stats_fallbacks_for_old_kernels(v1_tree: FakeTree, kernel: object) -> None:
    kernel(v1_tree)  # type: ignore[operator]
    mgr = _mgr(v1_tree)
    mgr.create()
    acct = Path(mgr.paths["cpuacct"])
    (acct / "cpuacct.usage_user").unlink()
    (acct / "cpuacct.usage_sys").unlink()
    (acct / "cpuacct.stat").write_text(V1_CPUACCT_STAT)
    mem = Path(mgr.paths["memory"])
    (mem / "memory.memsw.usage_in_bytes").unlink()
    (mem / "memory.oom_control").write_text(V1_OOM_CONTROL_PRE_4_13)
    blk = Path(mgr.paths["blkio"])
    (blk / "blkio.throttle.io_service_bytes_recursive").unlink()
    (blk / "blkio.throttle.io_serviced_recursive").unlink()
    (blk / "blkio.throttle.io_service_bytes").write_text(V1_BLKIO_SERVICE_BYTES)
    st = mgr.stats()
    assert st.errors == []  # absent optional files are not errors
    hz = os.sysconf("SC_CLK_TCK")
    assert st.cpu_user_ns == 12 * 1_000_000_000 // hz
    assert st.memory_swap_bytes is None
    assert st.oom_events == 1  # under_oom before 4.13
    assert st.io_write_bytes == 3276800
    assert st.memory_limit_bytes is None  # the v1 "unlimited" value


def test_stats_collects_per_file_errors(v1_tree: FakeTree, kernel: object) -> None:
    kernel(v1_tree)  # type: ignore[operator]
    mgr = _mgr(v1_tree)
    mgr.create()
    Path(mgr.paths["memory"], "memory.stat").write_text("total_rss x\n")
    Path(mgr.paths["pids"], "pids.current").unlink()
    st = mgr.stats()
    assert st.memory_rss_bytes is None and st.memory_usage_bytes == 0
    assert st.pids_current is None and st.pids_limit is None  # "max"
    kinds = sorted((type(e).__name__, e.filename.rsplit("/", 1)[1]) for e in st.errors)
    assert kinds == [
        ("CgroupFileNotFoundError", "pids.current"),
        ("CgroupParseError", "memory.stat"),
    ]


def test_freeze_and_thaw(v1_tree: FakeTree, kernel: object) -> None:
    fk: FakeKernel = kernel(v1_tree)  # type: ignore[operator]
    mgr = _mgr(v1_tree)
    mgr.create()
    assert mgr.freezer_state() == "THAWED"
    mgr.freeze()
    assert mgr.freezer_state() == "FROZEN"
    mgr.thaw()
    assert mgr.freezer_state() == "THAWED"
    # FREEZING: FROZEN is re-written until the kernel reports FROZEN.
    fk.freeze_delay = 5
    n = len(fk.writes)
    mgr.freeze()
    assert mgr.freezer_state() == "FROZEN"
    frozen_writes = [w for w in fk.writes[n:] if w[0].endswith("freezer.state")]
    assert len(frozen_writes) == 6


def test_freeze_timeout_thaws_back(v1_tree: FakeTree, kernel: object) -> None:
    fk: FakeKernel = kernel(v1_tree)  # type: ignore[operator]
    mgr = _mgr(v1_tree)
    mgr.create()
    fk.freeze_delay = 10**9
    with pytest.raises(TimeoutError):
        mgr.freeze(timeout=0.05)
    assert mgr.freezer_state() == "THAWED"


def test_freeze_without_freezer_hierarchy() -> None:
    mgr = V1Manager({"memory": "/nonexistent/memory/x"})
    with pytest.raises(CgroupError) as ei:
        mgr.freeze()
    assert ei.value.errno == errno.EOPNOTSUPP


def test_hybrid_without_v1_freezer_freezes_through_cgroup_freeze(
    tmp_path: Path, kernel: object
) -> None:
    tree = make_v1_tree(tmp_path / "cg", unified=True)
    del tree.v1[f"{tree.root}/freezer"]
    tree.mountinfo = "\n".join(
        line for line in tree.mountinfo.splitlines() if not line.endswith("rw,freezer")
    )
    kernel(tree)  # type: ignore[operator]
    mgr = _mgr(tree)
    assert "freezer" not in mgr.paths
    mgr.create()
    mgr.freeze()
    assert mgr.freezer_state() == "FROZEN"
    assert Path(mgr.paths["unified"], "cgroup.freeze").read_text().strip() == "1"
    mgr.thaw()
    assert mgr.freezer_state() == "THAWED"


def test_pids_include_descendants(v1_tree: FakeTree, kernel: object) -> None:
    kernel(v1_tree)  # type: ignore[operator]
    mgr = _mgr(v1_tree)
    mgr.create()
    child = Path(mgr.paths["pids"], "init.scope")
    child.mkdir()
    (child / "cgroup.procs").write_text("30\n10\n")
    Path(mgr.paths["pids"], "cgroup.procs").write_text("20\n")
    assert mgr.pids() == [10, 20, 30]
