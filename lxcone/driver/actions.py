"""One function per VMM action, called with the parsed argv and the VM from stdin.

Argv positions follow OpenNebula's one_vmm_exec (protocol doc §3 and addendum A.2); the MAD
appends ``<vm_id> <host>`` to every action. Each function returns what the action prints on
stdout ("" for most) and raises on failure; ``main`` turns errors into ERROR lines and exit codes.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace

from lxcone.driver.config import DriverConfig
from lxcone.driver.vmxml import DEPLOY_ID_RE, Vm
from lxcone.runtime import (
    FROZEN,
    RUNNING,
    ContainerNotFound,
    Runtime,
)


class ActionError(OSError):
    """An action that cannot do what OpenNebula asked; the message is the VM log line."""


class NotSupported(ActionError):
    def __init__(self, action: str, why: str) -> None:
        super().__init__(errno.EOPNOTSUPP, f"{action}: operation not supported: {why}")


@dataclass(frozen=True)
class Call:
    action: str
    args: tuple[str, ...]   # the action's own arguments, without the appended vm_id and host
    vm_id: int
    host: str
    vm: Vm | None           # from stdin, when the action gets one
    cfg: DriverConfig

    @property
    def runtime(self) -> Runtime:
        return Runtime(self.cfg.run_dir, self.cfg.cgroup_parent, self.cfg.host_netns)


# action -> number of its own positional arguments (before "<vm_id> <host>")
ARITY: dict[str, int] = {
    "deploy": 2, "shutdown": 2, "cancel": 2, "reboot": 2, "reset": 2, "poll": 2,
    "save": 3, "restore": 3, "migrate": 3, "attach_disk": 5, "detach_disk": 4,
    "attach_nic": 6, "detach_nic": 2, "prereconfigure": 2, "reconfigure": 3,
    "snapshot_create": 2, "snapshot_revert": 2, "snapshot_delete": 2, "resize_disk": 5,
    "resize": 1,
}


def deploy_id_arg(call: Call, value: str) -> str:
    """The deploy id an action was given must be ours and match the VM id OpenNebula sent."""
    m = DEPLOY_ID_RE.fullmatch(value)
    if not m or int(m.group(1)) != call.vm_id:
        raise ActionError(errno.EINVAL, f"{call.action}: deploy id {value[:40]!r} is not "
                                        f"one-{call.vm_id}")
    return value


def deploy(call: Call) -> str:
    """Create and start the container from the VM's disks; print the deploy id. Also serves
    resume from poweroff and undeploy (same VM, disks already in the system datastore).
    Idempotent: a running container is left alone; on failure nothing stays mounted or plugged."""
    from lxcone.driver import disks

    vm = _need_vm(call)
    rt = call.runtime
    with contextlib.suppress(ContainerNotFound):
        status = rt.state(vm.deploy_id).status
        if status in (RUNNING, FROZEN):
            return vm.deploy_id
        rt.delete(vm.deploy_id)  # a stopped leftover: its disks and NICs may have changed
    _start(call, vm, disks.vm_dir(vm, call.cfg, call.args[0]))
    return vm.deploy_id


def _start(call: Call, vm: Vm, directory: str) -> None:
    """Mount the disks, write the guest's DNS settings, run the container; on failure release
    everything."""
    from lxcone.driver import disks, guestfs
    from lxcone.driver.convert import container_spec, resolv_conf

    mounted = disks.mount_vm_disks(vm, call.cfg, directory)
    try:
        spec = container_spec(vm, call.cfg, mounted.rootfs, mounted.binds,
                              host_cpus=os.cpu_count() or 1)
        resolv = resolv_conf(vm)
        if resolv is not None:
            guestfs.write_file(mounted.rootfs, "etc/resolv.conf", resolv.encode())
        call.runtime.run(spec)
    except BaseException:
        disks.release_vm_disks(vm, call.cfg)
        raise


def _need_vm(call: Call) -> Vm:
    if call.vm is None:
        raise ActionError(errno.EINVAL, f"{call.action}: no VM XML on stdin")
    return call.vm


def _stopped_release(call: Call, name: str) -> None:
    """After a stop driven by OpenNebula: forget the container and release its disks (the TM
    moves or deletes them next)."""
    from lxcone.driver import disks, snapshots

    with contextlib.suppress(ContainerNotFound):
        call.runtime.delete(name)
    if call.vm is not None:
        disks.release_vm_disks(call.vm, call.cfg)
        snapshots.delete_all(call.vm, call.cfg)


def shutdown(call: Call) -> str:
    """Graceful power-off; returns once stopped, fails after shutdown_timeout_s (OpenNebula
    then offers cancel). Idempotent: an already stopped or unknown container is success."""
    name = deploy_id_arg(call, call.args[0])
    rt = call.runtime
    try:
        state = rt.state(name)
    except ContainerNotFound:
        _stopped_release(call, name)
        return ""
    if state.status not in (RUNNING, FROZEN):
        _stopped_release(call, name)
        return ""
    s = rt.stop(name, timeout=call.cfg.shutdown_timeout_s, kill_after=False)
    if s.status in (RUNNING, FROZEN):
        raise ActionError(errno.ETIMEDOUT, f"shutdown: {name} did not power off within "
                                           f"{call.cfg.shutdown_timeout_s:g} s (try cancel)")
    _stopped_release(call, name)
    return ""


def cancel(call: Call) -> str:
    """Hard stop. Idempotent."""
    name = deploy_id_arg(call, call.args[0])
    with contextlib.suppress(ContainerNotFound):
        call.runtime.kill(name)
    _stopped_release(call, name)
    return ""


def reboot(call: Call) -> str:
    """Graceful restart: the guest powers off, then the same container starts again."""
    name = deploy_id_arg(call, call.args[0])
    rt = call.runtime
    s = rt.stop(name, timeout=call.cfg.shutdown_timeout_s, kill_after=False)
    if s.status in (RUNNING, FROZEN):
        raise ActionError(errno.ETIMEDOUT, f"reboot: {name} did not power off within "
                                           f"{call.cfg.shutdown_timeout_s:g} s (try reset)")
    rt.start(name)
    return ""


def reset(call: Call) -> str:
    """Hard restart: kill, then start the same container."""
    name = deploy_id_arg(call, call.args[0])
    rt = call.runtime
    rt.kill(name)
    rt.start(name)
    return ""


def poll(call: Call) -> str:
    """Legacy (pre-5.12) single-VM poll: STATE=a|d plus what monitoring knows."""
    name = deploy_id_arg(call, call.args[0])
    try:
        s = call.runtime.state(name)
    except ContainerNotFound:
        return "STATE=d"
    return {RUNNING: "STATE=a", FROZEN: "STATE=p"}.get(s.status, "STATE=d")


def attach_nic(call: Call) -> str:
    """Hot-plug NIC[ATTACH='YES'] into the running container, configured (address, gateway,
    MTU) like a deploy-time NIC. argv: deploy_id MAC BRIDGE MODEL VN_MAD TARGET."""
    from lxcone.driver.convert import nic_spec

    name = deploy_id_arg(call, call.args[0])
    vm = _need_vm(call)
    mac, bridge, target = call.args[1].lower(), call.args[2], call.args[5]
    nic = next((n for n in vm.nics if n.attach), None)
    if nic is None:
        raise ActionError(errno.EINVAL, "attach_nic: the XML has no NIC with ATTACH=YES")
    if (nic.mac, nic.bridge, nic.target) != (mac, bridge, target):
        raise ActionError(errno.EINVAL, f"attach_nic: argv (MAC {mac}, BRIDGE {bridge}, TARGET "
                                        f"{target}) does not match NIC {nic.nic_id} of the XML")
    call.runtime.add_nic(name, nic_spec(vm, nic))
    _refresh_resolv_conf(call, name, vm)
    return ""


def _refresh_resolv_conf(call: Call, name: str, vm: Vm) -> None:
    """The guest's resolv.conf after a change of NICs or context, through the host-side mount
    of its rootfs (the same file the guest sees)."""
    from lxcone.driver import guestfs
    from lxcone.driver.convert import resolv_conf

    text = resolv_conf(vm)
    if text is not None:
        guestfs.write_file(call.runtime.spec(name).rootfs, "etc/resolv.conf", text.encode())


def detach_nic(call: Call) -> str:
    """Unplug the NIC with this MAC. Idempotent: an unknown MAC is already detached."""
    name = deploy_id_arg(call, call.args[0])
    mac = call.args[1].lower()
    rt = call.runtime
    for nic in rt.spec(name).nics:
        if (nic.mac or "").lower() == mac:
            rt.remove_nic(name, nic.host_name)
    if call.vm is not None:
        # the XML still lists the NIC being detached (ATTACH=YES): its DNS servers go with it
        _refresh_resolv_conf(call, name, replace(call.vm, nics=tuple(
            n for n in call.vm.nics if n.mac != mac)))
    return ""


def resize(call: Call) -> str:
    """Live CPU/VCPU/MEMORY resize (VM_MAD LIVE_RESIZE="yes"): the cgroup limits change in
    place. Memory below what the container uses and cannot reclaim fails (EBUSY), with the
    old limits kept."""
    from lxcone.driver.convert import resize_resources

    name = deploy_id_arg(call, call.args[0])
    vm = _need_vm(call)
    call.runtime.update(name, resize_resources(vm, call.cfg, os.cpu_count() or 1))
    return ""


def snapshot_create(call: Call) -> str:
    """Snapshot the VM's writable disks with the container frozen; print our snapshot id
    (oned stores it as HYPERVISOR_ID and gives it back to revert and delete)."""
    from lxcone.driver import snapshots

    name = deploy_id_arg(call, call.args[0])
    vm = _need_vm(call)
    snap = snapshots.hypervisor_id(call.args[1])
    rt = call.runtime

    def freeze() -> bool:
        if rt.state(name).status == FROZEN:
            return False  # frozen by someone else: leave it so
        rt.freeze(name)
        return True

    snapshots.create(vm, call.cfg, freeze, lambda: rt.thaw(name), snap)
    return snap


def snapshot_revert(call: Call) -> str:
    """Stop the container, put its disks back as in the snapshot, start it again. If the
    revert fails, the container is started on its current disks before the error is
    reported: the VM stays RUNNING, as oned believes it is."""
    from lxcone.driver import disks, snapshots

    name = deploy_id_arg(call, call.args[0])
    vm = _need_vm(call)
    snap = snapshots.check_hypervisor_id(call.args[1])
    rt = call.runtime
    with contextlib.suppress(ContainerNotFound):
        rt.delete(name, force=True)
    disks.release_vm_disks(vm, call.cfg)
    try:
        snapshots.revert_disks(vm, call.cfg, snap)
    except (OSError, ValueError) as exc:
        try:
            _start(call, vm, disks.vm_dir(vm, call.cfg))
        except (OSError, ValueError) as again:
            raise ActionError(getattr(exc, "errno", None) or errno.EIO,
                              f"snapshot_revert: {exc}; and {name} could not start again on "
                              f"its current disks: {again}") from exc
        raise
    _start(call, vm, disks.vm_dir(vm, call.cfg))
    return ""


def snapshot_delete(call: Call) -> str:
    """Remove one snapshot; an unknown one is already deleted."""
    from lxcone.driver import snapshots

    deploy_id_arg(call, call.args[0])
    snapshots.delete(_need_vm(call), call.cfg, snapshots.check_hypervisor_id(call.args[1]))
    return ""


def attach_disk(call: Call) -> str:
    """Hot-plug DISK[ATTACH=YES]: mounted at /media/<DISK_ID> (or its absolute TARGET).
    argv: deploy_id DISK_TARGET_PATH TARGET TARGET_INDEX DRV_ACTION(base64)."""
    from lxcone.driver import hotplug

    name = deploy_id_arg(call, call.args[0])
    hotplug.attach_disk(call.runtime, name, _need_vm(call), call.cfg, call.args[1])
    return ""


def detach_disk(call: Call) -> str:
    """Unplug a disk; fails cleanly (nothing changed) while a guest process uses it.
    argv: deploy_id DISK_TARGET_PATH TARGET TARGET_INDEX."""
    from lxcone.driver import hotplug

    name = deploy_id_arg(call, call.args[0])
    hotplug.detach_disk(call.runtime, name, _need_vm(call), call.cfg, call.args[1])
    return ""


def prereconfigure(call: Call) -> str:
    """First half of a live context update (after attach/detach_nic, or updateconf): /context
    is unmounted so that the TM can rewrite the context disk. argv: deploy_id CONTEXT_TARGET."""
    from lxcone.driver import hotplug

    name = deploy_id_arg(call, call.args[0])
    hotplug.unmount_context(call.runtime, name, _need_vm(call), call.cfg)
    return ""


def reconfigure(call: Call) -> str:
    """Second half: the new context disk at /context, and the VM's DNS settings applied again.
    argv: deploy_id CONTEXT_TARGET DISK_TARGET_PATH."""
    from lxcone.driver import hotplug

    name = deploy_id_arg(call, call.args[0])
    vm = _need_vm(call)
    hotplug.mount_context(call.runtime, name, vm, call.cfg, call.args[2])
    _refresh_resolv_conf(call, name, vm)
    return ""


def resize_disk(call: Call) -> str:
    """Grow a disk and its filesystem while the container runs.
    argv: deploy_id DISK_ID SIZE(MiB) DRV_ACTION(base64) host."""
    from lxcone.driver import hotplug

    deploy_id_arg(call, call.args[0])
    hotplug.resize_disk(_need_vm(call), call.cfg, call.args[1], call.args[2])
    return ""


def _unsupported(why: str) -> Callable[[Call], str]:
    def action(call: Call) -> str:
        raise NotSupported(call.action, why)

    return action


ACTIONS: dict[str, Callable[[Call], str]] = {
    "deploy": deploy, "shutdown": shutdown, "cancel": cancel, "reboot": reboot, "reset": reset,
    "poll": poll, "attach_nic": attach_nic, "detach_nic": detach_nic, "resize": resize,
    "snapshot_create": snapshot_create, "snapshot_revert": snapshot_revert,
    "snapshot_delete": snapshot_delete, "attach_disk": attach_disk, "detach_disk": detach_disk,
    "prereconfigure": prereconfigure, "reconfigure": reconfigure, "resize_disk": resize_disk,
    # CRIU >= 4.1 is needed on these kernels (Debian 12 ships 3.17): a later issue.
    "save": _unsupported("checkpoint needs CRIU >= 4.1, not implemented yet"),
    "restore": _unsupported("checkpoint needs CRIU >= 4.1, not implemented yet"),
    "migrate": _unsupported("live migration needs CRIU >= 4.1, not implemented yet; "
                            "use a cold migration (poweroff, migrate, resume)"),
}


def split_argv(action: str, argv: Sequence[str]) -> tuple[tuple[str, ...], int, str]:
    """(own args, vm_id, host) from an action's argv; ValueError naming what is wrong."""
    n = ARITY.get(action)
    if n is None:
        raise ValueError(f"unknown action {action!r}")
    if len(argv) != n + 2:
        raise ValueError(f"{action} takes {n} arguments plus <vm_id> <host>, got {len(argv)}")
    own, vm_id, host = tuple(argv[:n]), argv[n], argv[n + 1]
    if not vm_id.isdigit() or int(vm_id) > 2**31 - 1:
        raise ValueError(f"{action}: vm id {vm_id[:40]!r} is not a number")
    return own, int(vm_id), host
