"""V2Manager (pure cgroup v2) on a fake tree."""

from __future__ import annotations

from pathlib import Path

import pytest
from cgroups_fakefs import (
    V2_CPU_STAT,
    V2_IO_STAT,
    V2_MEMORY_EVENTS,
    V2_MEMORY_STAT,
    FakeKernel,
    FakeTree,
    layout_of,
    make_v2_tree,
    write_files,
)

from lxcone.cgroups import CgroupError, Resources, V2Manager, new_manager


def _mgr(tree: FakeTree, parent: str = "lxcone-test/sub", name: str = "one-1") -> V2Manager:
    mgr = new_manager(parent, name, layout_of(tree))
    assert isinstance(mgr, V2Manager)
    return mgr


def _sc(d: Path) -> set[str]:
    return set((d / "cgroup.subtree_control").read_text().split())


def test_paths_and_clone_into_cgroup_dir(v2_tree: FakeTree) -> None:
    mgr = _mgr(v2_tree)
    leaf = f"{v2_tree.root}/lxcone-test/sub/one-1"
    assert mgr.paths == {"unified": leaf}
    assert mgr.join_files() == []  # born in it: clone3(CLONE_INTO_CGROUP)
    assert mgr.unified_dir() == leaf


def test_create_enables_controllers_in_every_ancestor_only(
    v2_tree: FakeTree, kernel: object
) -> None:
    fk: FakeKernel = kernel(v2_tree)  # type: ignore[operator]
    # Something already enabled at the root stays enabled (never removed).
    (v2_tree.root / "cgroup.subtree_control").write_text("hugetlb\n")
    mgr = _mgr(v2_tree)
    mgr.create()
    want = {"cpu", "memory", "pids", "io", "cpuset"}
    root = v2_tree.root
    assert _sc(root) == want | {"hugetlb"}
    assert _sc(root / "lxcone-test") == want
    assert _sc(root / "lxcone-test" / "sub") == want
    leaf = Path(mgr.paths["unified"])
    assert _sc(leaf) == set()  # the leaf holds tasks: no-internal-process rule
    assert set((leaf / "cgroup.controllers").read_text().split()) == want
    assert (leaf / "memory.max").exists() and (leaf / "pids.max").exists()
    # Only the missing ones are written, once per ancestor.
    sc_writes = [w for w in fk.writes if w[0].endswith("cgroup.subtree_control")]
    assert len(sc_writes) == 3
    n = len(fk.writes)
    mgr.create()  # idempotent, writes nothing
    assert fk.writes[n:] == []


def test_create_unified_is_the_whole_create(v2_tree: FakeTree, kernel: object) -> None:
    fk: FakeKernel = kernel(v2_tree)  # type: ignore[operator]
    mgr = _mgr(v2_tree)
    mgr.create_unified()
    leaf = Path(mgr.paths["unified"])
    assert (leaf / "memory.max").exists()  # born with the controllers, as create() makes it
    assert _sc(v2_tree.root / "lxcone-test" / "sub") == {"cpu", "memory", "pids", "io", "cpuset"}
    n = len(fk.writes)
    mgr.create_v1()  # nothing left to make: no second walk of the ancestors
    assert fk.writes[n:] == []


def test_create_enables_only_available_controllers(tmp_path: Path, kernel: object) -> None:
    tree = make_v2_tree(tmp_path / "cg", controllers="cpu memory")
    kernel(tree)  # type: ignore[operator]
    mgr = _mgr(tree, parent="lxcone")
    mgr.create()
    assert _sc(tree.root) == {"cpu", "memory"}
    with pytest.raises(ValueError, match=r"Resources\.pids_limit: the pids controller"):
        mgr.set(Resources(pids_limit=5))


def test_create_one_failing_controller_does_not_block_the_others(
    v2_tree: FakeTree, kernel: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    fk: FakeKernel = kernel(v2_tree)  # type: ignore[operator]
    real = fk.write_file

    def no_cpu(d: str, name: str, data: object) -> None:
        if name == "cgroup.subtree_control" and "+cpu" in str(data).split():
            import errno

            raise CgroupError(errno.EBUSY, f"{d}/{name}", "write", str(data))
        real(d, name, data)  # type: ignore[arg-type]

    from lxcone.cgroups import fs

    monkeypatch.setattr(fs, "write_file", no_cpu)
    mgr = _mgr(v2_tree, parent="lxcone")
    mgr.create()
    assert _sc(v2_tree.root) == {"cpuset", "io", "memory", "pids"}


def test_set_writes_v2_files(v2_tree: FakeTree, kernel: object) -> None:
    kernel(v2_tree)  # type: ignore[operator]
    mgr = _mgr(v2_tree)
    mgr.create()
    leaf = Path(mgr.paths["unified"])
    mgr.set(
        Resources(
            memory_limit_bytes=256 << 20,
            memory_swap_limit_bytes=0,
            cpu_quota_us=50000,
            cpu_period_us=100000,
            cpu_shares=1024,
            cpuset_cpus="0-1",
            cpuset_mems="0",
            pids_limit=100,
            unified={"memory.high": "200M"},
        )
    )
    assert (leaf / "memory.max").read_text().strip() == str(256 << 20)
    assert (leaf / "memory.swap.max").read_text().strip() == "0"
    assert (leaf / "cpu.max").read_text().strip() == "50000 100000"
    assert (leaf / "cpu.weight").read_text().strip() == "100"  # shares 1024 -> weight 100
    assert (leaf / "cpuset.cpus").read_text().strip() == "0-1"
    assert (leaf / "pids.max").read_text().strip() == "100"
    assert (leaf / "memory.high").read_text().strip() == "200M"


def test_set_unlimited_values_and_period_only(v2_tree: FakeTree, kernel: object) -> None:
    kernel(v2_tree)  # type: ignore[operator]
    mgr = _mgr(v2_tree)
    mgr.create()
    leaf = Path(mgr.paths["unified"])
    mgr.set(Resources(memory_limit_bytes=-1, memory_swap_limit_bytes=-1, pids_limit=-1))
    assert (leaf / "memory.max").read_text().strip() == "max"
    assert (leaf / "memory.swap.max").read_text().strip() == "max"
    assert (leaf / "pids.max").read_text().strip() == "max"
    mgr.set(Resources(cpu_quota_us=30000))
    assert (leaf / "cpu.max").read_text().strip() == "30000"  # the kernel keeps the period
    (leaf / "cpu.max").write_text("30000 100000\n")
    mgr.set(Resources(cpu_period_us=50000))
    assert (leaf / "cpu.max").read_text().strip() == "30000 50000"  # quota kept
    mgr.set(Resources(cpu_quota_us=-1, cpu_period_us=100000))
    assert (leaf / "cpu.max").read_text().strip() == "max 100000"
    mgr.set(Resources(cpu_weight=250))
    assert (leaf / "cpu.weight").read_text().strip() == "250"


def test_swap_without_memory_swap_max_is_a_value_error(v2_tree: FakeTree, kernel: object) -> None:
    fk: FakeKernel = kernel(v2_tree)  # type: ignore[operator]
    mgr = _mgr(v2_tree)
    mgr.create()
    Path(mgr.paths["unified"], "memory.swap.max").unlink()
    n = len(fk.writes)
    with pytest.raises(ValueError, match="memory_swap_limit_bytes"):
        mgr.set(Resources(memory_limit_bytes=1 << 30, memory_swap_limit_bytes=0))
    assert fk.writes[n:] == []
    mgr.set(Resources(memory_limit_bytes=1 << 30, memory_swap_limit_bytes=-1))
    assert Path(mgr.paths["unified"], "memory.max").read_text().strip() == str(1 << 30)


def test_unified_key_needs_its_controller(v2_tree: FakeTree, kernel: object) -> None:
    kernel(v2_tree)  # type: ignore[operator]
    mgr = _mgr(v2_tree)
    mgr.create()
    with pytest.raises(ValueError, match=r"unified\['rdma.max'\].*rdma controller"):
        mgr.set(Resources(unified={"rdma.max": "mlx4_0 hca_handle=2"}))


def test_stats_from_v2_dumps(v2_tree: FakeTree, kernel: object) -> None:
    kernel(v2_tree)  # type: ignore[operator]
    mgr = _mgr(v2_tree)
    mgr.create()
    write_files(
        mgr.paths["unified"],
        {
            "cpu.stat": V2_CPU_STAT,
            "memory.current": "5500928\n",
            "memory.stat": V2_MEMORY_STAT,
            "memory.swap.current": "8192\n",
            "memory.max": "268435456\n",
            "memory.events": V2_MEMORY_EVENTS,
            "pids.current": "4\n",
            "pids.max": "max\n",
            "io.stat": V2_IO_STAT,
        },
    )
    st = mgr.stats()
    assert st.errors == []
    assert st.cpu_usage_ns == 90497416000
    assert st.cpu_user_ns == 59337923000 and st.cpu_system_ns == 31159493000
    assert (st.cpu_nr_periods, st.cpu_nr_throttled, st.cpu_throttled_ns) == (120, 37, 1850000000)
    assert st.memory_usage_bytes == 5500928
    assert st.memory_working_set_bytes == 5500928 - 577536
    assert st.memory_rss_bytes == 2191360 and st.memory_cache_bytes == 2957312
    assert st.memory_swap_bytes == 8192
    assert st.memory_limit_bytes == 268435456
    assert st.oom_events == 2
    assert (st.pids_current, st.pids_limit) == (4, None)
    assert (st.io_read_bytes, st.io_write_bytes) == (1482752 + 4096, 3276800)
    assert (st.io_read_ops, st.io_write_ops) == (97, 51)


def test_stats_skip_controllers_not_enabled(tmp_path: Path, kernel: object) -> None:
    tree = make_v2_tree(tmp_path / "cg", controllers="cpu")
    kernel(tree)  # type: ignore[operator]
    mgr = _mgr(tree, parent="lxcone")
    mgr.create()
    st = mgr.stats()
    assert st.errors == []
    assert st.memory_usage_bytes is None and st.pids_current is None
    assert st.cpu_usage_ns == 90497416000


def test_working_set_is_floored_at_zero(v2_tree: FakeTree, kernel: object) -> None:
    kernel(v2_tree)  # type: ignore[operator]
    mgr = _mgr(v2_tree)
    mgr.create()
    write_files(
        mgr.paths["unified"],
        {"memory.current": "1000\n", "memory.stat": "anon 0\nfile 5000\ninactive_file 5000\n"},
    )
    assert mgr.stats().memory_working_set_bytes == 0


def test_freeze_thaw_and_state(v2_tree: FakeTree, kernel: object) -> None:
    fk: FakeKernel = kernel(v2_tree)  # type: ignore[operator]
    mgr = _mgr(v2_tree)
    mgr.create()
    assert mgr.freezer_state() == "THAWED"
    mgr.freeze()
    assert mgr.freezer_state() == "FROZEN"
    mgr.thaw()
    assert mgr.freezer_state() == "THAWED"
    fk.freeze_stuck = True
    with pytest.raises(TimeoutError):
        mgr.freeze(timeout=0.02)
    leaf = Path(mgr.paths["unified"])
    assert (leaf / "cgroup.freeze").read_text().strip() == "0"  # thawed back
    (leaf / "cgroup.freeze").write_text("1\n")
    assert mgr.freezer_state() == "FREEZING"


def test_destroy_and_remove_parent(v2_tree: FakeTree, kernel: object) -> None:
    kernel(v2_tree)  # type: ignore[operator]
    mgr = _mgr(v2_tree)
    mgr.create()
    mgr.destroy()
    assert not mgr.exists()
    mgr.destroy()  # idempotent
    assert (v2_tree.root / "lxcone-test" / "sub").is_dir()  # the shared parent stays
    mgr.remove_parent_if_empty()
    assert not (v2_tree.root / "lxcone-test").exists()
    assert v2_tree.root.is_dir()
