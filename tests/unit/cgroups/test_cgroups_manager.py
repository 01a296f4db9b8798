"""new_manager / from_paths / destroy / StatsReader on every fake layout."""

from __future__ import annotations

import errno
import json
import os
import threading
import time
from pathlib import Path

import pytest
from cgroups_fakefs import (
    V1_CPUACCT_USAGE,
    V1_MEMORY_STAT,
    V2_CPU_STAT,
    V2_MEMORY_STAT,
    FakeTree,
    layout_of,
    write_files,
)

from lxcone.cgroups import (
    CgroupError,
    CgroupManager,
    StatsReader,
    V1Manager,
    V2Manager,
    from_paths,
    fs,
    new_manager,
)


def test_new_manager_picks_the_implementation(any_tree: FakeTree) -> None:
    mgr = new_manager("lxcone", "one-1", layout_of(any_tree))
    assert isinstance(mgr, CgroupManager)
    expected = V2Manager if any_tree.unified == any_tree.root else V1Manager
    assert type(mgr) is expected


@pytest.mark.parametrize(
    ("parent", "name"),
    [("lxcone", ""), ("lxcone", "a/b"), ("lxcone", ".."), ("/abs", "x"), ("a/../b", "x")],
)
def test_new_manager_rejects_bad_names(v1_tree: FakeTree, parent: str, name: str) -> None:
    with pytest.raises(ValueError):
        new_manager(parent, name, layout_of(v1_tree))


def test_empty_parent_means_the_hierarchy_root(v1_tree: FakeTree) -> None:
    mgr = new_manager("", "one-1", layout_of(v1_tree))
    assert mgr.paths["memory"] == f"{v1_tree.root}/memory/one-1"


def test_from_paths_round_trips_through_json(any_tree: FakeTree, kernel: object) -> None:
    kernel(any_tree)  # type: ignore[operator]
    mgr = new_manager("lxcone", "one-7", layout_of(any_tree))
    mgr.create()
    mgr.apply(99)
    saved = json.dumps(mgr.paths)
    again = from_paths(json.loads(saved))
    assert type(again) is type(mgr)
    assert again.paths == mgr.paths
    assert again.join_files() == mgr.join_files()
    assert again.unified_dir() == mgr.unified_dir()
    assert again.pids() == [99]
    assert again.exists()


@pytest.mark.parametrize("paths", [{}, {"memory": "relative/x"}, {"unified": 3}])
def test_from_paths_rejects_malformed(paths: dict) -> None:
    with pytest.raises(ValueError):
        from_paths(paths)


def test_destroy_removes_child_cgroups_first_and_is_idempotent(
    any_tree: FakeTree, kernel: object
) -> None:
    kernel(any_tree)  # type: ignore[operator]
    mgr = new_manager("lxcone/sub", "one-1", layout_of(any_tree))
    mgr.create()
    for d in set(mgr.paths.values()):
        # Sub-cgroups the container made itself (systemd's init.scope and below).
        fs.make_dir(f"{d}/init.scope")
        fs.make_dir(f"{d}/init.scope/deeper")
    mgr.destroy()
    assert not mgr.exists()
    for d in set(mgr.paths.values()):
        assert Path(d).parent.is_dir()  # the shared parent is kept
    mgr.destroy()
    mgr.remove_parent_if_empty()
    for d in set(mgr.paths.values()):
        assert not Path(d).parent.exists()
        assert not Path(d).parent.parent.exists()  # "lxcone" too: depth 2


def test_remove_parent_if_empty_keeps_a_busy_parent(v1_tree: FakeTree, kernel: object) -> None:
    kernel(v1_tree)  # type: ignore[operator]
    layout = layout_of(v1_tree)
    a = new_manager("lxcone", "one-1", layout)
    b = new_manager("lxcone", "one-2", layout)
    a.create()
    b.create()
    a.destroy()
    a.remove_parent_if_empty()  # ENOTEMPTY/EBUSY ignored
    assert b.exists()
    b.destroy()
    b.remove_parent_if_empty()
    assert not Path(v1_tree.root, "memory", "lxcone").exists()


def test_destroy_retries_ebusy_until_tasks_leave(v2_tree: FakeTree, kernel: object) -> None:
    kernel(v2_tree)  # type: ignore[operator]
    mgr = new_manager("lxcone", "one-1", layout_of(v2_tree))
    mgr.create()
    mgr.apply(1234)
    procs = Path(mgr.paths["unified"], "cgroup.procs")

    def task_exits() -> None:
        time.sleep(0.05)
        procs.write_text("")

    t = threading.Thread(target=task_exits)
    t.start()
    mgr.destroy(timeout=5.0)
    t.join()
    assert not mgr.exists()


def test_destroy_gives_up_with_ebusy_after_timeout(v1_tree: FakeTree, kernel: object) -> None:
    kernel(v1_tree)  # type: ignore[operator]
    mgr = new_manager("lxcone", "one-1", layout_of(v1_tree))
    mgr.create()
    Path(mgr.paths["memory"], "cgroup.procs").write_text("1234\n")
    t0 = time.monotonic()
    with pytest.raises(CgroupError) as ei:
        mgr.destroy(timeout=0.1)
    assert ei.value.errno == errno.EBUSY
    assert "memory" in ei.value.filename
    assert time.monotonic() - t0 < 2.0
    # The other hierarchies were cleaned up anyway.
    assert not Path(mgr.paths["cpu"]).exists()
    Path(mgr.paths["memory"], "cgroup.procs").write_text("")
    mgr.destroy()
    assert not mgr.exists()


def test_destroy_does_not_retry_other_errors(
    v1_tree: FakeTree, kernel: object, monkeypatch: pytest.MonkeyPatch
) -> None:
    kernel(v1_tree)  # type: ignore[operator]
    mgr = new_manager("lxcone", "one-1", layout_of(v1_tree))
    mgr.create()
    calls = []

    def eperm(path: str) -> None:
        calls.append(path)
        raise CgroupError(errno.EPERM, path, "rmdir")

    monkeypatch.setattr(fs, "remove_dir", eperm)
    with pytest.raises(PermissionError):
        mgr.destroy(timeout=5.0)
    assert len(calls) == len(set(mgr.paths.values()))  # once per hierarchy, no retry loop


# --- StatsReader ---------------------------------------------------------------------------


def _fill(mgr: CgroupManager) -> None:
    if "unified" in mgr.paths and len(mgr.paths) == 1:
        write_files(
            mgr.paths["unified"],
            {"cpu.stat": V2_CPU_STAT, "memory.current": "5500928\n", "memory.stat": V2_MEMORY_STAT},
        )
    else:
        write_files(mgr.paths["cpuacct"], {"cpuacct.usage": V1_CPUACCT_USAGE})
        write_files(
            mgr.paths["memory"],
            {"memory.usage_in_bytes": "5500928\n", "memory.stat": V1_MEMORY_STAT},
        )


def test_stats_reader_matches_manager_stats(any_tree: FakeTree, kernel: object) -> None:
    kernel(any_tree)  # type: ignore[operator]
    mgr = new_manager("lxcone", "one-1", layout_of(any_tree))
    mgr.create()
    _fill(mgr)
    with StatsReader(mgr) as r:
        assert r.read() == mgr.stats()
        assert r.read().memory_working_set_bytes == 5500928 - 577536


def test_stats_reader_usage_group_reads_two_files(any_tree: FakeTree, kernel: object) -> None:
    kernel(any_tree)  # type: ignore[operator]
    mgr = new_manager("lxcone", "one-1", layout_of(any_tree))
    mgr.create()
    _fill(mgr)
    with StatsReader(mgr.paths, ("usage",)) as r:
        st = r.read()
        assert st.cpu_usage_ns is not None and st.memory_usage_bytes == 5500928
        assert st.memory_rss_bytes is None and st.pids_current is None
        fds = {
            os.readlink(f"/proc/self/fd/{fd}")
            for fd in os.listdir("/proc/self/fd")
            if os.path.exists(f"/proc/self/fd/{fd}")
        }
        opened = {f for f in fds if "/one-1/" in f}
        assert len(opened) == 2, opened


def test_stats_reader_keeps_fds_open_between_reads(v1_tree: FakeTree, kernel: object) -> None:
    kernel(v1_tree)  # type: ignore[operator]
    mgr = new_manager("lxcone", "one-1", layout_of(v1_tree))
    mgr.create()
    _fill(mgr)
    r = StatsReader(mgr, ("cpu", "memory"))
    r.read()
    n = len(os.listdir("/proc/self/fd"))
    for _ in range(5):
        r.read()
    assert len(os.listdir("/proc/self/fd")) == n
    r.close()
    assert len(os.listdir("/proc/self/fd")) < n


def test_stats_reader_on_a_vanished_cgroup_returns_errors(
    any_tree: FakeTree, kernel: object
) -> None:
    kernel(any_tree)  # type: ignore[operator]
    mgr = new_manager("lxcone", "one-1", layout_of(any_tree))
    mgr.create()
    _fill(mgr)
    with StatsReader(mgr) as r:
        assert r.read().errors == []
        mgr.destroy()
        # Fake trees keep already-open fds readable (a real cgroupfs gives ENODEV: see the
        # kernel tests); files opened after removal fail, and nothing raises.
        st = r.read()
        assert st is not None
    with StatsReader(mgr) as r2:
        st = r2.read()
        assert st.errors and all(isinstance(e, CgroupError) for e in st.errors)
        assert {e.errno for e in st.errors} == {errno.ENOENT}
        assert st.cpu_usage_ns is None and st.memory_usage_bytes is None


def test_stats_reader_rejects_unknown_groups(v1_tree: FakeTree) -> None:
    with pytest.raises(ValueError, match="unknown stats group"):
        StatsReader({"memory": "/x"}, ("disk",))
