"""File-datastore storage: mount a VM disk (raw, qcow2, directory, ISO) on the host, unmount it
from any later process, grow it while mounted, and snapshot disk sets (reflink where the
filesystem can).

Beside ``lxcone.runtime``; uses ``lxcone.native`` and nothing higher. Public names load on first
use (PEP 562): importing ``lxcone.storage.detect`` or ``.partitions`` alone stays pure Python.
See docs/storage.md.
"""

from __future__ import annotations

_HOME = {
    "DiskSpec": "disk", "MountedDisk": "disk", "mount_disk": "disk", "unmount_disk": "disk",
    "mounted_disks": "disk",
    "StorageError": "errors", "DiskBusy": "errors", "ToolError": "errors",
    "GrowResult": "grow", "grow_disk": "grow",
    "InvalidSnapshotId": "snapshot", "snapshot_create": "snapshot",
    "snapshot_revert": "snapshot", "snapshot_delete": "snapshot",
}

__all__ = [
    "DiskBusy", "DiskSpec", "GrowResult", "InvalidSnapshotId", "MountedDisk", "StorageError",
    "ToolError", "grow_disk", "mount_disk", "mounted_disks", "snapshot_create", "snapshot_delete",
    "snapshot_revert", "unmount_disk",
]


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'lxcone.storage' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f"lxcone.storage.{home}"), name)
    globals()[name] = value
    return value
