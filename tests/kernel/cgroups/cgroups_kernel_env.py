"""Kernel-test helpers: a unique cgroup parent per test, spawned tasks, and a leak check.

Each test gets ``lxcone-test-<uuid>`` at the root of every hierarchy of this host (v1
controllers, named hierarchies and the unified one). Teardown:

1. thaws and SIGKILLs whatever is still inside that parent (only our own tasks can be there: the
   name is unique) and reaps the processes the test spawned;
2. checks that the test left no ``lxcone-test-<uuid>`` directory in any hierarchy (the code under
   test must have cleaned up: ``destroy()`` + ``remove_parent_if_empty()``);
3. force-removes leftovers so that a failing test does not leak either, and then fails the test
   if step 2 found any after a passing test body (a failing body already reports).

The check is per test parent, not a glob over ``lxcone-test-*``: other engineers' suites run on
this host at the same time and use the same prefix.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field

import pytest

from lxcone.cgroups import CgroupError, Layout, detect_layout


def layout_or_skip() -> Layout:
    if os.geteuid() != 0:
        pytest.skip("needs root")
    try:
        return detect_layout()
    except CgroupError as e:
        pytest.skip(f"no cgroup hierarchy: {e}")


def hierarchy_roots(layout: Layout) -> list[str]:
    roots = layout.v1_mountpoints()
    if layout.unified is not None:
        roots.append(layout.unified)
    return roots


def _read(path: str) -> str:
    try:
        with open(path) as f:
            return f.read()
    except OSError:
        return ""


def _write(path: str, value: str) -> None:
    with contextlib.suppress(OSError), open(path, "w") as f:
        f.write(value)


def force_cleanup(layout: Layout, parent: str) -> None:
    """Thaw, kill and remove everything under ``<root>/<parent>`` in every hierarchy."""
    tops = [f"{r}/{parent}" for r in hierarchy_roots(layout)]
    for top in tops:
        for d, _, _ in os.walk(top):
            if os.path.exists(f"{d}/freezer.state"):
                _write(f"{d}/freezer.state", "THAWED")
            if os.path.exists(f"{d}/cgroup.freeze"):
                _write(f"{d}/cgroup.freeze", "0")
    for top in tops:
        for d, _, _ in os.walk(top):
            for pid in _read(f"{d}/cgroup.procs").split():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(int(pid), signal.SIGKILL)
    deadline = time.monotonic() + 10
    for top in tops:
        for d, _, _ in sorted(os.walk(top, topdown=False), key=lambda w: -w[0].count("/")):
            while os.path.isdir(d):
                try:
                    os.rmdir(d)
                except OSError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.01)


@dataclass
class CgroupEnv:
    """What a kernel test gets: the host layout, its unique parent, and a spawner."""

    layout: Layout
    parent: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def spawn(self, code: str | None = None, **kw: object) -> subprocess.Popen[bytes]:
        """Start ``sleep 1000``, or ``python -c code``; killed at teardown."""
        argv = ["sleep", "1000"] if code is None else [sys.executable, "-I", "-S", "-c", code]
        p = subprocess.Popen(argv, **kw)  # type: ignore[call-overload]
        self.procs.append(p)
        return p

    def leftovers(self) -> list[str]:
        return [
            f"{r}/{self.parent}"
            for r in hierarchy_roots(self.layout)
            if os.path.lexists(f"{r}/{self.parent}")
        ]
