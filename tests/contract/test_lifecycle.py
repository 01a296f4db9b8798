"""Whole VM lifecycles as oned drives them, through remotes/vmm/lxcone: the actions of issue 4
one after the other on one container, with the guest checked between steps."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest

from contract.oned import loops_backed_by, mounts_under, remotes_command, ssh_stream
from lxcone.testing.fixtures import needs_root
from lxcone.testing.vmxml import action_data, disk, nic, vm_xml

pytestmark = [pytest.mark.root, needs_root]


class Vm:
    """One VM of the test's datastore, driven like oned: an action = argv + XML on stdin."""

    def __init__(self, env, datastore, runtime, **xml_kw):
        self.env, self.datastore, self.runtime = env, datastore, runtime
        self.xml_kw = {"nics": [], "disks": [disk(0), disk(2, TARGET="/srv/data")], **xml_kw}

    def xml(self, **changes) -> bytes:
        return action_data(vm_xml(12, deploy_id="one-12", **{**self.xml_kw, **changes}))

    def act(self, action, *args, transport=ssh_stream, xml=None, ok=True):
        p = transport(self.env, action, *args, "12", "node1", stdin=xml or self.xml())
        if ok:
            assert (p.returncode, p.stderr) == (0, b""), (action, p.stderr)
        return p

    def deploy(self):
        p = self.act("deploy", str(self.datastore / "deployment.0"), "node1",
                     xml=vm_xml(12, **self.xml_kw))
        assert p.stdout == b"one-12\n"

    def sh(self, cmd: str) -> str:
        r = self.runtime.exec("one-12", ["/bin/sh", "-c", cmd])
        assert r.returncode == 0, r.stderr
        return r.stdout.decode()


@pytest.fixture
def vm(driver, runtime, datastore):
    env, cfg = driver
    cfg.write_text(cfg.read_text() + f'datastores = "{datastore.parent.parent}"\n')
    v = Vm(env, datastore, runtime)
    yield v
    v.act("cancel", "one-12", "node1", ok=False)
    assert loops_backed_by(str(datastore)) == [] and mounts_under(str(datastore)) == []
    assert not (datastore / "lxcone-snapshots").exists(), "snapshots outlived the VM"


def test_snapshot_create_revert_delete(vm, runtime):
    vm.deploy()
    vm.sh("echo before > /root/state; echo before > /srv/data/state")
    p = vm.act("snapshot_create", "one-12", "0", transport=remotes_command)
    assert p.stdout == b"snap-0\n"
    assert runtime.state("one-12").status == "running"  # thawed again
    # a retry of the same snapshot (oned after a timeout) is the same snapshot
    assert vm.act("snapshot_create", "one-12", "0").stdout == b"snap-0\n"
    vm.sh("echo after > /root/state; echo after > /srv/data/state; touch /root/new")
    old_init = runtime.state("one-12").pid
    vm.act("snapshot_revert", "one-12", "snap-0")
    s = runtime.state("one-12")
    assert s.status == "running" and s.pid != old_init
    assert vm.sh("cat /root/state /srv/data/state; ls /root") == "before\nbefore\nstate\n"
    assert vm.act("snapshot_create", "one-12", "1").stdout == b"snap-1\n"
    vm.act("snapshot_delete", "one-12", "snap-0", transport=remotes_command)
    vm.act("snapshot_delete", "one-12", "snap-0")  # idempotent
    p = vm.act("snapshot_revert", "one-12", "snap-0", ok=False)
    assert p.returncode == 1 and b"no such snapshot" in p.stderr
    assert runtime.state("one-12").status == "running"  # a failed revert leaves it running
    assert vm.sh("cat /root/state") == "before\n"
    # power off: oned forgets system snapshots (KEEP_SNAPSHOTS=no), so do we
    vm.act("shutdown", "one-12", "node1")
    assert not (vm.datastore / "lxcone-snapshots").exists()


@pytest.mark.parametrize("bad", ["../x", "snap-1/..", "x", "snap-", "snap-1;id"])
def test_snapshot_ids_that_are_not_ours_are_refused(vm, bad):
    vm.deploy()
    p = vm.act("snapshot_delete", "one-12", bad, ok=False)
    assert p.returncode == 1 and p.stderr.startswith(b"ERROR: snapshot_delete:"), p.stderr
    p = vm.act("snapshot_create", "one-12", bad, ok=False)
    assert p.returncode == 1 and b"is not a number" in p.stderr


def test_live_resize_changes_the_limits(vm, runtime):
    vm.xml_kw.update(memory=128, cpu=0.5, vcpu=1)
    vm.deploy()
    p = vm.act("resize", "one-12", transport=remotes_command,
               xml=vm.xml(memory=256, cpu=1.5, vcpu=2))
    assert p.stdout == b""
    st = runtime.stats("one-12")
    assert st.memory_limit_bytes == 256 << 20
    assert cgroup_file(runtime, "cpu", "cpu.cfs_quota_us", "cpu.max") in ("150000",
                                                                            "150000 100000")
    assert cgroup_file(runtime, "cpuset", "cpuset.cpus", "cpuset.cpus") == (
        "0-1" if (os.cpu_count() or 1) >= 2 else "0")
    assert runtime.spec("one-12").resources.memory_limit_bytes == 256 << 20
    # a later reboot keeps the new limits
    vm.act("reboot", "one-12", "node1")
    assert runtime.stats("one-12").memory_limit_bytes == 256 << 20
    # shrinking below what the guest holds (tmpfs pages cannot be reclaimed without swap)
    vm.sh("mkdir -p /run/big && mount -t tmpfs -o size=100m tmpfs /run/big && "
          "dd if=/dev/zero of=/run/big/fill bs=1M count=60 2>/dev/null")
    p = vm.act("resize", "one-12", xml=vm.xml(memory=16, cpu=1, vcpu=1), ok=False)
    assert p.returncode == 1 and p.stderr.startswith(b"ERROR: resize:"), p.stderr
    assert runtime.stats("one-12").memory_limit_bytes == 256 << 20
    assert runtime.spec("one-12").resources.memory_limit_bytes == 256 << 20


def cgroup_file(runtime, controller: str, v1: str, v2: str) -> str:
    import json

    paths = json.loads((Path(runtime.run_dir) / "one-12" / "state.json").read_text())[
        "cgroup_paths"]
    d = paths.get(controller) or paths.get("")  # v1 per controller, else the v2 directory
    f = Path(d) / (v1 if controller in paths else v2)
    return f.read_text().strip()


def test_dns_from_the_vm_reaches_resolv_conf(vm, runtime, host_netns):
    import subprocess

    subprocess.run(["nsenter", f"--net={host_netns}", "ip", "link", "add", "br0", "type",
                    "bridge"], check=True)
    vm.xml_kw.update(nics=[nic(12, 0, DNS="10.0.0.53")],
                     context={"SEARCH_DOMAIN": "example.org", "ETH0_DNS": "10.0.0.54"})
    vm.deploy()
    assert vm.sh("cat /etc/resolv.conf").splitlines()[1:] == [
        "search example.org", "nameserver 10.0.0.53", "nameserver 10.0.0.54"]
    new = nic(12, 1, ATTACH="YES", DNS="10.1.0.53")
    xml = vm.xml(nics=[*vm.xml_kw["nics"], new])
    vm.act("attach_nic", "one-12", new["MAC"], "br0", "-", "bridge", "one-12-1", xml=xml)
    assert "nameserver 10.1.0.53" in vm.sh("cat /etc/resolv.conf")
    vm.act("detach_nic", "one-12", new["MAC"], xml=xml)
    assert "10.1.0.53" not in vm.sh("cat /etc/resolv.conf")


def data_disk(datastore, disk_id: int, text: str) -> str:
    """What the TM leaves for a hot attach: a raw ext4 image at <vm dir>/disk.<id>."""
    import tempfile

    from lxcone.testing import images

    path = datastore / f"disk.{disk_id}"
    with tempfile.TemporaryDirectory() as content:
        (Path(content) / "hello.txt").write_text(text)
        images.fs_image(str(path), "ext4", 16, populate=content)
    return str(path)


DRV_ACTION = base64.b64encode(b"<VMM_DRIVER_ACTION_DATA/>").decode()


def test_hot_disk_attach_detach_and_busy_detach(vm, runtime):
    vm.deploy()
    path = data_disk(vm.datastore, 3, "from the datastore\n")
    xml = vm.xml(disks=[*vm.xml_kw["disks"], disk(3, ATTACH="YES")])
    vm.act("attach_disk", "one-12", path, "sdd", "3", DRV_ACTION, xml=xml)
    assert vm.sh("cat /media/3/hello.txt") == "from the datastore\n"
    vm.act("attach_disk", "one-12", path, "sdd", "3", DRV_ACTION, xml=xml)  # idempotent
    vm.sh("echo written > /media/3/new.txt")
    # a guest process inside the disk: detach must fail and change nothing
    busy = runtime.spawn("one-12", ["/bin/sh", "-c", "cd /media/3 && exec sleep 600"])
    try:
        p = vm.act("detach_disk", "one-12", path, "sdd", "3", xml=xml, ok=False)
        assert p.returncode == 1 and b"busy" in p.stderr, p.stderr
        assert vm.sh("cat /media/3/new.txt") == "written\n"
    finally:
        os.kill(busy, 9)
        runtime.wait(busy)
    vm.act("detach_disk", "one-12", path, "sdd", "3", xml=xml)
    assert "/media/3" not in vm.sh("cat /proc/mounts")
    assert loops_backed_by(path) == []
    vm.act("detach_disk", "one-12", path, "sdd", "3", xml=xml)  # idempotent
    # what the guest wrote is in the image
    vm.act("attach_disk", "one-12", path, "sdd", "3", DRV_ACTION, xml=xml)
    assert vm.sh("cat /media/3/new.txt") == "written\n"
    # kept across a reboot (the container's record has it)
    vm.act("reboot", "one-12", "node1")
    assert vm.sh("cat /media/3/new.txt") == "written\n"


def test_a_failed_hot_attach_leaves_nothing(vm, runtime):
    vm.deploy()
    xml = vm.xml(disks=[*vm.xml_kw["disks"], disk(3, ATTACH="YES")])
    path = str(vm.datastore / "disk.3")
    p = vm.act("attach_disk", "one-12", path, "sdd", "3", DRV_ACTION, xml=xml, ok=False)
    assert p.returncode == 1 and b"disk.3" in p.stderr, p.stderr
    (vm.datastore / "disk.3").write_bytes(b"\0" * 65536)  # no filesystem in it
    p = vm.act("attach_disk", "one-12", path, "sdd", "3", DRV_ACTION, xml=xml, ok=False)
    assert p.returncode == 1, p.stderr
    assert loops_backed_by(path) == [] and "/media/3" not in vm.sh("cat /proc/mounts")
    # a path that is not this VM's disk
    p = vm.act("attach_disk", "one-12", "/etc/disk.3", "sdd", "3", DRV_ACTION, xml=xml, ok=False)
    assert p.returncode == 1 and b"is not this VM's" in p.stderr


def test_live_context_update(vm, runtime):
    from lxcone.testing import images

    vm.xml_kw.update(disks=[disk(0), disk(1, TYPE="CDROM", TARGET="hda")],
                     context={"DISK_ID": 1, "DNS": "10.0.0.1"})
    vm.deploy()
    assert vm.sh("cat /context/context.sh").startswith("ETH0_IP=")
    vm.act("prereconfigure", "one-12", "hda")
    assert "/context" not in vm.sh("cat /proc/mounts")
    # the TM regenerates the context disk
    ctx = vm.datastore.parent / "ctx2"
    ctx.mkdir()
    (ctx / "context.sh").write_text("DNS='10.0.0.2'\n")
    (vm.datastore / "disk.1").unlink()
    images.iso(str(ctx), str(vm.datastore / "disk.1"))
    xml = vm.xml(context={"DISK_ID": 1, "DNS": "10.0.0.2"})
    vm.act("reconfigure", "one-12", "hda", str(vm.datastore / "disk.1"), xml=xml)
    assert vm.sh("cat /context/context.sh") == "DNS='10.0.0.2'\n"
    assert "nameserver 10.0.0.2" in vm.sh("cat /etc/resolv.conf")
    vm.act("reconfigure", "one-12", "hda", str(vm.datastore / "disk.1"), xml=xml)  # again
    assert vm.sh("cat /context/context.sh") == "DNS='10.0.0.2'\n"


def has_cap(bit: int) -> bool:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> bit & 1)
    return False


CAP_SYS_RESOURCE = 24


@pytest.mark.parametrize("fs", ["xfs", "ext4"])
def test_resize_disk_grows_a_filesystem_online(vm, runtime, fs):
    from lxcone.testing import images

    if fs == "ext4" and not has_cap(CAP_SYS_RESOURCE):
        pytest.skip("online ext4 growth needs CAP_SYS_RESOURCE, which this sandbox's root "
                    "lacks (CapEff bit 24 clear); hosts have it")
    vm.deploy()
    path = vm.datastore / "disk.3"
    images.fs_image(str(path), fs, 320)
    xml = vm.xml(disks=[*vm.xml_kw["disks"], disk(3, ATTACH="YES")])
    vm.act("attach_disk", "one-12", str(path), "sdd", "3", DRV_ACTION, xml=xml)
    vm.xml_kw["disks"] = [*vm.xml_kw["disks"], disk(3)]
    before = int(vm.sh("df -k /media/3 | tail -1").split()[1])
    vm.sh("echo kept > /media/3/kept")
    # the TM's part: the image file grows (raw: qemu-img resize / truncate)
    os.truncate(path, 400 << 20)
    vm.act("resize_disk", "one-12", "3", "400", DRV_ACTION, "node1")
    after = int(vm.sh("df -k /media/3 | tail -1").split()[1])
    assert after > before + 60 * 1024, (before, after)
    assert vm.sh("cat /media/3/kept") == "kept\n"
    vm.act("resize_disk", "one-12", "3", "400", DRV_ACTION, "node1")  # idempotent
    p = vm.act("resize_disk", "one-12", "3", "100", DRV_ACTION, "node1", ok=False)
    assert p.returncode == 1 and b"shrink" in p.stderr, p.stderr


def test_the_whole_lifecycle_of_issue_4(vm, runtime, host_netns):
    """deploy → reboot → reset → snapshot create/revert/delete → disk attach/detach → NIC
    attach/detach → updateconf → resize → poweroff → resume → terminate, on one VM."""
    import subprocess

    from lxcone.testing import images

    subprocess.run(["nsenter", f"--net={host_netns}", "ip", "link", "add", "br0", "type",
                    "bridge"], check=True)
    vm.xml_kw.update(memory=128, cpu=0.5, vcpu=1, nics=[nic(12, 0)],
                     disks=[disk(0), disk(1, TYPE="CDROM", TARGET="hda")],
                     context={"DISK_ID": 1, "ETH0_MASK": "255.255.255.0"})
    vm.deploy()
    assert "192.168.150.100/24" in vm.sh("ip addr show eth0")
    for action in ("reboot", "reset"):
        pid = runtime.state("one-12").pid
        vm.act(action, "one-12", "node1")
        assert runtime.state("one-12").pid != pid
    vm.sh("echo one > /root/v")
    assert vm.act("snapshot_create", "one-12", "0").stdout == b"snap-0\n"
    vm.sh("echo two > /root/v")
    vm.act("snapshot_revert", "one-12", "snap-0")
    assert vm.sh("cat /root/v") == "one\n"
    assert "192.168.150.100/24" in vm.sh("ip addr show eth0")  # NICs back after the revert
    vm.act("snapshot_delete", "one-12", "snap-0")
    path = data_disk(vm.datastore, 3, "data\n")
    xml = vm.xml(disks=[*vm.xml_kw["disks"], disk(3, ATTACH="YES")])
    vm.act("attach_disk", "one-12", path, "sdd", "3", DRV_ACTION, xml=xml)
    assert vm.sh("cat /media/3/hello.txt") == "data\n"
    vm.act("detach_disk", "one-12", path, "sdd", "3", xml=xml)
    new = nic(12, 1, ATTACH="YES")
    xml = vm.xml(nics=[*vm.xml_kw["nics"], new])
    vm.act("attach_nic", "one-12", new["MAC"], "br0", "-", "bridge", "one-12-1", xml=xml)
    vm.act("prereconfigure", "one-12", "hda", xml=xml)
    vm.act("reconfigure", "one-12", "hda", str(vm.datastore / "disk.1"), xml=xml)
    assert "192.168.150.101" in vm.sh("ip addr show eth1")
    vm.act("detach_nic", "one-12", new["MAC"], xml=xml)
    vm.act("prereconfigure", "one-12", "hda")
    ctx = vm.datastore.parent / "ctx3"
    ctx.mkdir()
    (ctx / "context.sh").write_text("UPDATED='yes'\n")
    (vm.datastore / "disk.1").unlink()
    images.iso(str(ctx), str(vm.datastore / "disk.1"))
    vm.act("reconfigure", "one-12", "hda", str(vm.datastore / "disk.1"))
    assert vm.sh("cat /context/context.sh") == "UPDATED='yes'\n"
    vm.act("resize", "one-12", xml=vm.xml(memory=256, cpu=1, vcpu=1))
    assert runtime.stats("one-12").memory_limit_bytes == 256 << 20
    vm.act("shutdown", "one-12", "node1")
    assert runtime.list() == [] and loops_backed_by(str(vm.datastore)) == []
    vm.xml_kw.update(memory=256, cpu=1)
    vm.deploy()  # resume
    assert vm.sh("cat /root/v") == "one\n"
    vm.act("cancel", "one-12", "node1")
    assert runtime.list() == [] and mounts_under(str(vm.datastore)) == []


@pytest.mark.parametrize("delay_ms", [5, 30, 80, 150])
def test_a_deploy_killed_halfway_is_finished_or_undone_by_the_next_actions(vm, runtime, delay_ms):
    """oned kills an action that times out, then retries it or cancels the VM: whatever point
    the kill hit, a new deploy gives a running container and a cancel leaves nothing."""
    import signal
    import subprocess
    import time

    from contract.oned import VMM

    p = subprocess.Popen([str(VMM / "deploy"), str(vm.datastore / "deployment.0"), "node1",
                          "12", "node1"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                         stderr=subprocess.DEVNULL, env=vm.env, start_new_session=True)
    p.stdin.write(vm_xml(12, **vm.xml_kw))
    p.stdin.close()
    time.sleep(delay_ms / 1000)
    os.killpg(p.pid, signal.SIGKILL)
    p.wait()
    vm.deploy()
    assert runtime.state("one-12").status == "running"
    assert vm.sh("cat /srv/data/data.txt") == "payload\n"
    vm.act("cancel", "one-12", "node1")
    assert runtime.list() == []
    assert loops_backed_by(str(vm.datastore)) == [] and mounts_under(str(vm.datastore)) == []
