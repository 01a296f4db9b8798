"""Whole VM lifecycles as oned drives them, through remotes/vmm/lxcone: the actions of issue 4
one after the other on one container, with the guest checked between steps."""

from __future__ import annotations

import os

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
    from pathlib import Path

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
