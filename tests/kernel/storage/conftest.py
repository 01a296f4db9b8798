"""Fixtures for the storage kernel tests: a per-test directory (images, state dir, mount points,
scratch datastores all live under it), and at teardown the storage leak oracle: no loop device
backed by a file under it, no new loop partition, no mount under it, no qemu-storage-daemon
serving a path under it. A leak is cleaned up with the ordinary tools, then fails the test.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from lxcone.testing.fixtures import is_root

from . import storage_oracle as oracle


@dataclass
class StorageEnv:
    root: Path  # resolved: what mountinfo and /sys show

    @property
    def state(self) -> str:
        return str(self.root / "state")

    def path(self, name: str) -> str:
        return str(self.root / name)

    def mnt(self, disk_id: int) -> str:
        return str(self.root / "mnt" / f"disk.{disk_id}")


@pytest.fixture
def env(tmp_path: Path) -> Iterator[StorageEnv]:
    if not is_root():
        pytest.skip("needs root and a real kernel")
    root = tmp_path.resolve()
    parts_before = oracle.loop_partitions()
    yield StorageEnv(root)
    found = oracle.leaks(str(root), parts_before)
    if found:
        oracle.cleanup(str(root), found)
    assert not found, f"storage leaked: {found}"


@pytest.fixture
def tiny_fs(env: StorageEnv) -> Iterator[Callable[[str, int], str]]:
    """Mount a tmpfs limited to ``nr_inodes`` inodes under the test dir (a "full disk" that fills
    at an exact step: the root directory takes one inode, every new file one more)."""
    mounted: list[str] = []

    def make(name: str, nr_inodes: int) -> str:
        path = env.path(name)
        os.makedirs(path, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", f"size=1m,nr_inodes={nr_inodes}",
                        "tmpfs", path], check=True)
        mounted.append(path)
        return path

    yield make
    for path in reversed(mounted):
        subprocess.run(["umount", path], check=False)
