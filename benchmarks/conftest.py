"""Fixtures for the LXCoNe benchmarks: one rootfs, one throw-away host netns with a bridge, and
the three runtimes (LXCoNe, LXC 5.0, crun) side by side. Each fixture cleans up after itself and
fails the session if something leaked.

Run: .venv/bin/pytest benchmarks --benchmark-json=out/bench.json
     .venv/bin/python benchmarks/report.py out/bench.json
"""

from __future__ import annotations

import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import harness
import peers
import pytest

SESSION: dict = {}


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--run-slow", action="store_true", default=False,
                     help="also run benchmarks marked slow (200 containers); "
                          "or set LXCONE_BENCH_SLOW=1")


def pytest_configure(config: pytest.Config) -> None:
    SESSION["load_start"] = peers.loadavg()
    SESSION["loadavg_start"] = Path("/proc/loadavg").read_text().strip()
    SESSION["time_start"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    env = [f"{k}={os.environ[k]}" for k in ("LXCONE_BENCH_QUICK", "LXCONE_BENCH_SLOW")
           if os.environ.get(k)]
    SESSION["argv"] = [*env, os.path.relpath(sys.argv[0]) if os.path.isabs(sys.argv[0])
                       else sys.argv[0], *sys.argv[1:]]


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if config.getoption("--run-slow") or os.environ.get("LXCONE_BENCH_SLOW") == "1":
        return
    skip = pytest.mark.skip(reason="slow benchmark: pass --run-slow or set LXCONE_BENCH_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


def _version(argv: list[str]) -> str:
    try:
        out = subprocess.run(argv, capture_output=True, text=True, check=False)
        return (out.stdout or out.stderr).strip().splitlines()[0]
    except (OSError, IndexError):
        return "?"


def pytest_benchmark_update_json(config, benchmarks, output_json) -> None:
    """Add what report.py needs that pytest-benchmark does not record."""
    output_json["lxcone"] = {
        "argv": SESSION.get("argv"),
        "quick": harness.QUICK,
        "settle_s": harness.SETTLE_S,
        "idle_host_s": harness.IDLE_HOST_S,
        "nproc": os.cpu_count(),
        "kernel": platform.release(),
        "mem_total_kib": int(next(line.split()[1] for line in
                                  Path("/proc/meminfo").read_text().splitlines()
                                  if line.startswith("MemTotal:"))),
        "loadavg_start": SESSION.get("loadavg_start"),
        "loadavg_end": Path("/proc/loadavg").read_text().strip(),
        "time_start": SESSION.get("time_start"),
        "time_end": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime()),
        "runtime_errors_worked_around": dict(harness.RUNTIME_ERRORS),
        "versions": {
            "lxc": _version(["lxc-start", "--version"]),
            "crun": _version(["crun", "--version"]),
            "busybox": " ".join(_version(["busybox"]).split()[:2]),
            "python": sys.version.split()[0],
        },
    }


# -- session-wide resources ---------------------------------------------------------------------

@pytest.fixture(scope="session")
def bench_id() -> str:
    return uuid.uuid4().hex[:6]


@pytest.fixture(scope="session", autouse=True)
def subreaper() -> Iterator[None]:
    if os.geteuid() != 0:
        pytest.skip("the benchmarks need root (namespaces, cgroups, LXC, crun)")
    peers.become_subreaper()
    yield
    peers.reap_orphans()


@pytest.fixture(scope="session")
def workdir(bench_id: str) -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix=f"lxcone-bench-{bench_id}-"))
    yield d
    peers.rm_tree(d)


@pytest.fixture(scope="session")
def rootfs(workdir: Path) -> str:
    """The busybox rootfs every runtime boots (ours, LXC's dir: rootfs, crun's bundle root)."""
    from lxcone.images.busybox import build_rootfs

    return str(build_rootfs(workdir / "rootfs"))


@pytest.fixture(scope="session")
def host_netns(bench_id: str) -> Iterator[str]:
    """/run/netns/lxb-<id> holding bridge lxbbr0 (10.213.78.1/24); the machine's own netns is
    never touched, and teardown checks that no interface appeared in it."""
    before = set(os.listdir("/sys/class/net"))
    name = f"lxb-{bench_id}"
    path = peers.make_host_netns(name, harness.BRIDGE, f"{harness.SUBNET}.1/24")
    yield path
    peers.delete_netns(name)
    for _ in range(100):
        if set(os.listdir("/sys/class/net")) <= before:
            break
        time.sleep(0.02)
    leaked = set(os.listdir("/sys/class/net")) - before
    assert not os.path.exists(path), f"netns {name} not deleted"
    assert not leaked, f"interfaces appeared in the machine's own netns: {sorted(leaked)}"


@pytest.fixture(scope="session")
def spawner(workdir: Path) -> Iterator[peers.Spawner]:
    sp = peers.Spawner(workdir / "peers-stderr.log")
    yield sp
    sp.close()


@pytest.fixture(scope="session")
def lxc(workdir: Path, rootfs: str, spawner: peers.Spawner) -> Iterator[peers.Lxc]:
    if not shutil.which("lxc-start"):
        pytest.skip("lxc is not installed")
    x = peers.Lxc(workdir / "lxcpath", rootfs, spawner)
    yield x
    problems = x.cleanup()
    assert not problems, "LXC teardown: " + "; ".join(problems)


@pytest.fixture(scope="session")
def crun(workdir: Path, rootfs: str, bench_id: str) -> Iterator[peers.Crun]:
    if not shutil.which("crun"):
        pytest.skip("crun is not installed")
    c = peers.Crun(workdir / "crun", rootfs, f"lxcone-bench-{bench_id}-crun",
                   workdir / "crun-stderr.log")
    yield c
    problems = c.cleanup()
    assert not problems, "crun teardown: " + "; ".join(problems)


@pytest.fixture(scope="session")
def ours(workdir: Path, rootfs: str, bench_id: str, host_netns: str) -> Iterator[harness.Ours]:
    o = harness.Ours(workdir / "run", f"lxcone-bench-{bench_id}", host_netns, rootfs)
    yield o
    problems = o.cleanup()
    assert not problems, "lxcone teardown: " + "; ".join(problems)


@pytest.fixture
def names(bench_id: str, request: pytest.FixtureRequest):
    """Container names unique to the run: names.lxc('s') -> 'lxb<id>-s', names.ours('s')."""
    class Names:
        @staticmethod
        def lxc(tag: str) -> str:
            return f"lxb{bench_id}-{tag}"

        @staticmethod
        def ours(tag: str) -> str:
            return f"lxo{bench_id}-{tag}"

        @staticmethod
        def crun(tag: str) -> str:
            return f"lxr{bench_id}-{tag}"

    return Names
