"""The OpenNebula driver (issue 4) end to end, against an LXC 5.0 script doing the same, in the
same run, on the same bridge.

Ours: ``remotes/vmm/lxcone/<action>`` exactly as oned's ssh transport runs it (``bash -s``
reading a script whose heredoc pipes the VM XML into the action, single-quoted arguments),
configured like the contract tests' ``driver`` fixture (private run dir, cgroup parent and
datastores dir, the bench netns, ``stop_signal = SIGUSR2``), once with ``agent = false`` and once
with ``agent = true`` (the resident agent; the parameter ids are ``no-agent`` and ``agent``).
The VM: disk.0 a raw ext4 image with the busybox rootfs in ``<datastores>/0/<vm>/``, MEMORY 128,
CPU 0.5, VCPU 1, one NIC (``TARGET one-<vm>-0``, MAC, IP) on the bench bridge.

LXC: the shell scripts in ``peers.LXC_DRIVER_SCRIPTS`` (losetup + mount + ``lxc-start -d``;
``lxc-stop -k`` or a graceful ``lxc-stop`` + umount + ``losetup -d``; a veth created with its
guest end in the container's netns and addressed with ``lxc-attach``; ``ip link del``) through
the same transport, under one ``nsenter --net --mount`` prefix, on a copy of the same image,
with the same limits, id map, MAC and address in the LXC config (written before the run: the
scripts parse nothing).

Every timed round is the whole ``bash -s`` process, spawn to exit; the state it promised
(container running, stopped and released, NIC present or gone) is checked in the round's
teardown, untimed. docs/benchmarks.md describes exactly what each side includes.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import harness
import peers
import pytest
from harness import QUICK, bench, rounds

from lxcone.testing.helpers import sh
from lxcone.testing.vmxml import action_data, disk, nic, vm_xml

R_DEPLOY = rounds(15)
R_STOP = rounds(15)
R_SHUTDOWN = rounds(5, quick=1)  # busybox init takes ~2 s to power off: few rounds
WARMUP_SHUTDOWN = 0 if QUICK else 1
R_NIC = rounds(15)
R_FLOOR = rounds(15)

#: VM ids: ours no-agent 11-14, ours agent 21-24 (+9: a VM that never has a container), LXC 31-34
OURS_BASE = {"no-agent": 10, "agent": 20}
LXC_BASE = 30
DEPLOY, CANCEL, SHUTDOWN, NIC_VM, ABSENT = 1, 2, 3, 4, 9
HOT_NIC_ID = 1


def ip(vm_id: int, hot: bool = False) -> str:
    return f"{harness.SUBNET}.{(100 if hot else 200) + vm_id}"


def mac(vm_id: int, hot: bool = False) -> str:
    return f"02:00:0a:d5:4e:{(100 if hot else 200) + vm_id:02x}"


def vm_doc(vm_id: int, deploy_id: str = "", hot: bool = False) -> bytes:
    """The VM's XML as oned sends it: raw disk 0, NIC 0 on the bench bridge, the limits; with
    ``hot``, NIC 1 marked ATTACH=YES (what attach_nic and detach_nic get)."""
    nics = [nic(vm_id, 0, BRIDGE=harness.BRIDGE, IP=ip(vm_id), MAC=mac(vm_id))]
    ctx = {"ETH0_MASK": "255.255.255.0"}
    if hot:
        nics.append(nic(vm_id, HOT_NIC_ID, BRIDGE=harness.BRIDGE, IP=ip(vm_id, hot=True),
                        MAC=mac(vm_id, hot=True), ATTACH="YES"))
        ctx["ETH1_MASK"] = "255.255.255.0"
    return vm_xml(vm_id, memory=harness.VM_MEMORY_MIB, cpu=harness.VM_CPU, vcpu=harness.VM_VCPU,
                  disks=[disk(0)], nics=nics, context=ctx, deploy_id=deploy_id)


def expected_limits() -> dict[str, str]:
    """What both sides must have in force for MEMORY/CPU/VCPU (docs/driver.md's mapping)."""
    mem = str(harness.VM_MEMORY_MIB << 20)
    return {"memory.limit_in_bytes": mem, "memory.memsw.limit_in_bytes": mem,
            "cpu.cfs_quota_us": str(round(harness.VM_CPU * 100_000)),
            "cpu.cfs_period_us": "100000", "cpu.shares": str(round(harness.VM_CPU * 1024)),
            "cpuset.cpus": "0" if harness.VM_VCPU == 1 else f"0-{harness.VM_VCPU - 1}"}


def lxc_extra() -> str:
    """The LXC config lines that make its container the equivalent of ours: unprivileged with
    the driver's default id map and an idmapped rootfs mount, the same cgroup v1 limits, and
    busybox init on the console pty LXC gives the container (CONSOLE=/dev/console). Without
    that, init keeps the stdio of ``lxc-start -d`` (/dev/null): the askfirst shell reads EOF
    and is respawned every second, and a SIGUSR2 waits for init's 1 s respawn pause, so a
    graceful stop took 2.0-3.0 s instead of 2.0 s."""
    from lxcone.driver.config import DriverConfig

    c = DriverConfig()
    return ("lxc.environment = CONSOLE=/dev/console\n"
            "lxc.rootfs.options = idmap=container\n"
            f"lxc.idmap = u 0 {c.id_map_host_uid} {c.id_map_size}\n"
            f"lxc.idmap = g 0 {c.id_map_host_gid} {c.id_map_size}\n"
            + "".join(f"lxc.cgroup.{k} = {v}\n" for k, v in expected_limits().items()))


def expect(call: peers.SshStream, stdout: bytes | None = b"",
           log: Callable[[], str] | None = None) -> Callable[[], None]:
    """The timed step: run the call; a failure (exit code, unexpected stdout) fails the test,
    with ``log()`` (e.g. the LXC container's log) in the message."""
    def step() -> None:
        p = call.run()
        if p.returncode != 0 or (stdout is not None and p.stdout != stdout):
            raise AssertionError(f"{' '.join(call.argv)} exited {p.returncode}, stdout "
                                 f"{p.stdout!r}, stderr {p.stderr.decode(errors='replace')}"
                                 + (f"\nlog: {log()}" if log else ""))
    return step


def ours_info(drv: harness.Driver) -> dict[str, object]:
    return {"variant": drv.variant, "agent_running": drv.agent_running, "primary": drv.agent}


def how(drv: harness.Driver) -> str:
    if not drv.agent:
        return "agent = false (one Python process per action)"
    if drv.agent_running:
        return "agent = true (the resident agent answered before the run)"
    return ("agent = true, but no agent answered (lxcone.agent missing or not started): the "
            "action ran in its own process")


# -- fixtures -------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def driver_image(workdir: Path, rootfs: str) -> str:
    """The raw ext4 image with the busybox rootfs, built once; every VM gets a copy."""
    from lxcone.testing import images

    images.need("mkfs.ext4")
    return images.fs_image(str(workdir / "driver-base.img"), "ext4", 64, populate=rootfs)


@pytest.fixture(scope="module", params=["no-agent", "agent"])
def drv(request: pytest.FixtureRequest, workdir: Path, bench_id: str, host_netns: str,
        rootfs: str):
    agent = request.param == "agent"
    d = harness.Driver(workdir / f"driver-{request.param}",
                       f"lxcone-bench-{bench_id}-drv{'a' if agent else 'n'}", host_netns, rootfs,
                       agent)
    base = OURS_BASE[request.param]
    try:
        d.warm_up(base + ABSENT, action_data(vm_doc(base + ABSENT, f"one-{base + ABSENT}")))
        yield d
    finally:
        problems = d.cleanup()
        assert not problems, f"lxcone driver ({request.param}) teardown: " + "; ".join(problems)


@pytest.fixture(scope="module")
def lxd(bench_id: str, rootfs: str, spawner: peers.Spawner, host_netns: str):
    """The LXC side, with its own lxcpath, images and mount points in a directory of mode 0711:
    LXC wants every directory above an unprivileged container's rootfs and its lxcpath
    searchable by the container's root (the session workdir is 0700; ours does not need it)."""
    if not shutil.which("lxc-start"):
        pytest.skip("lxc is not installed")
    d = Path(tempfile.mkdtemp(prefix=f"lxcone-bench-{bench_id}-lxcdrv-"))
    d.chmod(0o711)
    try:
        lxc = peers.Lxc(d / "lxcpath", rootfs, spawner)
        x = peers.LxcDriver(lxc, host_netns, d / "vms")
        yield x
        problems = x.cleanup() + lxc.cleanup()
        assert not problems, "LXC driver teardown: " + "; ".join(problems)
    finally:
        peers.rm_tree(d)


class OursVm:
    """One VM of ours with its prepared calls (the script text is built untimed)."""

    def __init__(self, drv: harness.Driver, vm_id: int, image: str) -> None:
        self.drv, self.vm_id, self.name = drv, vm_id, f"one-{vm_id}"
        dep = drv.add_vm(vm_id, image, vm_doc(vm_id))
        host = ("node1", str(vm_id), "node1")
        running = action_data(vm_doc(vm_id, self.name))
        hot = action_data(vm_doc(vm_id, self.name, hot=True))
        self.deploy = drv.call("deploy", dep, *host, stdin=vm_doc(vm_id))
        self.cancel = drv.call("cancel", self.name, *host, stdin=running)
        self.shutdown = drv.call("shutdown", self.name, *host, stdin=running)
        self.hot_if = f"one-{vm_id}-{HOT_NIC_ID}"
        self.attach_nic = drv.call("attach_nic", self.name, mac(vm_id, hot=True),
                                   harness.BRIDGE, "-", "bridge", self.hot_if, str(vm_id),
                                   "node1", stdin=hot)
        self.detach_nic = drv.call("detach_nic", self.name, mac(vm_id, hot=True), str(vm_id),
                                   "node1", stdin=hot)

    def ensure_deployed(self) -> None:
        if self.drv.status(self.vm_id) != "running":
            self.ensure_undeployed()
            self.deploy.check(f"{self.name}\n".encode())
        peers.reap_orphans()

    def ensure_undeployed(self) -> None:
        if self.drv.status(self.vm_id) != "absent" or self.drv.disks_in_use(self.vm_id):
            self.cancel.check()
        peers.reap_orphans()

    def check_running(self) -> None:
        st = self.drv.status(self.vm_id)
        assert st == "running", f"{self.name} is {st} after deploy returned"

    def check_released(self) -> None:
        st, held = self.drv.status(self.vm_id), self.drv.disks_in_use(self.vm_id)
        assert st == "absent" and not held, f"{self.name}: {st}, disks still held: {held}"

    def guest(self, cmd: str) -> str:
        return sh(self.drv.ours.rt, self.name, cmd)  # a failed command fails the check


def lxc_vm(lxd: peers.LxcDriver, bench_id: str, vm_id: int, image: str) -> peers.LxcDriverVm:
    return lxd.define(f"lxb{bench_id}-d{vm_id}", image, bridge=harness.BRIDGE,
                      pair=f"lxbd-{vm_id}-0", mac=mac(vm_id), address=f"{ip(vm_id)}/24",
                      extra=lxc_extra())


def lxc_running(lxd: peers.LxcDriver, vm: peers.LxcDriverVm) -> None:
    st = lxd.lxc.state(vm.name)
    assert st == "RUNNING", f"{vm.name} is {st} after the deploy script returned"


def lxc_released(lxd: peers.LxcDriver, vm: peers.LxcDriverVm) -> None:
    st = lxd.lxc.state(vm.name)
    held = peers.loops_backed_by(str(vm.image)) + lxd.lxc.mounts_under(str(vm.mnt))
    assert st == "STOPPED" and not held, f"{vm.name}: {st}, image still held: {held}"


LXC_WHAT = "LXC 5.0 script through the same ssh stream, under one nsenter --net --mount"


# -- the per-action floor (information) -----------------------------------------------------------

@pytest.mark.benchmark(group="driver-floor")
def test_driver_floor_ssh_true(benchmark):
    call = peers.SshStream(["/bin/true"], [], vm_doc(1))
    bench(benchmark, expect(call, None), None, R_FLOOR, "harness",
          "ssh stream (bash -s, heredoc with the VM XML) into /bin/true: the transport floor "
          "of every row")


@pytest.mark.benchmark(group="driver-floor")
def test_driver_floor_ssh_nsenter_true(benchmark, lxd):
    call = peers.SshStream([*lxd.prefix, "/bin/true"], [], vm_doc(1))
    bench(benchmark, expect(call, None), None, R_FLOOR, "harness",
          "the same into nsenter --net --mount /bin/true: the floor of every LXC row")


@pytest.mark.benchmark(group="driver-floor")
def test_driver_floor_poll_lxcone(benchmark, drv):
    vm_id = OURS_BASE[drv.variant] + ABSENT
    call = drv.call("poll", f"one-{vm_id}", "node1", str(vm_id), "node1",
                    stdin=action_data(vm_doc(vm_id, f"one-{vm_id}")))
    bench(benchmark, expect(call, b"STATE=d\n"), None, R_FLOOR, "lxcone",
          f"poll of a VM without a container (XML parsed, config loaded, state looked up), "
          f"{how(drv)}", **ours_info(drv))


# -- deploy -> container running ------------------------------------------------------------------

@pytest.mark.benchmark(group="driver-deploy")
def test_driver_deploy_lxcone(benchmark, drv, driver_image):
    vm = OursVm(drv, OURS_BASE[drv.variant] + DEPLOY, driver_image)
    try:
        bench(benchmark, expect(vm.deploy, f"{vm.name}\n".encode()), vm.ensure_undeployed,
              R_DEPLOY, "lxcone",
              f"deploy: raw image loop-mounted, unprivileged container (idmapped rootfs), "
              f"veth on the bridge, memory + CPU limits, running at exit; {how(drv)}",
              **ours_info(drv), teardown=vm.check_running)
        limits = peers.cgroup_limits(drv.ours.rt.state(vm.name).pid)
        benchmark.extra_info["limits"] = limits
        assert limits == expected_limits()
        out = vm.guest("ip -o addr show dev eth0; grep ' / ' /proc/mounts")
        assert f"{ip(vm.vm_id)}/24" in out and "ext4" in out, out
    finally:
        vm.ensure_undeployed()


@pytest.mark.benchmark(group="driver-deploy")
def test_driver_deploy_lxc(benchmark, lxd, bench_id, driver_image):
    vm = lxc_vm(lxd, bench_id, LXC_BASE + DEPLOY, driver_image)
    try:
        bench(benchmark, expect(lxd.deploy(vm, stdin=vm_doc(LXC_BASE + DEPLOY)), None,
                                lambda: lxd.log_tail(vm)),
              lambda: lxd.ensure_undeployed(vm), R_DEPLOY, "lxc",
              f"{LXC_WHAT}: losetup -f --show + mount + lxc-start -d (returns once RUNNING), "
              "unprivileged (idmapped rootfs), veth on the bridge, same limits",
              teardown=lambda: lxc_running(lxd, vm))
        limits = peers.cgroup_limits(lxd.lxc.init_pid(vm.name))
        benchmark.extra_info["limits"] = limits
        assert limits == expected_limits()
        out = lxd.exec_out(vm, "/bin/sh", "-c", "ip -o addr show dev eth0; grep ' / ' /proc/mounts")
        assert f"{ip(LXC_BASE + DEPLOY)}/24" in out and "ext4" in out, out
    finally:
        lxd.ensure_undeployed(vm)


# -- cancel (hard stop + release) -----------------------------------------------------------------

@pytest.mark.benchmark(group="driver-cancel")
def test_driver_cancel_lxcone(benchmark, drv, driver_image):
    vm = OursVm(drv, OURS_BASE[drv.variant] + CANCEL, driver_image)
    try:
        bench(benchmark, expect(vm.cancel), vm.ensure_deployed, R_STOP,
              "lxcone", "cancel: SIGKILL, wait until gone, cgroups removed, veth off the bridge "
              "(the kernel deletes it with the netns), record "
              f"deleted, rootfs unmounted and its loop device freed; {how(drv)}",
              **ours_info(drv), teardown=vm.check_released)
    finally:
        vm.ensure_undeployed()


@pytest.mark.benchmark(group="driver-cancel")
def test_driver_cancel_lxc(benchmark, lxd, bench_id, driver_image):
    vm = lxc_vm(lxd, bench_id, LXC_BASE + CANCEL, driver_image)
    try:
        bench(benchmark, expect(lxd.cancel(vm, stdin=vm_doc(LXC_BASE + CANCEL)), None),
              lambda: lxd.ensure_deployed(vm), R_STOP, "lxc",
              f"{LXC_WHAT}: lxc-stop -k + umount + losetup -d",
              teardown=lambda: lxc_released(lxd, vm))
    finally:
        lxd.ensure_undeployed(vm)


# -- shutdown (graceful: busybox init powers off on SIGUSR2) --------------------------------------

@pytest.mark.benchmark(group="driver-shutdown")
def test_driver_shutdown_lxcone(benchmark, drv, driver_image):
    vm = OursVm(drv, OURS_BASE[drv.variant] + SHUTDOWN, driver_image)
    try:
        bench(benchmark, expect(vm.shutdown), vm.ensure_deployed,
              R_SHUTDOWN, "lxcone", "shutdown: SIGUSR2 to the guest's init, wait until it has "
              f"powered off, then release as cancel does; {how(drv)}", warmup=WARMUP_SHUTDOWN,
              **ours_info(drv), teardown=vm.check_released)
    finally:
        vm.ensure_undeployed()


@pytest.mark.benchmark(group="driver-shutdown")
def test_driver_shutdown_lxc(benchmark, lxd, bench_id, driver_image):
    vm = lxc_vm(lxd, bench_id, LXC_BASE + SHUTDOWN, driver_image)
    try:
        bench(benchmark, expect(lxd.shutdown(vm, harness.SHUTDOWN_TIMEOUT_S,
                                             stdin=vm_doc(LXC_BASE + SHUTDOWN)), None),
              lambda: lxd.ensure_deployed(vm), R_SHUTDOWN, "lxc",
              f"{LXC_WHAT}: lxc-stop --nokill (lxc.signal.halt = SIGUSR2, waits until stopped) "
              "+ umount + losetup -d", warmup=WARMUP_SHUTDOWN,
              teardown=lambda: lxc_released(lxd, vm))
    finally:
        lxd.ensure_undeployed(vm)


# -- hot NIC attach / detach ----------------------------------------------------------------------

def _ours_nic_present(vm: OursVm) -> bool:
    return vm.hot_if in peers.netns_links(vm.drv.ours.host_netns)


def _ours_check_attached(vm: OursVm) -> None:
    out = vm.guest("ip -o addr show dev eth1; ip -o link show dev eth1")
    assert f"{ip(vm.vm_id, hot=True)}/24" in out and mac(vm.vm_id, hot=True) in out, out
    assert "state UP" in out or ",UP" in out, out
    assert _ours_nic_present(vm), f"{vm.hot_if} is not in the bench netns"


def _ours_check_detached(vm: OursVm) -> None:
    assert "eth1" not in vm.guest("ls /sys/class/net"), "eth1 still in the guest"
    assert not _ours_nic_present(vm), f"{vm.hot_if} still in the bench netns"


@pytest.mark.benchmark(group="driver-attach-nic")
def test_driver_attach_nic_lxcone(benchmark, drv, driver_image):
    vm = OursVm(drv, OURS_BASE[drv.variant] + NIC_VM, driver_image)

    def setup() -> None:
        vm.ensure_deployed()
        if _ours_nic_present(vm):
            vm.detach_nic.check()

    try:
        bench(benchmark, expect(vm.attach_nic), setup, R_NIC,
              "lxcone", "attach_nic: veth TARGET on the bridge, guest eth1 with MAC, address, "
              f"up; {how(drv)}", **ours_info(drv), teardown=lambda: _ours_check_attached(vm))
    finally:
        vm.ensure_undeployed()


@pytest.mark.benchmark(group="driver-detach-nic")
def test_driver_detach_nic_lxcone(benchmark, drv, driver_image):
    vm = OursVm(drv, OURS_BASE[drv.variant] + NIC_VM, driver_image)

    def setup() -> None:
        vm.ensure_deployed()
        if not _ours_nic_present(vm):
            vm.attach_nic.check()

    try:
        bench(benchmark, expect(vm.detach_nic), setup, R_NIC,
              "lxcone", f"detach_nic (by MAC): the veth removed; {how(drv)}", **ours_info(drv),
              teardown=lambda: _ours_check_detached(vm))
    finally:
        vm.ensure_undeployed()


def _lxc_nic(lxd: peers.LxcDriver, bench_id: str, image: str):
    vm_id = LXC_BASE + NIC_VM
    vm = lxd.vms.get(f"lxb{bench_id}-d{vm_id}") or lxc_vm(lxd, bench_id, vm_id, image)
    host_if = f"lxbd-{vm_id}-1"
    xml = action_data(vm_doc(vm_id, f"one-{vm_id}", hot=True))
    attach = lxd.attach_nic(vm, host_if, mac(vm_id, hot=True), harness.BRIDGE, "eth1",
                            f"{ip(vm_id, hot=True)}/24", stdin=xml)
    detach = lxd.detach_nic(host_if, stdin=xml)

    def present() -> bool:
        return host_if in peers.netns_links(lxd.netns)

    def check_attached() -> None:
        out = lxd.exec_out(vm, "/bin/sh", "-c", "ip -o addr show dev eth1; ip -o link show eth1")
        assert f"{ip(vm_id, hot=True)}/24" in out and mac(vm_id, hot=True) in out, out
        assert "state UP" in out or ",UP" in out, out
        assert present(), f"{host_if} is not in the bench netns"

    def check_detached() -> None:
        assert "eth1" not in lxd.exec_out(vm, "ls", "/sys/class/net"), "eth1 still in the guest"
        assert not present(), f"{host_if} still in the bench netns"

    return vm, attach, detach, present, check_attached, check_detached


@pytest.mark.benchmark(group="driver-attach-nic")
def test_driver_attach_nic_lxc(benchmark, lxd, bench_id, driver_image):
    vm, attach, detach, present, check_attached, _ = _lxc_nic(lxd, bench_id, driver_image)

    def setup() -> None:
        lxd.ensure_deployed(vm)
        if present():
            detach.check()

    try:
        bench(benchmark, expect(attach, None), setup, R_NIC, "lxc",
              f"{LXC_WHAT}: lxc-info -p + ip link add (veth: host end up on the bridge, "
              "guest end eth1 with the MAC created in the container's netns) + lxc-attach "
              "(ip addr add, ip link set up)", teardown=check_attached)
    finally:
        if present():
            detach.check()
        lxd.ensure_undeployed(vm)


@pytest.mark.benchmark(group="driver-detach-nic")
def test_driver_detach_nic_lxc(benchmark, lxd, bench_id, driver_image):
    vm, attach, detach, present, _, check_detached = _lxc_nic(lxd, bench_id, driver_image)

    def setup() -> None:
        lxd.ensure_deployed(vm)
        if not present():
            attach.check()

    try:
        bench(benchmark, expect(detach, None), setup, R_NIC, "lxc",
              f"{LXC_WHAT}: ip link del of the host end", teardown=check_detached)
    finally:
        if present():
            detach.check()
        lxd.ensure_undeployed(vm)
