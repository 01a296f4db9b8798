"""Per-disk records under a state dir, so another process can undo what mount_disk did.

``<state_dir>/disk.<id>.json`` (JSON object, written by write-to-temp + rename, so a reader sees
the old or the new record, never half of one). Written three times by mount_disk: before the first
step ("mounting", with the paths qsd will use), before mount(2) (loop, partition, qsd pid, the
device to be mounted) and after it ("mounted", with the mount id). A process killed at any point
leaves a record that lists everything that may exist; unmount_disk and the next mount_disk finish
the job. Not fsync'ed: the state dir is meant to be on tmpfs (/run), and mounts do not survive a
reboot either.

grow_disk (lxcone.storage.grow) rewrites a mounted disk's record after it grew it: the
partition's new ``size``, ``image_size`` (bytes), and ``grown`` ({"size", "device_size",
"fs_size"}: the sizes at which the filesystem tool last ran, so a repeated call does not run it
again for a tail too small to use).

Beside it, for qcow2 disks: ``disk.<id>.export`` (the FUSE export file), ``disk.<id>.qsd.pid``,
``disk.<id>.qmp`` (the daemon's QMP socket); for ISO disks on a kernel without iso9660:
``disk.<id>.iso.d/`` (the extracted image, bind-mounted read-only).
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
from typing import Any

from lxcone import atomicfile
from lxcone.filelock import flock

VERSION = 1


def record_path(state_dir: str, disk_id: int) -> str:
    return os.path.join(state_dir, f"disk.{disk_id}.json")


def side_paths(state_dir: str, disk_id: int) -> dict[str, str]:
    """The qcow2 daemon's files for this disk (absolute: qsd runs with --daemonize)."""
    base = os.path.join(os.path.abspath(state_dir), f"disk.{disk_id}")
    return {"export": f"{base}.export", "pidfile": f"{base}.qsd.pid", "qmp": f"{base}.qmp",
            "extract": f"{base}.iso.d"}


def read(state_dir: str, disk_id: int) -> dict[str, Any] | None:
    """The record, or None when there is none (or it is unreadable garbage: treated as none)."""
    try:
        with open(record_path(state_dir, disk_id)) as f:
            rec = json.load(f)
    except FileNotFoundError:
        return None
    except (ValueError, UnicodeDecodeError):
        return None
    return rec if isinstance(rec, dict) and rec.get("disk_id") == disk_id else None


def write(state_dir: str, rec: dict[str, Any]) -> None:
    """Atomically replace the record (ENOSPC etc. raise OSError; the old record stays)."""
    path = record_path(state_dir, rec["disk_id"])
    atomicfile.write_atomic(path, json.dumps(rec, sort_keys=True).encode())


def remove(state_dir: str, disk_id: int) -> None:
    path = record_path(state_dir, disk_id)
    # the record, and the temp file of a writer killed mid-write (any pid)
    leftovers = glob.glob(glob.escape(path) + ".*.tmp")
    for p in (path, *leftovers):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)


def all_ids(state_dir: str) -> list[int]:
    try:
        names = os.listdir(state_dir)
    except FileNotFoundError:
        return []
    ids = []
    for name in names:
        parts = name.split(".")
        if len(parts) == 3 and parts[0] == "disk" and parts[2] == "json" and parts[1].isdigit():
            ids.append(int(parts[1]))
    return sorted(ids)


def locked(state_dir: str) -> contextlib.AbstractContextManager[None]:
    """Serialise mount/unmount of one state dir across processes (flock on the directory itself,
    so no lock file is left behind)."""
    return flock(state_dir)
