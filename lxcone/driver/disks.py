"""The VM's disks on the host: mounted under <run_dir>/<deploy id>.disks/, released on stop.

The root disk becomes the container's rootfs, the others bind mounts at /media/<DISK_ID> (or the
absolute TARGET), the context disk read-only at /context. Swap disks are skipped: a container
shares the host's kernel and its swap.
"""

from __future__ import annotations

import contextlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lxcone.driver.config import DriverConfig
from lxcone.driver.vmxml import Disk, Vm, VmXmlError
from lxcone.runtime.spec import Bind

CONTEXT_TARGET = "/context"


@dataclass(frozen=True)
class VmDisks:
    rootfs: str
    binds: tuple[Bind, ...]


def vm_dir(vm: Vm, cfg: DriverConfig, deployment_file: str | None = None) -> str:
    """<datastores>/<system ds>/<vm id>: from deploy's $1 when given (OpenNebula's own path,
    e.g. /var/lib/one//datastores/0/12/deployment.0), else from the config and the history."""
    if deployment_file is not None:
        d = os.path.dirname(os.path.normpath(deployment_file))
        if not re.fullmatch(r"deployment\.\d+", os.path.basename(deployment_file)) or \
                os.path.basename(d) != str(vm.vm_id):
            raise VmXmlError(f"deployment file {deployment_file[:200]!r} is not "
                             f".../{vm.vm_id}/deployment.<n>")
        return d
    if vm.sys_ds_id is None:
        raise VmXmlError("the VM has no HISTORY_RECORDS/HISTORY/DS_ID (system datastore)")
    return os.path.join(cfg.datastores, str(vm.sys_ds_id), str(vm.vm_id))


def state_dir(cfg: DriverConfig, vm: Vm) -> Path:
    # Beside the runtime's record, not inside it: the record is deleted on shutdown, the disk
    # records must survive until the disks are released.
    return Path(cfg.run_dir) / f"{vm.deploy_id}.disks"


def mount_vm_disks(vm: Vm, cfg: DriverConfig, directory: str) -> VmDisks:
    """Mount every disk (idempotent); on failure release what was mounted and raise."""
    root = vm.root_disk
    if root is None:
        raise VmXmlError("the VM has no disk to use as its root filesystem")
    binds: list[Bind] = []
    rootfs = None
    try:
        for disk in vm.disks:
            if disk.type == "swap":
                continue
            bind = mount_one(vm, cfg, disk, os.path.join(directory, f"disk.{disk.disk_id}"))
            if disk is root:
                rootfs = bind.source
            else:
                binds.append(bind)
    except BaseException:
        release_vm_disks(vm, cfg)
        raise
    assert rootfs is not None
    return VmDisks(rootfs, tuple(binds))


def mount_one(vm: Vm, cfg: DriverConfig, disk: Disk, source: str) -> Bind:
    """Mount one disk of the VM on the host (idempotent); the bind that puts it in the guest."""
    from lxcone import storage

    sdir = state_dir(cfg, vm)
    sdir.mkdir(parents=True, exist_ok=True, mode=0o700)
    is_context = disk.disk_id == vm.context_disk_id
    spec = storage.DiskSpec(disk_id=disk.disk_id, source=source, format="auto",
                            readonly=disk.readonly or is_context)
    mounted = storage.mount_disk(spec, str(sdir / str(disk.disk_id)), str(sdir))
    return Bind(mounted.mountpoint, CONTEXT_TARGET if is_context else disk.mount_target,
                readonly=spec.readonly)


def release_one(vm: Vm, cfg: DriverConfig, disk_id: int) -> None:
    """Unmount one disk from the host (idempotent); its mountpoint goes too."""
    from lxcone import storage

    sdir = state_dir(cfg, vm)
    if not sdir.exists():
        return
    storage.unmount_disk(disk_id, str(sdir))
    with contextlib.suppress(FileNotFoundError):
        (sdir / str(disk_id)).rmdir()


def release_vm_disks(vm: Vm, cfg: DriverConfig, lazy: bool = False) -> None:
    """Unmount everything mount_vm_disks did for this VM (idempotent)."""
    from lxcone import storage

    sdir = state_dir(cfg, vm)
    if not sdir.exists():
        return
    for mounted in storage.mounted_disks(str(sdir)):
        storage.unmount_disk(mounted.disk_id, str(sdir), lazy=lazy)
    for leftover in sdir.iterdir():
        if leftover.is_dir():
            leftover.rmdir()  # the mountpoints, empty now
    sdir.rmdir()
