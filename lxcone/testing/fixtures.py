"""pytest fixtures for real-kernel tests: each test gets its own run dir, cgroup parent and
host-side network namespace, and teardown proves nothing leaked (cgroups, interfaces in the
machine's own netns, monitor processes, mounts). Loaded from tests/conftest.py.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

CGROUP_ROOT = "/sys/fs/cgroup"


def is_root() -> bool:
    return os.geteuid() == 0


needs_root = pytest.mark.skipif(not is_root(), reason="needs root and a real kernel")


def cgroup_dirs_named(parent: str) -> list[str]:
    """Every directory called ``parent`` under any cgroup hierarchy (the leak oracle)."""
    found = []
    for entry in os.listdir(CGROUP_ROOT):
        p = os.path.join(CGROUP_ROOT, entry, parent)
        if os.path.isdir(p) and not os.path.islink(os.path.join(CGROUP_ROOT, entry)):
            found.append(p)
    return found


def root_netns_links() -> set[str]:
    return set(os.listdir("/sys/class/net"))


def monitor_pids(run_dir: str) -> list[int]:
    """lxcone-monitor processes (not zombies) whose config lives under run_dir."""
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{pid}/stat").read_bytes()
        except OSError:
            continue
        if len(cmd) > 1 and cmd[0].endswith(b"lxcone-monitor") and \
                cmd[1].startswith(run_dir.encode()) and b") Z" not in stat:
            pids.append(int(pid))
    return pids


def mounts_under(path: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(path)]


@pytest.fixture(scope="session")
def busybox_rootfs(tmp_path_factory: pytest.TempPathFactory) -> str:
    from lxcone.images.busybox import build_rootfs

    return str(build_rootfs(tmp_path_factory.mktemp("rootfs") / "busybox"))


@pytest.fixture
def cgroup_parent() -> Iterator[str]:
    parent = f"lxcone-test-{uuid.uuid4().hex[:10]}"
    yield parent
    leftovers = [d for d in cgroup_dirs_named(parent) if _has_children(d)]
    for d in sorted(cgroup_dirs_named(parent), key=len, reverse=True):
        _rmdir_tree(d)
    assert not leftovers, f"cgroups leaked under {parent}: {leftovers}"


def _has_children(d: str) -> bool:
    return any(os.path.isdir(os.path.join(d, e)) for e in os.listdir(d))


def _rmdir_tree(d: str) -> None:
    for e in os.listdir(d):
        p = os.path.join(d, e)
        if os.path.isdir(p):
            _rmdir_tree(p)
    for _ in range(50):
        try:
            os.rmdir(d)
            return
        except FileNotFoundError:
            return
        except OSError:
            time.sleep(0.02)


@pytest.fixture
def host_netns() -> Iterator[str]:
    """A throw-away netns playing the host side (bridges, veth host ends)."""
    name = f"lxt-{uuid.uuid4().hex[:8]}"
    before = root_netns_links()
    subprocess.run(["ip", "netns", "add", name], check=True)
    path = f"/run/netns/{name}"
    subprocess.run(["nsenter", f"--net={path}", "ip", "link", "set", "lo", "up"], check=True)
    yield path
    subprocess.run(["ip", "netns", "delete", name], check=False)
    assert not os.path.exists(path), f"netns {name} not deleted"
    # netns teardown is asynchronous in the kernel; give it a moment before judging
    for _ in range(100):
        if root_netns_links() == before:
            break
        time.sleep(0.01)
    assert root_netns_links() == before, "interfaces leaked into the root netns"


@pytest.fixture
def run_dir(tmp_path: Path) -> Iterator[str]:
    d = tmp_path / "run"
    yield str(d)
    assert not monitor_pids(str(d)), "lxcone-monitor processes left running"


@pytest.fixture
def runtime(run_dir: str, cgroup_parent: str, host_netns: str) -> Iterator[object]:
    from lxcone.runtime import Runtime

    rt = Runtime(run_dir, cgroup_parent, host_netns)
    yield rt
    # Tests may leave containers running: the runtime itself must be able to clean them up, and
    # the run_dir / cgroup_parent / host_netns fixtures then prove nothing survived.
    for s in rt.list():
        rt.delete(s.name, force=True)
    assert rt.list() == [], "containers survived delete --force"
