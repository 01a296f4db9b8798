"""Small helpers shared by the real-kernel tests (runtime, monitor, exporter, driver)."""

from __future__ import annotations

import time
from collections.abc import Callable
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
