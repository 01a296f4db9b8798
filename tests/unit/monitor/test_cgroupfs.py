"""The probes' cgroup readings equal lxcone.cgroups' own (same files, same arithmetic) on fake
v1, co-mounted v1, hybrid and v2 trees, and degrade to None when a cgroup vanishes."""

from __future__ import annotations

import os
import shutil

import pytest
from cgroups_fakefs import (
    V1_BLKIO_SERVICE_BYTES,
    V1_BLKIO_SERVICED,
    V1_CPUACCT_USAGE,
    V1_MEMORY_STAT,
    V2_CPU_STAT,
    V2_IO_STAT,
    V2_MEMORY_STAT,
)

from lxcone.cgroups import StatsReader, from_paths
from lxcone.monitor import cgroupfs

from .conftest import FakeHost


def busy_files(kind: str) -> dict[str, dict[str, str]]:
    if kind == "v2":
        return {"unified": {"cpu.stat": V2_CPU_STAT, "memory.current": "5500928\n",
                            "memory.stat": V2_MEMORY_STAT, "io.stat": V2_IO_STAT}}
    return {"cpuacct": {"cpuacct.usage": V1_CPUACCT_USAGE},
            "memory": {"memory.usage_in_bytes": "5500928\n", "memory.stat": V1_MEMORY_STAT},
            "blkio": {"blkio.throttle.io_service_bytes_recursive": V1_BLKIO_SERVICE_BYTES,
                      "blkio.throttle.io_serviced_recursive": V1_BLKIO_SERVICED}}


def test_sample_equals_lxcone_cgroups(fake_host: FakeHost) -> None:
    paths = fake_host.add("one-1", files=busy_files(fake_host.kind))
    truth = from_paths(paths).stats()
    with StatsReader(paths, ("cpu", "memory", "memory_stat", "pids", "io")) as r:
        assert r.read() == truth
    s = cgroupfs.sample(paths)
    assert s.cpu_ns == truth.cpu_usage_ns and s.cpu_ns is not None
    assert s.memory_usage_bytes == truth.memory_usage_bytes == 5500928
    assert s.memory_bytes == truth.memory_working_set_bytes == 5500928 - 577536
    assert (s.io_read_bytes, s.io_write_bytes) == (truth.io_read_bytes, truth.io_write_bytes)
    assert (s.io_read_ops, s.io_write_ops) == (truth.io_read_ops, truth.io_write_ops)
    if fake_host.kind == "v2":
        assert (s.io_read_bytes, s.io_write_bytes, s.io_read_ops, s.io_write_ops) == \
            (1482752 + 4096, 3276800, 97, 51)
    else:
        assert (s.io_read_bytes, s.io_write_bytes, s.io_read_ops, s.io_write_ops) == \
            (0, 3276800, 0, 51)


def test_fresh_cgroup(fake_host: FakeHost) -> None:
    paths = fake_host.add("one-1")
    truth = from_paths(paths).stats()
    s = cgroupfs.sample(paths)
    assert s.cpu_ns == truth.cpu_usage_ns
    assert s.memory_bytes == truth.memory_working_set_bytes
    assert s.io_read_bytes == truth.io_read_bytes


def test_v1_falls_back_to_non_recursive_blkio(v1_host: FakeHost) -> None:
    paths = v1_host.add("one-1")
    d = paths["blkio"]
    for name in ("io_service_bytes", "io_serviced"):
        (v1_host.tree.root / "blkio" / "lxcone" / "one-1" / f"blkio.throttle.{name}_recursive"
         ).unlink()
    (v1_host.tree.root / "blkio" / "lxcone" / "one-1" / "blkio.throttle.io_service_bytes"
     ).write_text(V1_BLKIO_SERVICE_BYTES)
    assert d.endswith("/blkio/lxcone/one-1")
    s = cgroupfs.sample(paths)
    assert s.io_write_bytes == 3276800 and s.io_write_ops == 0


def test_cpu_key_is_the_counter_files_inode(fake_host: FakeHost) -> None:
    # On cgroupfs (kernfs) inode numbers carry a generation and are not handed out again, so a
    # cgroup created anew under the same name has a new key (tests/kernel/monitor checks that
    # on the real kernel; a plain filesystem reuses freed inodes, so it is not checked here).
    paths = fake_host.add("one-1", files=busy_files(fake_host.kind))
    counter = (f"{paths['unified']}/cpu.stat" if fake_host.kind == "v2"
               else f"{paths['cpuacct']}/cpuacct.usage")
    s = cgroupfs.sample(paths)
    assert s.cpu_key == os.stat(counter).st_ino
    assert cgroupfs.sample(paths).cpu_key == s.cpu_key


def test_frozen_matches_the_managers_freezer_state(fake_host: FakeHost) -> None:
    paths = fake_host.add("one-1")
    mgr = from_paths(paths)
    assert cgroupfs.frozen(paths) is False and mgr.freezer_state() == "THAWED"
    fake_host.managers["one-1"].freeze()
    assert cgroupfs.frozen(paths) is True and mgr.freezer_state() != "THAWED"
    fake_host.managers["one-1"].thaw()
    assert cgroupfs.frozen(paths) is False


def test_hybrid_without_a_v1_freezer_uses_the_unified_dir(tmp_path) -> None:
    u = tmp_path / "u"
    u.mkdir()
    (u / "cgroup.freeze").write_text("1\n")
    paths = {"memory": str(tmp_path / "m"), "unified": str(u)}
    assert cgroupfs.frozen(paths) is True
    assert cgroupfs.frozen({"memory": str(tmp_path / "m")}) is None


def test_vanished_cgroup_gives_nones(fake_host: FakeHost) -> None:
    paths = fake_host.add("one-1", files=busy_files(fake_host.kind))
    for d in set(paths.values()):
        shutil.rmtree(d)
    s = cgroupfs.sample(paths)
    assert (s.cpu_ns, s.memory_bytes, s.io_read_bytes, s.io_read_ops) == (None,) * 4
    assert cgroupfs.frozen(paths) is None


@pytest.mark.parametrize(("data", "key", "value"), [
    (b"a 1\nb 2\n", b"a", 1), (b"a 1\nb 2\n", b"b", 2), (b"a 1\nb 2", b"b", 2),
    (b"ab 1\nb 2\n", b"b", 2), (b"a 1\n", b"c", None), (b"a x\n", b"a", None), (b"", b"a", None),
    (b"total_inactive_file 7\ninactive_file 3\n", b"inactive_file", 3),
])
def test_read_keyed(data: bytes, key: bytes, value: int | None) -> None:
    from lxcone.monitor.procfs import read_keyed

    assert read_keyed(data, key) == value
