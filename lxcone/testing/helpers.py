"""Small helpers shared by the real-kernel tests (runtime, monitor, exporter, driver)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import time
import types
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lxcone.images.busybox import STOP_SIGNAL
from lxcone.runtime import ContainerSpec, Runtime


def busybox_spec(rootfs: str, name: str = "ct1", **kw: Any) -> ContainerSpec:
    """A spec for the busybox test rootfs, stopped with busybox init's poweroff signal."""
    kw.setdefault("stop_signal", STOP_SIGNAL)
    return ContainerSpec(name=name, rootfs=rootfs, **kw)


def sh(rt: Runtime, name: str, script: str, timeout: float = 30) -> str:
    """Run a shell script inside the container; fail the test unless it exits 0."""
    r = rt.exec(name, ["/bin/sh", "-c", script], timeout=timeout)
    assert r.returncode == 0, (r.returncode, r.stdout, r.stderr)
    return r.stdout.decode()


def wait_for(pred: Callable[[], object], timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``pred`` every 20 ms until it is true; AssertionError naming ``what`` after timeout."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if pred():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


#: The Python client of the agent (a script in remotes/, not a module of the package).
PYTHON_CLIENT = Path(__file__).resolve().parents[2] / "remotes" / "vmm" / "lxcone" / "lxcone-client"


def load_python_client(name: str = "lxcone_client") -> types.ModuleType:
    """remotes/vmm/lxcone/lxcone-client loaded as a module, for tests of its functions."""
    loader = importlib.machinery.SourceFileLoader(name, str(PYTHON_CLIENT))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec is not None
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod
