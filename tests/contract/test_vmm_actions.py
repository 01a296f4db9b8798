"""remotes/vmm/lxcone/* run exactly as OpenNebula's one_vmm_exec runs them (protocol doc §2.3,
addendum A.2): argv with the appended <vm_id> <host>, the VM XML on stdin through each of the
three transports, stdout and exit codes as oned reads them."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from contract.oned import (
    REMOTES,
    TRANSPORTS,
    VMM,
    loops_backed_by,
    mounts_under,
    remotes_command,
    ssh_stream,
    start_vm,
)
from lxcone.runtime import ContainerSpec
from lxcone.testing.fixtures import needs_root
from lxcone.testing.vmxml import action_data, vm_xml

pytestmark = [pytest.mark.root, needs_root]


@pytest.mark.parametrize("transport", TRANSPORTS)
def test_shutdown_powers_off_and_is_idempotent(driver, runtime, busybox_rootfs, transport):
    env, _ = driver
    start_vm(runtime, busybox_rootfs)
    xml = action_data(vm_xml(12, deploy_id="one-12"))
    p = transport(env, "shutdown", "one-12", "node1", "12", "node1", stdin=xml)
    assert (p.returncode, p.stdout, p.stderr) == (0, b"", b""), p.stderr
    # stopped by OpenNebula: the record goes (deploy recreates it on resume); a shutdown never
    # kills (see the timeout test), so this was the guest powering off
    assert runtime.list() == []
    p = transport(env, "shutdown", "one-12", "node1", "12", "node1", stdin=xml)
    assert p.returncode == 0


def test_shutdown_that_times_out_fails_clearly_and_cancel_stops(driver, runtime,
                                                                busybox_rootfs):
    env, cfg = driver
    # SIGWINCH is ignored by busybox init: the guest never powers off
    cfg.write_text(cfg.read_text().replace('"SIGUSR2"', '"SIGWINCH"')
                   .replace("shutdown_timeout_s = 10", "shutdown_timeout_s = 0.5"))
    runtime.run(ContainerSpec(name="one-12", rootfs=busybox_rootfs,
                              stop_signal=int(signal.SIGWINCH)))
    xml = action_data(vm_xml(12, deploy_id="one-12"))
    p = ssh_stream(env, "shutdown", "one-12", "node1", "12", "node1", stdin=xml)
    assert p.returncode == 1
    assert p.stderr == b"ERROR: shutdown: one-12 did not power off within 0.5 s (try cancel)\n"
    assert runtime.state("one-12").status == "running"
    p = ssh_stream(env, "cancel", "one-12", "node1", "12", "node1", stdin=xml)
    assert p.returncode == 0 and runtime.list() == []


@pytest.mark.parametrize("action", ["reboot", "reset"])
def test_reboot_and_reset_give_a_fresh_init(driver, runtime, busybox_rootfs, action):
    env, _ = driver
    old = start_vm(runtime, busybox_rootfs)
    t = time.monotonic()
    p = ssh_stream(env, action, "one-12", "node1", "12", "node1",
                   stdin=action_data(vm_xml(12, deploy_id="one-12")))
    assert p.returncode == 0, p.stderr
    s = runtime.state("one-12")
    assert s.status == "running" and s.pid != old
    assert time.monotonic() - t < 30


def test_poll_reports_the_legacy_state(driver, runtime, busybox_rootfs):
    env, _ = driver
    xml = vm_xml(12, deploy_id="one-12")
    p = remotes_command(env, "poll", "one-12", "node1", "12", "node1", stdin=xml)
    assert (p.returncode, p.stdout) == (0, b"STATE=d\n")
    start_vm(runtime, busybox_rootfs)
    p = remotes_command(env, "poll", "one-12", "node1", "12", "node1", stdin=xml)
    assert (p.returncode, p.stdout) == (0, b"STATE=a\n")


@pytest.mark.parametrize(("action", "args"), [
    ("save", ["one-12", "/var/lib/one/datastores/0/12/checkpoint", "node1"]),
    ("restore", ["/var/lib/one/datastores/0/12/checkpoint", "node1", "one-12"]),
    ("migrate", ["one-12", "node2", "node1"]),
])
def test_criu_actions_say_not_supported(driver, action, args):
    env, _ = driver
    p = ssh_stream(env, action, *args, "12", "node1", stdin=vm_xml(12, deploy_id="one-12"))
    assert p.returncode == 1 and p.stdout == b""
    assert p.stderr.startswith(f"ERROR: {action}: operation not supported".encode())


@pytest.mark.parametrize(("args", "xml", "words"), [
    (["one-13", "node1", "12", "node1"], vm_xml(12), b"deploy id 'one-13' is not one-12"),
    (["one-12", "node1", "12", "node1"], vm_xml(13), b"the XML is for VM 13"),
    (["one-12", "node1", "12"], vm_xml(12), b"takes 2 arguments"),
    (["one-12", "node1", "x", "node1"], vm_xml(12), b"is not a number"),
    (["one-12", "node1", "12", "node1"], b"<VM><ID>12</ID", b"malformed XML"),
    (["../../x", "node1", "12", "node1"], vm_xml(12), b"deploy id"),
])
def test_bad_calls_fail_with_one_error_line(driver, runtime, args, xml, words):
    env, _ = driver
    p = ssh_stream(env, "cancel", *args, stdin=xml)
    assert p.returncode == 1 and p.stdout == b""
    assert p.stderr.startswith(b"ERROR: ") and words in p.stderr, p.stderr
    assert p.stderr.count(b"\n") == 1 and b"Traceback" not in p.stderr
    assert runtime.list() == []


def test_a_host_without_lxcone_gets_a_clear_error(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "LXCONE_PYTHON"}
    p = subprocess.run([str(VMM / "cancel"), "one-1", "h", "1", "h"], input=b"",
                       capture_output=True, env=env, timeout=10, check=False)
    if (REMOTES / "etc/vmm/lxcone/python").exists():
        pytest.skip("an installer has written etc/vmm/lxcone/python in this checkout")
    assert p.returncode == 1 and p.stderr.startswith(b"ERROR: lxcone is not installed")


def test_hot_nic_attach_configures_it_and_detach_removes_it(driver, runtime, busybox_rootfs,
                                                             host_netns):
    from lxcone.testing.vmxml import nic

    env, _ = driver
    start_vm(runtime, busybox_rootfs)
    subprocess.run(["nsenter", f"--net={host_netns}", "ip", "link", "add", "br0", "type",
                    "bridge"], check=True)
    new = nic(12, 1, IP="10.99.0.5", MAC="02:00:0a:63:00:05", ATTACH="YES", MTU=1400)
    xml = action_data(vm_xml(12, deploy_id="one-12", nics=[new],
                             context={"ETH1_MASK": "255.255.255.0",
                                      "ETH1_GATEWAY": "10.99.0.1"}))
    args = ["one-12", "02:00:0a:63:00:05", "br0", "-", "bridge", "one-12-1", "12", "node1"]
    p = ssh_stream(env, "attach_nic", *args, stdin=xml)
    assert (p.returncode, p.stderr) == (0, b""), p.stderr
    out = runtime.exec("one-12", ["/bin/sh", "-c", "ip addr show eth1; ip route"]).stdout
    assert b"10.99.0.5/24" in out and b"mtu 1400" in out and b"02:00:0a:63:00:05" in out
    assert b"default via 10.99.0.1" in out
    p = ssh_stream(env, "detach_nic", "one-12", "02:00:0a:63:00:05", "12", "node1", stdin=xml)
    assert p.returncode == 0, p.stderr
    assert b"eth1" not in runtime.exec("one-12", ["ls", "/sys/class/net"]).stdout
    assert ssh_stream(env, "detach_nic", "one-12", "02:00:0a:63:00:05", "12", "node1",
                      stdin=xml).returncode == 0  # idempotent
    links = subprocess.run(["nsenter", f"--net={host_netns}", "ip", "-o", "link"],
                           capture_output=True, text=True, check=True).stdout
    assert "one-12-1" not in links


def test_attach_nic_refuses_argv_that_contradicts_the_xml(driver, runtime, busybox_rootfs):
    from lxcone.testing.vmxml import nic

    env, _ = driver
    start_vm(runtime, busybox_rootfs)
    xml = action_data(vm_xml(12, deploy_id="one-12", nics=[nic(12, 1, ATTACH="YES")]))
    p = ssh_stream(env, "attach_nic", "one-12", "02:00:00:00:00:99", "br0", "-", "bridge",
                   "one-12-1", "12", "node1", stdin=xml)
    assert p.returncode == 1 and b"does not match NIC 1" in p.stderr


def test_deploy_shutdown_resume_cancel_lifecycle(driver, runtime, datastore):
    from lxcone.testing.vmxml import disk

    env, cfg = driver
    cfg.write_text(cfg.read_text() + f'datastores = "{datastore.parent.parent}"\n')
    xml = vm_xml(12, memory=128, cpu=0.5, nics=[], disks=[
        disk(0), disk(1, TYPE="CDROM", TARGET="hda"), disk(2, TARGET="/srv/data")],
        context={"DISK_ID": 1})
    deployment = str(datastore / "deployment.0")
    p = ssh_stream(env, "deploy", deployment, "node1", "12", "node1", stdin=xml)
    assert (p.returncode, p.stdout, p.stderr) == (0, b"one-12\n", b""), p.stderr
    s = runtime.state("one-12")
    assert s.status == "running"
    sh = lambda cmd: runtime.exec("one-12", ["/bin/sh", "-c", cmd]).stdout.decode()  # noqa: E731
    assert "ext4" in sh("grep ' / ' /proc/mounts")  # the rootfs is the image
    assert sh("cat /context/context.sh").startswith("ETH0_IP=")
    assert sh("cat /srv/data/data.txt") == "payload\n"
    assert runtime.stats("one-12").memory_limit_bytes == 128 << 20
    # deploy again while running: idempotent
    assert ssh_stream(env, "deploy", deployment, "node1", "12", "node1",
                      stdin=xml).stdout == b"one-12\n"
    # poweroff: everything released, the image files untouched for the TM to move
    xml_running = action_data(vm_xml(12, deploy_id="one-12", nics=[], disks=[disk(0)]))
    p = ssh_stream(env, "shutdown", "one-12", "node1", "12", "node1", stdin=xml_running)
    assert p.returncode == 0, p.stderr
    assert loops_backed_by(str(datastore)) == [] and mounts_under(str(datastore)) == []
    assert runtime.list() == []
    # resume from poweroff = deploy of the same VM with its disks already there
    p = ssh_stream(env, "deploy", deployment, "node1", "12", "node1", stdin=xml)
    assert p.returncode == 0 and runtime.state("one-12").status == "running", p.stderr
    assert sh("cat /srv/data/data.txt") == "payload\n"
    p = ssh_stream(env, "cancel", "one-12", "node1", "12", "node1", stdin=xml_running)
    assert p.returncode == 0
    assert loops_backed_by(str(datastore)) == [] and runtime.list() == []


@pytest.mark.parametrize(("disks_kw", "prepare", "words"), [
    ({}, lambda d: (d / "disk.0").unlink(), b"disk.0"),
    ({}, lambda d: (d / "disk.0").write_bytes(b"\0" * 4096), b"disk.0"),
    ({"boot": "disk9"}, lambda d: None, None),
])
def test_failed_deploy_leaves_nothing(driver, runtime, datastore, disks_kw, prepare, words):
    from lxcone.testing.vmxml import disk

    env, cfg = driver
    cfg.write_text(cfg.read_text() + f'datastores = "{datastore.parent.parent}"\n')
    prepare(datastore)
    xml = vm_xml(12, nics=[], disks=[disk(0), disk(2, TARGET="/srv/data")], **disks_kw)
    p = ssh_stream(env, "deploy", str(datastore / "deployment.0"), "node1", "12", "node1",
                   stdin=xml)
    if words is None:  # OS/BOOT names a missing disk: the first usable one is the rootfs
        assert p.returncode == 0, p.stderr
        ssh_stream(env, "cancel", "one-12", "node1", "12", "node1", stdin=xml)
        return
    assert p.returncode == 1 and p.stdout == b"" and p.stderr.startswith(b"ERROR: deploy")
    assert words in p.stderr, p.stderr
    assert runtime.list() == []
    assert loops_backed_by(str(datastore)) == [] and mounts_under(str(datastore)) == []
