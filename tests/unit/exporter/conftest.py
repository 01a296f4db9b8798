"""A fake host for the exporter: fake cgroupfs trees (the ones of tests/unit/cgroups, with the
dumps read on the project host), a fake run dir, and real but idle "init" processes.

Each running fake container gets its own ``sleep`` child as init, so pids are distinct, pidfds
work and a container can be stopped for real (kill the sleep); its guest NIC counters come from
a dict (``host.net[pid]``) through the collector's ``net_dev_reader`` hook.
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "cgroups"))
from cgroups_fakefs import (
    LAYOUTS,
    V1_BLKIO_SERVICE_BYTES,
    V1_BLKIO_SERVICED,
    V1_CPU_STAT,
    V1_CPUACCT_USAGE,
    V1_CPUACCT_USAGE_SYS,
    V1_CPUACCT_USAGE_USER,
    V1_MEMORY_STAT,
    V1_OOM_CONTROL,
    V2_CPU_STAT,
    V2_IO_STAT,
    V2_MEMORY_EVENTS,
    V2_MEMORY_STAT,
    FakeKernel,
    FakeTree,
    layout_of,
    make_tree,
    write_files,
)

from exporter import CgroupCollector
from lxcone import procstat
from lxcone.cgroups import new_manager
from lxcone.monitor.netdev import NetCounters

PARENT = "lxcone-test"
MEM_USAGE = 8 << 20
MEM_LIMIT = 48 << 20
SWAP = 4096

# What the dumps above mean, per layout (the values a scrape must report).
EXPECTED = {
    "v1": {
        "cpu_usage": 157845959e-9, "cpu_user": 136000000e-9, "cpu_system": 40000000e-9,
        "periods": 7, "throttled": 7, "throttled_s": 518882163e-9,
        "usage": MEM_USAGE, "working_set": MEM_USAGE - 577536, "rss": 2191360,
        "cache": 2957312, "swap": SWAP, "limit": MEM_LIMIT, "oom": 1, "tasks": 3,
        "tasks_limit": 100, "rbytes": 0, "wbytes": 3276800, "rios": 0, "wios": 51,
    },
    "v2": {
        "cpu_usage": 90497416e-6, "cpu_user": 59337923e-6, "cpu_system": 31159493e-6,
        "periods": 120, "throttled": 37, "throttled_s": 1.85,
        "usage": MEM_USAGE, "working_set": MEM_USAGE - 577536, "rss": 2191360,
        "cache": 2957312, "swap": SWAP, "limit": MEM_LIMIT, "oom": 2, "tasks": 3,
        "tasks_limit": 100, "rbytes": 1482752 + 4096, "wbytes": 3276800, "rios": 97,
        "wios": 51,
    },
}


def counters(base: int) -> NetCounters:
    """Distinct values per field: rx_bytes=base, rx_packets=base+1, ..., tx_dropped=base+7."""
    return NetCounters(*(base + i for i in range(8)))


@dataclass
class FakeContainer:
    name: str
    paths: dict[str, str]
    ct_dir: Path
    init: subprocess.Popen | None = None


@dataclass
class FakeHost:
    """A fake tree + run dir; ``add()`` makes containers, ``collector()`` scrapes them."""

    layout_name: str
    tree: FakeTree
    run_dir: Path
    kernel: FakeKernel
    net: dict[int, dict[str, NetCounters]] = field(default_factory=dict)
    procs: list[subprocess.Popen] = field(default_factory=list)
    collectors: list[CgroupCollector] = field(default_factory=list)

    @property
    def expected(self) -> dict[str, float]:
        return EXPECTED["v2" if self.layout_name == "v2" else "v1"]

    def collector(self, registry: CollectorRegistry | None = None) -> CgroupCollector:
        c = CgroupCollector(self.run_dir, registry=registry,
                            net_dev_reader=lambda pid: dict(self.net.get(pid, {})))
        self.collectors.append(c)
        return c

    def spawn_init(self) -> subprocess.Popen:
        p = subprocess.Popen(["sleep", "1000"])
        self.procs.append(p)
        return p

    def add(self, name: str, *, running: bool = True, nics: tuple[tuple[str, str], ...] = (),
            stopped: bool = False, write_stats: bool = True) -> FakeContainer:
        """A container record (and its cgroups when running); ``nics`` = (host, guest) names.
        Not running: ``stopped`` leaves an exit file (else it is merely created)."""
        # Hostile container names must not become hostile cgroup names: derive a safe one.
        cg = "cg-" + hashlib.sha1(os.fsencode(name)).hexdigest()[:10]
        mgr = new_manager(PARENT, cg, layout_of(self.tree))
        paths = dict(mgr.paths)
        ct_dir = self.run_dir / name
        ct_dir.mkdir(parents=True)
        state = {"spec": {"name": name, "nics": [{"host_name": h, "guest_name": g}
                                                 for h, g in nics]},
                 "cgroup_paths": paths, "host_netns": None}
        (ct_dir / "state.json").write_text(json.dumps(state))
        ct = FakeContainer(name, paths, ct_dir)
        if running:
            mgr.create()
            if write_stats:
                self.write_stats(paths)
            ct.init = self.spawn_init()
            self.write_init(ct, ct.init.pid)
        elif stopped:
            (ct_dir / "exit").write_text("exited 0\n")
        return ct

    def write_init(self, ct: FakeContainer, pid: int) -> None:
        start = procstat.live_starttime(pid)
        tmp = ct.ct_dir / "init.tmp"
        tmp.write_text(f"{pid} {start} {os.getpid()}\n")
        os.rename(tmp, ct.ct_dir / "init")  # by rename, as lxcone-monitor does

    def write_stats(self, paths: dict[str, str], scale: int = 1) -> None:
        if "unified" in paths and len(paths) == 1:
            d = paths["unified"]
            write_files(d, {
                "cpu.stat": V2_CPU_STAT, "memory.current": f"{MEM_USAGE}\n",
                "memory.stat": V2_MEMORY_STAT, "memory.max": f"{MEM_LIMIT}\n",
                "memory.swap.current": f"{SWAP}\n", "memory.events": V2_MEMORY_EVENTS,
                "pids.current": "3\n", "pids.max": "100\n", "io.stat": V2_IO_STAT,
            })
            return
        write_files(paths["cpuacct"], {
            "cpuacct.usage": V1_CPUACCT_USAGE, "cpuacct.usage_user": V1_CPUACCT_USAGE_USER,
            "cpuacct.usage_sys": V1_CPUACCT_USAGE_SYS})
        write_files(paths["cpu"], {"cpu.stat": V1_CPU_STAT})
        write_files(paths["memory"], {
            "memory.usage_in_bytes": f"{MEM_USAGE}\n", "memory.stat": V1_MEMORY_STAT,
            "memory.limit_in_bytes": f"{MEM_LIMIT}\n",
            "memory.memsw.usage_in_bytes": f"{MEM_USAGE + SWAP}\n",
            "memory.oom_control": V1_OOM_CONTROL})
        write_files(paths["pids"], {"pids.current": "3\n", "pids.max": "100\n"})
        for base, text in (("io_service_bytes", V1_BLKIO_SERVICE_BYTES),
                           ("io_serviced", V1_BLKIO_SERVICED)):
            write_files(paths["blkio"], {f"blkio.throttle.{base}": text,
                                         f"blkio.throttle.{base}_recursive": text})

    def age(self, seconds: float = 10.0) -> None:
        """Backdate every run dir entry: a directory changed within the collector's racy window
        (100 ms) is re-read at every scrape, which real containers, changing rarely, are not."""
        t = time.time_ns() - int(seconds * 1e9)
        for entry in os.listdir(self.run_dir):
            os.utime(self.run_dir / entry, ns=(t, t), follow_symlinks=False)

    def freeze(self, ct: FakeContainer) -> None:
        if "freezer" in ct.paths:
            Path(ct.paths["freezer"], "freezer.state").write_text("FROZEN\n")
        else:
            Path(ct.paths["unified"], "cgroup.freeze").write_text("1\n")

    def stop(self, ct: FakeContainer) -> None:
        """Init exits (and is reaped); the monitor writes the exit file."""
        assert ct.init is not None
        ct.init.kill()
        ct.init.wait()
        (ct.ct_dir / "exit").write_text("signaled 9\n")

    def close(self) -> None:
        for c in self.collectors:
            c.close()
        for p in self.procs:
            if p.poll() is None:
                p.kill()
            p.wait()



@pytest.fixture(params=LAYOUTS)
def host(request: pytest.FixtureRequest, tmp_path: Path,
         monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHost]:
    """A fake host for each cgroup layout."""
    tree = make_tree(request.param, tmp_path / "cgroup")
    h = FakeHost(request.param, tree, tmp_path / "run", FakeKernel(tree).install(monkeypatch))
    h.run_dir.mkdir()
    yield h
    h.close()


@pytest.fixture
def v1_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHost]:
    """The project machines' layout (hybrid) only, for tests that do not depend on it."""
    tree = make_tree("hybrid", tmp_path / "cgroup")
    h = FakeHost("hybrid", tree, tmp_path / "run", FakeKernel(tree).install(monkeypatch))
    h.run_dir.mkdir()
    yield h
    h.close()


@pytest.fixture
def registry() -> CollectorRegistry:
    """A fresh registry per test (auto_describe=True, like the default REGISTRY)."""
    return CollectorRegistry(auto_describe=True)
