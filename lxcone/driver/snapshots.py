"""System snapshots (snapshot_create/revert/delete) over lxcone.storage: a consistent copy of
the VM's writable disks, taken with the container frozen.

Snapshots live in the VM's system datastore directory (``<ds>/<sys ds>/<vm>/lxcone-snapshots``):
on the disks' own filesystem, so reflink copies are possible, and removed with the VM's
directory by the TM. oned forgets system snapshots when the VM powers off (``KEEP_SNAPSHOTS="no"``
in the VM_MAD stanza, as for LXC), so shutdown and cancel delete ours too.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil

from lxcone.driver.config import DriverConfig
from lxcone.driver.disks import state_dir, vm_dir
from lxcone.driver.vmxml import Vm, VmXmlError

SNAP_DIR = "lxcone-snapshots"
HYPERVISOR_ID_RE = re.compile(r"snap-(\d{1,10})")


def snap_dir(vm: Vm, cfg: DriverConfig) -> str:
    return os.path.join(vm_dir(vm, cfg), SNAP_DIR)


def hypervisor_id(one_snapshot_id: str) -> str:
    """OpenNebula's snapshot id (argv) -> ours, which oned stores as HYPERVISOR_ID."""
    if not one_snapshot_id.isdigit() or len(one_snapshot_id) > 10:
        raise VmXmlError(f"snapshot id {one_snapshot_id[:40]!r} is not a number")
    return f"snap-{int(one_snapshot_id)}"


def check_hypervisor_id(value: str) -> str:
    if not HYPERVISOR_ID_RE.fullmatch(value):
        raise VmXmlError(f"snapshot {value[:40]!r} is not one of ours (snap-<n>)")
    return value


def disks_of(vm: Vm, cfg: DriverConfig) -> list:
    """The disks a snapshot holds: every writable disk (not the context, swap or CD-ROMs,
    which OpenNebula regenerates or which cannot change)."""
    from lxcone import storage

    d = vm_dir(vm, cfg)
    return [storage.DiskSpec(disk_id=k.disk_id, source=os.path.join(d, f"disk.{k.disk_id}"))
            for k in vm.disks
            if k.type != "swap" and not k.readonly and k.disk_id != vm.context_disk_id]


def create(vm: Vm, cfg: DriverConfig, freeze, thaw, snap: str) -> None:
    """Freeze (``freeze``/``thaw`` are the container's), flush, copy, thaw. Idempotent: an
    existing snapshot of that id is kept (oned retrying after a timeout)."""
    from lxcone import storage

    sdir = snap_dir(vm, cfg)
    if os.path.exists(os.path.join(sdir, snap, "manifest.json")):
        return
    mountpoints = {m.disk_id: m.mountpoint for m in storage.mounted_disks(str(state_dir(cfg, vm)))}
    disks = disks_of(vm, cfg)
    thawed = freeze()
    try:
        storage.snapshot_create(disks, snap, sdir,
                                {d.disk_id: mountpoints[d.disk_id] for d in disks
                                 if d.disk_id in mountpoints})
    finally:
        if thawed:
            thaw()


def revert_disks(vm: Vm, cfg: DriverConfig, snap: str) -> None:
    """Put the VM's disks back as in ``snap`` (disks must be released). Disks attached after the
    snapshot was taken are not in it and stay as they are."""
    from lxcone import storage
    from lxcone.storage.snapshot import read_manifest

    sdir = snap_dir(vm, cfg)
    held = {e["disk_id"] for e in read_manifest(snap, sdir).get("disks", [])}
    storage.snapshot_revert([d for d in disks_of(vm, cfg) if d.disk_id in held], snap, sdir)


def delete(vm: Vm, cfg: DriverConfig, snap: str) -> None:
    from lxcone import storage

    storage.snapshot_delete(snap, snap_dir(vm, cfg))


def delete_all(vm: Vm, cfg: DriverConfig) -> None:
    """Every snapshot of the VM (oned forgot them: the VM powered off)."""
    try:
        sdir = snap_dir(vm, cfg)
    except VmXmlError:
        return  # no system datastore in the XML: nothing of ours can be there
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(sdir)
