"""Layout detection from mountinfo: v1, co-mounted v1, hybrid, v2."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest
from cgroups_fakefs import FakeTree, layout_of

from lxcone.cgroups import CgroupError, detect_layout, layout_from_mounts, parse_mountinfo

# The project host's /proc/self/mountinfo cgroup lines, verbatim.
HOST_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
34 31 0:31 / /sys/fs/cgroup/cpuset rw,relatime - cgroup cgroup rw,cpuset
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
37 31 0:34 / /sys/fs/cgroup/freezer rw,relatime - cgroup cgroup rw,freezer
38 31 0:35 / /sys/fs/cgroup/blkio rw,relatime - cgroup cgroup rw,blkio
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
"""

# A systemd v1 host (Debian 10 style), with optional fields and co-mounted controllers.
SYSTEMD_V1_MOUNTINFO = """\
25 18 0:22 / /sys/fs/cgroup ro,nosuid,nodev,noexec shared:9 - tmpfs tmpfs ro,mode=755
26 25 0:23 / /sys/fs/cgroup/unified rw,nosuid,nodev,noexec,relatime shared:10 - cgroup2 cgroup2 rw,nsdelegate
27 25 0:24 / /sys/fs/cgroup/systemd rw,nosuid,nodev,noexec,relatime shared:11 - cgroup cgroup rw,xattr,name=systemd
30 25 0:27 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid,nodev,noexec,relatime shared:14 - cgroup cgroup rw,cpu,cpuacct
31 25 0:28 / /sys/fs/cgroup/net_cls,net_prio rw,nosuid,nodev,noexec,relatime shared:15 - cgroup cgroup rw,net_cls,net_prio
32 25 0:29 / /sys/fs/cgroup/memory rw,nosuid,nodev,noexec,relatime shared:16 - cgroup cgroup rw,memory
33 25 0:30 / /sys/fs/cgroup/cpuset rw,nosuid,nodev,noexec,relatime shared:17 - cgroup cgroup rw,cpuset,clone_children
34 25 0:31 / /sys/fs/cgroup/freezer rw,nosuid,nodev,noexec,relatime shared:18 - cgroup cgroup rw,freezer
"""  # noqa: E501

V2_MOUNTINFO = """\
22 1 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
30 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate,memory_recursiveprot
"""  # noqa: E501


def test_parse_mountinfo_keeps_only_cgroup_mounts() -> None:
    mounts = parse_mountinfo(HOST_MOUNTINFO)
    assert len(mounts) == 10
    assert mounts[0].mount_point == "/sys/fs/cgroup/cpu"
    assert mounts[0].super_options == ("rw", "cpu")
    assert mounts[-1].fstype == "cgroup2"


def test_parse_mountinfo_unescapes_octal_and_skips_garbage() -> None:
    text = (
        "40 31 0:37 / /sys/fs/cgroup/my\\040dir rw - cgroup cgroup rw,name=x\n"
        "truncated line without separator\n"
        "41 31 0:38 / /x rw - cgroup2\n"
    )
    mounts = parse_mountinfo(text)
    assert [m.mount_point for m in mounts] == ["/sys/fs/cgroup/my dir"]


def test_host_layout_is_hybrid_with_separate_cpu_and_cpuacct() -> None:
    layout = layout_from_mounts(parse_mountinfo(HOST_MOUNTINFO), "/sys/fs/cgroup")
    assert layout.mode == "hybrid"
    assert layout.unified == "/sys/fs/cgroup/unified"
    assert layout.v1["cpu"] == "/sys/fs/cgroup/cpu"
    assert layout.v1["cpuacct"] == "/sys/fs/cgroup/cpuacct"
    assert layout.v1["name=systemd"] == "/sys/fs/cgroup/systemd"
    assert set(layout.v1) == {
        "cpu", "cpuacct", "cpuset", "memory", "devices", "freezer", "blkio", "pids",
        "name=systemd",
    }  # fmt: skip


def test_comounted_controllers_share_a_mountpoint() -> None:
    layout = layout_from_mounts(parse_mountinfo(SYSTEMD_V1_MOUNTINFO), "/sys/fs/cgroup")
    assert layout.mode == "hybrid"
    assert layout.v1["cpu"] == layout.v1["cpuacct"] == "/sys/fs/cgroup/cpu,cpuacct"
    assert layout.v1["net_cls"] == layout.v1["net_prio"]
    # Mount options that are not controllers are not controllers.
    assert "clone_children" not in layout.v1 and "xattr" not in layout.v1
    assert layout.v1_mountpoints().count("/sys/fs/cgroup/cpu,cpuacct") == 1


def test_pure_v1_without_unified() -> None:
    text = "\n".join(line for line in SYSTEMD_V1_MOUNTINFO.splitlines() if "cgroup2" not in line)
    layout = layout_from_mounts(parse_mountinfo(text), "/sys/fs/cgroup")
    assert layout.mode == "v1" and layout.unified is None


def test_pure_v2() -> None:
    layout = layout_from_mounts(parse_mountinfo(V2_MOUNTINFO), "/sys/fs/cgroup")
    assert layout.mode == "v2"
    assert layout.unified == "/sys/fs/cgroup"
    assert dict(layout.v1) == {}


def test_mounts_outside_root_are_ignored() -> None:
    text = HOST_MOUNTINFO + "50 1 0:40 / /mnt/other rw - cgroup cgroup rw,perf_event\n"
    layout = layout_from_mounts(parse_mountinfo(text), "/sys/fs/cgroup")
    assert "perf_event" not in layout.v1


def test_later_mount_on_same_point_hides_earlier_one() -> None:
    text = (
        "32 31 0:29 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,cpu\n"
        "60 32 0:50 / /sys/fs/cgroup/cpu rw - cgroup cgroup rw,perf_event\n"
    )
    layout = layout_from_mounts(parse_mountinfo(text), "/sys/fs/cgroup")
    assert set(layout.v1) == {"perf_event"}


def test_nothing_mounted_raises() -> None:
    with pytest.raises(CgroupError) as ei:
        layout_from_mounts([], "/sys/fs/cgroup")
    assert ei.value.errno == errno.ENOENT


def test_fake_trees_detect(v1_tree: FakeTree, tmp_path: Path) -> None:
    layout = layout_of(v1_tree)
    assert layout.mode == "v1"
    assert layout.v1["memory"] == f"{v1_tree.root}/memory"
    assert layout.v1["name=systemd"] == f"{v1_tree.root}/systemd"


def test_fake_hybrid_reads_unified_controllers(hybrid_tree: FakeTree) -> None:
    layout = layout_of(hybrid_tree)
    assert layout.mode == "hybrid"
    assert layout.unified == f"{hybrid_tree.root}/unified"
    assert layout.unified_controllers == {"hugetlb"}


def test_fake_v2_reads_controllers(v2_tree: FakeTree) -> None:
    layout = layout_of(v2_tree)
    assert layout.mode == "v2"
    assert {"cpu", "memory", "io", "pids", "cpuset"} <= layout.unified_controllers


def test_fake_comounted(comounted_tree: FakeTree) -> None:
    layout = layout_of(comounted_tree)
    assert layout.v1["cpu"] == layout.v1["cpuacct"] == f"{comounted_tree.root}/cpu,cpuacct"


def test_detect_layout_is_cached(v1_tree: FakeTree) -> None:
    assert layout_of(v1_tree) is layout_of(v1_tree)


def test_layout_rejects_unknown_mode() -> None:
    from lxcone.cgroups import Layout

    with pytest.raises(ValueError, match="mode"):
        Layout(mode="v3", root="/")


def test_detect_layout_on_this_host_matches_mountinfo() -> None:
    # Whatever this host is, detection must agree with its own mountinfo.
    with open("/proc/self/mountinfo") as f:
        text = f.read()
    try:
        layout = detect_layout()
    except CgroupError:
        pytest.skip("no cgroup hierarchy mounted under /sys/fs/cgroup")
    if layout.mode == "v2":
        assert " /sys/fs/cgroup " in text and "cgroup2" in text
    else:
        for mountpoint in layout.v1.values():
            assert f" {mountpoint} " in text
