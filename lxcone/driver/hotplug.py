"""Hot changes to a running container's disks: attach_disk/detach_disk, the live context update
(prereconfigure/reconfigure) and resize_disk. Each disk is mounted on the host like a deploy-time
disk (lxcone.storage) and bound into the container's mount namespace (Runtime.mount_into), which
also records it, so a reboot or a restart keeps it.
"""

from __future__ import annotations

import os
import re

from lxcone.driver.config import DriverConfig
from lxcone.driver.disks import CONTEXT_TARGET, mount_one, release_one, state_dir, vm_dir
from lxcone.driver.vmxml import Disk, Vm, VmXmlError
from lxcone.runtime import Runtime


def disk_id_of_path(path: str) -> int:
    """``.../disk.<N>`` (argv of attach_disk, detach_disk, reconfigure) -> N."""
    m = re.fullmatch(r"disk\.(\d{1,9})", os.path.basename(path))
    if not m:
        raise VmXmlError(f"disk path {path[:200]!r} is not .../disk.<id>")
    return int(m.group(1))


def _disk(vm: Vm, disk_id: int, what: str) -> Disk:
    for d in vm.disks:
        if d.disk_id == disk_id:
            return d
    raise VmXmlError(f"{what}: the XML has no DISK with DISK_ID {disk_id}")


def _source(vm: Vm, cfg: DriverConfig, path: str, disk_id: int) -> str:
    """The disk file in the system datastore, as argv gives it; it must be the VM's own."""
    expected = os.path.join(vm_dir(vm, cfg), f"disk.{disk_id}")
    if os.path.normpath(path) != os.path.normpath(expected):
        raise VmXmlError(f"disk path {path[:200]!r} is not this VM's {expected}")
    return expected


def _bound_target(rt: Runtime, name: str, vm: Vm, cfg: DriverConfig, disk_id: int) -> str | None:
    """Where the disk is bound inside the container, from the container's record."""
    mountpoint = str(state_dir(cfg, vm) / str(disk_id))
    return next((b.target for b in rt.spec(name).binds if b.source == mountpoint), None)


def attach_disk(rt: Runtime, name: str, vm: Vm, cfg: DriverConfig, path: str) -> None:
    """Mount DISK[ATTACH=YES] and bind it at /media/<DISK_ID> (or its absolute TARGET).
    Idempotent; on failure nothing stays mounted."""
    disk_id = disk_id_of_path(path)
    disk = _disk(vm, disk_id, "attach_disk")
    if not disk.attach:
        raise VmXmlError(f"attach_disk: DISK {disk_id} is not the one marked ATTACH=YES")
    if disk.type == "swap":
        return  # a container uses the host's swap; nothing to mount (as at deploy)
    source = _source(vm, cfg, path, disk_id)
    if _bound_target(rt, name, vm, cfg, disk_id) is not None:
        return
    bind = mount_one(vm, cfg, disk, source)
    try:
        rt.mount_into(name, bind.source, bind.target, readonly=bind.readonly)
    except BaseException:
        release_one(vm, cfg, disk_id)
        raise


def detach_disk(rt: Runtime, name: str, vm: Vm, cfg: DriverConfig, path: str) -> None:
    """Unmount the disk inside the container (fails, changing nothing, while it is busy), then
    on the host. Idempotent."""
    disk_id = disk_id_of_path(path)
    if disk_id == vm.context_disk_id:
        raise VmXmlError("detach_disk: the context disk is not detached, it is reconfigured")
    target = _bound_target(rt, name, vm, cfg, disk_id)
    if target is not None:
        rt.umount_from(name, target)
    release_one(vm, cfg, disk_id)


def unmount_context(rt: Runtime, name: str, vm: Vm, cfg: DriverConfig) -> None:
    """prereconfigure: /context goes away before the TM rewrites the context disk."""
    if vm.context_disk_id is None:
        return
    rt.umount_from(name, CONTEXT_TARGET)
    release_one(vm, cfg, vm.context_disk_id)


def mount_context(rt: Runtime, name: str, vm: Vm, cfg: DriverConfig, path: str) -> None:
    """reconfigure: the regenerated context disk, read-only at /context again."""
    if vm.context_disk_id is None:
        return
    disk_id = disk_id_of_path(path)
    if disk_id != vm.context_disk_id:
        raise VmXmlError(f"reconfigure: {path[:200]!r} is not the context disk "
                         f"(DISK_ID {vm.context_disk_id})")
    source = _source(vm, cfg, path, disk_id)
    unmount_context(rt, name, vm, cfg)  # idempotent: a retry, or no prereconfigure before
    bind = mount_one(vm, cfg, _disk(vm, disk_id, "reconfigure"), source)
    try:
        rt.mount_into(name, bind.source, bind.target, readonly=True)
    except BaseException:
        release_one(vm, cfg, disk_id)
        raise


def resize_disk(vm: Vm, cfg: DriverConfig, disk_id_arg: str, size_mb_arg: str) -> None:
    """Grow a mounted disk and its filesystem online to SIZE MiB (the TM has grown the image
    already, or we do it)."""
    from lxcone import storage

    if not disk_id_arg.isdigit() or not size_mb_arg.isdigit():
        raise VmXmlError(f"resize_disk: DISK_ID {disk_id_arg[:20]!r} and SIZE "
                         f"{size_mb_arg[:20]!r} must be numbers")
    disk_id, size_mb = int(disk_id_arg), int(size_mb_arg)
    if not 1 <= size_mb <= 1 << 30:
        raise VmXmlError(f"resize_disk: SIZE {size_mb} MiB is out of range")
    _disk(vm, disk_id, "resize_disk")
    storage.grow_disk(disk_id, size_mb << 20, str(state_dir(cfg, vm)))
