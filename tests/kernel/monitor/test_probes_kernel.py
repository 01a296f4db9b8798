"""The probes against real containers: memory, CPU, network (guest view) and disk I/O show up
with OpenNebula's units; stopped, powered-off-from-inside and frozen containers get the right
STATE_VM; containers vanishing mid-run never fail a probe; the executables run exactly as
OpenNebula's monitord client runs them."""

from __future__ import annotations

import base64
import json
import os
import signal
import subprocess
import threading
import time
from pathlib import Path

import pytest
from unit.monitor.one_template import parse
from unit.monitor.remotes_tree import make_remotes, probe

from lxcone.monitor import cgroupfs, inventory, probes, rundir
from lxcone.runtime import Bind
from lxcone.testing.fixtures import needs_root
from lxcone.testing.helpers import busybox_spec as spec
from lxcone.testing.helpers import sh, wait_for

pytestmark = [pytest.mark.root, needs_root]

PROBES = Path(__file__).resolve().parents[3] / "remotes" / "im" / "lxcone-probes.d"
XML = ("<MONITOR_CONFIGURATION><DATASTORE_LOCATION><![CDATA[/var/lib/one//datastores]]>"
       "</DATASTORE_LOCATION><NETWORK><MONITOR_ADDRESS><![CDATA[auto]]></MONITOR_ADDRESS>"
       "<PORT><![CDATA[4124]]></PORT></NETWORK><PROBES_PERIOD><MONITOR_VM><![CDATA[30]]>"
       "</MONITOR_VM><STATE_VM><![CDATA[5]]></STATE_VM><SYNC_STATE_VM><![CDATA[180]]>"
       "</SYNC_STATE_VM></PROBES_PERIOD><HOST_ID>0</HOST_ID></MONITOR_CONFIGURATION>")
MIB = 1 << 20








def run_group(group: str, run_dir: str) -> str:
    """As ProbeRunner does: every executable file of the group, argv ``lxcone <hid> <host>``,
    the configuration XML on stdin; any non-zero exit is a failure of the group."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LXCONE_RUN_DIR": run_dir}
    out = ""
    d = PROBES / group
    for p in sorted(d.iterdir()):
        if p.is_file() and os.access(p, os.X_OK):
            r = subprocess.run([str(p), "lxcone", "0", "node1"], input=XML.encode(),
                               capture_output=True, env=env, timeout=30, check=False)
            assert r.returncode == 0, (p, r.returncode, r.stderr)
            out += r.stdout.decode()
    return out


def monitor(run_dir: str) -> dict[str, dict[str, object]]:
    res = {}
    for name, v in parse(run_group("vm/monitor", run_dir)):
        assert name == "VM"
        res[v["DEPLOY_ID"]] = dict(parse(base64.b64decode(v["MONITOR"]).decode()))
    return res


def states(run_dir: str) -> dict[str, str]:
    return {v["DEPLOY_ID"]: v["STATE"] for n, v in parse(run_group("vm/status", run_dir))
            if n == "VM"}


def test_memory_hog_shows_in_memory(runtime, busybox_rootfs, run_dir):
    runtime.run(spec(busybox_rootfs, "one-1"))
    m0 = int(monitor(run_dir)["one-1"]["MEMORY"])
    sh(runtime, "one-1", "dd if=/dev/zero of=/dev/shm/hog bs=1M count=64 2>/dev/null")
    m1 = int(monitor(run_dir)["one-1"]["MEMORY"])
    truth = runtime.stats("one-1").memory_working_set_bytes // 1024
    # memcg charges in per-CPU batches of 64 pages, so the starting figure may already hold a
    # few hundred KiB charged ahead: allow 1 MiB of slack on the growth, none on the total
    assert m1 >= 64 * 1024, (m0, m1)
    assert m1 - m0 >= 63 * 1024, (m0, m1)
    assert m1 <= m0 + 96 * 1024, (m0, m1)
    assert abs(m1 - truth) < 2048, (m1, truth)  # KiB, the cgroup's own working set
    sh(runtime, "one-1", "rm /dev/shm/hog")
    m2 = int(monitor(run_dir)["one-1"]["MEMORY"])
    assert m2 < m1 - 60 * 1024


def test_cpu_loop_shows_one_core(runtime, busybox_rootfs, run_dir):
    runtime.run(spec(busybox_rootfs, "one-1"))
    runtime.run(spec(busybox_rootfs, "one-2"))
    pid = runtime.spawn("one-1", ["/bin/sh", "-c", "while :; do :; done"])
    try:
        monitor(run_dir)
        time.sleep(1.0)
        got = monitor(run_dir)
    finally:
        os.kill(pid, signal.SIGKILL)
        runtime.wait(pid)
    busy, idle = float(got["one-1"]["CPU"]), float(got["one-2"]["CPU"])
    assert 60 <= busy <= 140, busy
    assert idle < 10, idle


def _veth_stats(host_netns: str, dev: str) -> tuple[int, int]:
    out = subprocess.run(["nsenter", f"--net={host_netns}", "ip", "-s", "-j", "link", "show",
                          dev], capture_output=True, text=True, check=True).stdout
    s = json.loads(out)[0]["stats64"]
    return s["rx"]["bytes"], s["tx"]["bytes"]


def test_traffic_shows_as_the_guest_sees_it(runtime, busybox_rootfs, run_dir, host_netns):
    from lxcone.netns import Address, NicSpec

    nic = NicSpec(host_name="one-1-0", guest_name="eth0", bridge="lxmbr0",
                  addresses=(Address("10.78.0.2", 24),))
    runtime.run(spec(busybox_rootfs, "one-1", nics=(nic,)))
    subprocess.run(["nsenter", f"--net={host_netns}", "ip", "addr", "add", "10.78.0.1/24",
                    "dev", "lxmbr0"], check=True)
    sh(runtime, "one-1", "ping -c1 -W2 10.78.0.1 >/dev/null")  # ARP settled
    before = monitor(run_dir)["one-1"]
    h0 = _veth_stats(host_netns, "one-1-0")
    sh(runtime, "one-1", "ping -c 10 -i 0.05 -s 1400 -W2 10.78.0.1 >/dev/null")
    after = monitor(run_dir)["one-1"]
    h1 = _veth_stats(host_netns, "one-1-0")
    sent = int(after["NETTX"]) - int(before["NETTX"])
    received = int(after["NETRX"]) - int(before["NETRX"])
    assert sent >= 10 * 1400 and received >= 10 * 1400, (sent, received)
    # guest view: what the guest sent is what its host-side veth received, not the reverse
    host_rx, host_tx = h1[0] - h0[0], h1[1] - h0[1]
    assert abs(sent - host_rx) <= 1024, (sent, host_rx)
    assert abs(received - host_tx) <= 1024, (received, host_tx)


def test_disk_writes_show_in_disk_counters(runtime, busybox_rootfs, run_dir, tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    runtime.run(spec(busybox_rootfs, "one-1", privileged=True,
                     binds=(Bind(str(data), "/data"),)))
    before = monitor(run_dir)["one-1"]
    sh(runtime, "one-1", "dd if=/dev/urandom of=/data/f bs=1M count=4 conv=fsync 2>/dev/null")
    after = monitor(run_dir)["one-1"]
    written = int(after["DISKWRBYTES"]) - int(before["DISKWRBYTES"])
    assert written >= 4 * MIB, written
    assert int(after["DISKWRIOPS"]) > int(before["DISKWRIOPS"])
    truth = runtime.stats("one-1")
    assert int(after["DISKWRBYTES"]) <= truth.io_write_bytes


def test_states_stopped_poweroff_from_inside_and_frozen(runtime, busybox_rootfs, run_dir):
    for i in (1, 2, 3, 4):
        runtime.run(spec(busybox_rootfs, f"one-{i}"))
    runtime.create(spec(busybox_rootfs, "one-5"))  # never started: not reported
    assert states(run_dir) == {f"one-{i}": "RUNNING" for i in (1, 2, 3, 4)}
    runtime.stop("one-1")
    sh(runtime, "one-2", "kill -USR2 1")  # the guest powers itself off
    wait_for(lambda: runtime.state("one-2").status == "stopped", what="one-2 to power off")
    runtime.freeze("one-3")
    assert states(run_dir) == {"one-1": "POWEROFF", "one-2": "POWEROFF", "one-3": "SUSPENDED"}
    runtime.thaw("one-3")
    assert states(run_dir) == {"one-3": "RUNNING"}
    # after the sync period a full report lists every VM again
    state_file = Path(run_dir, ".monitor", "vm-status-0.state")
    assert state_file.exists()
    state_file.unlink()
    assert states(run_dir) == {"one-1": "POWEROFF", "one-2": "POWEROFF", "one-3": "RUNNING",
                               "one-4": "RUNNING"}
    mon = monitor(run_dir)
    assert set(mon) == {"one-3", "one-4"}


def test_a_container_vanishing_mid_probe(runtime, busybox_rootfs, run_dir, monkeypatch):
    for i in (1, 2, 3):
        runtime.run(spec(busybox_rootfs, f"one-{i}"))
    real = cgroupfs.sample

    def sample(paths, io=True):
        if any(p.endswith("/one-2") for p in paths.values()) and \
                os.path.exists(f"{run_dir}/one-2"):
            runtime.delete("one-2", force=True)  # init killed, cgroups removed, record gone
        return real(paths, io)

    monkeypatch.setattr(cgroupfs, "sample", sample)
    out = probes.vm_monitor(run_dir, f"{run_dir}/.monitor/x.state")
    got = {v["DEPLOY_ID"] for _, v in parse(out)}
    assert {"one-1", "one-3"} <= got and "one-2" not in got


def test_probes_never_fail_while_containers_come_and_go(runtime, busybox_rootfs, run_dir):
    """Probe executables in a loop while another thread deletes, stops, freezes and thaws
    containers and leaves torn records around; every run exits 0 with a well-formed report.

    (Containers are started before the loop, not during it: Runtime.start() can hang when the
    monitor's "pid" and "running" lines arrive in one read, which a busy host makes likely;
    reported to the runtime's owner. Deleting and stopping is what makes entries vanish.)"""
    names = [f"one-{i}" for i in range(1, 11)]
    for name in names:
        runtime.run(spec(busybox_rootfs, name))
    stop = threading.Event()
    errors: list[BaseException] = []

    def churn() -> None:
        try:
            torn = Path(run_dir, "one-99")
            for i, name in enumerate(names[2:]):
                if stop.is_set():
                    break
                if i % 3 == 0:
                    runtime.freeze(name)
                    runtime.thaw(name)
                if i % 4 == 1:
                    runtime.stop(name, timeout=5)  # busybox init's shutdown takes ~2 s
                runtime.delete(name, force=True)
                if torn.exists():
                    for f in torn.iterdir():
                        f.unlink()
                    torn.rmdir()
                else:
                    torn.mkdir()
                    (torn / "state.json").write_text('{"spec": {"name": "one-99"}, "cgr')
                time.sleep(0.05)
        except BaseException as e:
            errors.append(e)

    t = threading.Thread(target=churn)
    t.start()
    runs = 0
    try:
        while t.is_alive() or runs < 10:
            for group in ("vm/status", "vm/monitor"):
                parse(run_group(group, run_dir))  # exit 0 and well-formed, every time
            runs += 1
    finally:
        stop.set()
        t.join(60)
    assert not t.is_alive() and not errors, errors
    assert {"one-1", "one-2"} == set(monitor(run_dir))


def test_every_group_runs_as_monitord_runs_it(runtime, busybox_rootfs, run_dir):
    runtime.run(spec(busybox_rootfs, "one-7"))
    runtime.run(spec(busybox_rootfs, "web"))  # not an OpenNebula VM
    system = dict(a for a in parse(run_group("host/system", run_dir)) if a[0] != "DS")
    assert system["HYPERVISOR"] == "lxcone" and system["CGROUPS_VERSION"] in ("1", "2")
    host = dict(parse(run_group("host/monitor", run_dir)))
    assert int(host["USEDMEMORY"]) > 0 and int(host["NETRX"]) >= 0
    assert run_group("host/beacon", run_dir).strip().isdigit()
    status = parse(run_group("vm/status", run_dir))
    assert status[:2] == [("SYNC_STATE", "yes"), ("MISSING_STATE", "POWEROFF")]
    assert status[2:] == [("VM", {"ID": "7", "DEPLOY_ID": "one-7", "STATE": "RUNNING"})]
    mon = monitor(run_dir)
    assert set(mon) == {"one-7"}
    assert {"CPU", "MEMORY", "NETRX", "NETTX", "DISKRDBYTES", "DISKWRBYTES", "DISKRDIOPS",
            "DISKWRIOPS"} <= set(mon["one-7"])
    assert run_group("vm/execution", run_dir) == run_group("vm/snapshot", run_dir) == ""


def test_rundir_view_matches_inventory(runtime, busybox_rootfs, run_dir):
    for i in (1, 2, 3):
        runtime.run(spec(busybox_rootfs, f"one-{i}"))
    runtime.freeze("one-2")
    runtime.stop("one-3")
    ref = {c.name: c for c in inventory.list_containers(run_dir)}
    ours = {c.name: c for c in rundir.scan(run_dir, rundir.StateCache()).containers}
    assert set(ref) == set(ours) == {"one-1", "one-2", "one-3"}
    for name, r in ref.items():
        o = ours[name]
        assert (o.pid, o.cgroup_paths, o.vm_id) == (r.pid, r.cgroup_paths, r.vm_id)
        assert o.status == runtime.state(name).status
    runtime.thaw("one-2")


def test_cpu_counter_identity_changes_with_a_new_cgroup(runtime, busybox_rootfs):
    runtime.run(spec(busybox_rootfs, "one-1"))
    paths = runtime._load("one-1")[1]["cgroup_paths"]
    key = cgroupfs.sample(paths).cpu_key
    runtime.delete("one-1", force=True)
    runtime.run(spec(busybox_rootfs, "one-1"))
    assert cgroupfs.sample(paths).cpu_key not in (None, key)


def test_probes_find_a_non_default_run_dir_in_lxcone_toml(runtime, busybox_rootfs, run_dir,
                                                          cgroup_parent, tmp_path):
    """As onemonitord runs them: no LXCONE_RUN_DIR, the probes next to the driver's
    lxcone.toml in a remotes tree (<remotes>/etc/vmm/lxcone/lxcone.toml), whose run_dir is the
    one this runtime uses (not /run/lxcone). The real container there is reported."""
    runtime.run(spec(busybox_rootfs, "one-9"))
    remotes = make_remotes(tmp_path / "var-tmp-one",
                           f'run_dir = "{run_dir}"\ncgroup_parent = "{cgroup_parent}"\n'
                           "agent = false\n")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}

    def run(group):
        r = subprocess.run([str(probe(remotes, group)), "lxcone", "0", "node1"],
                           input=XML.encode(), capture_output=True, env=env, timeout=30,
                           check=False, cwd=tmp_path)
        assert r.returncode == 0, (group, r.stderr)
        return parse(r.stdout.decode())

    assert ("VM", {"ID": "9", "DEPLOY_ID": "one-9", "STATE": "RUNNING"}) in run("vm/status")
    [(name, vm)] = run("vm/monitor")
    assert (name, vm["ID"], vm["DEPLOY_ID"]) == ("VM", "9", "one-9")
    mon = dict(parse(base64.b64decode(vm["MONITOR"]).decode()))
    assert int(mon["MEMORY"]) > 0 and float(mon["CPU"]) >= 0
    # the same tree with another run dir does not see it (a missing run dir: an empty host)
    make_remotes(remotes, f'run_dir = "{tmp_path / "other"}"\n')
    assert [n for n, _ in run("vm/status")] == ["SYNC_STATE", "MISSING_STATE"]
