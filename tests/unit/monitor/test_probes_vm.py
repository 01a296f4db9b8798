"""STATE_VM and MONITOR_VM on fake hosts: syntax, OpenNebula's state-sync semantics (probe_db),
units and values against cgroup truth, base64 MONITOR, state-file corruption, bad containers."""

from __future__ import annotations

import base64
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest
from cgroups_fakefs import V1_MEMORY_STAT, V2_MEMORY_STAT

from lxcone.cgroups import from_paths
from lxcone.monitor import cgroupfs, netdev, probes

from .conftest import FakeHost, own_starttime
from .one_template import as_dict, parse

GIB = 1 << 30


def state_path(host: FakeHost, probe: str) -> str:
    return str(host.run_dir.parent / "state" / f"{probe}-0.state")


def status(host: FakeHost, now: float, sync: int = 180) -> list[tuple[str, object]]:
    return parse(probes.vm_status(str(host.run_dir), state_path(host, "vm-status"), sync, now))


def vms(attrs: list[tuple[str, object]]) -> dict[str, str]:
    return {v["DEPLOY_ID"]: v["STATE"] for n, v in attrs if n == "VM"}


# -- STATE_VM ----------------------------------------------------------------------------------

def test_full_report_then_only_changes(fake_host: FakeHost) -> None:
    fake_host.add("one-1", "running")
    fake_host.add("one-2", "stopped")
    fake_host.add("one-3", "created")
    fake_host.add("one-10", "running")
    fake_host.managers["one-10"].freeze()
    fake_host.add("one-5", "rebooting")
    fake_host.add("web", "running")
    first = status(fake_host, 1000.0)
    assert first[:2] == [("SYNC_STATE", "yes"), ("MISSING_STATE", "POWEROFF")]
    assert [v["ID"] for n, v in first if n == "VM"] == ["1", "2", "5", "10"]  # by VM id
    assert vms(first) == {"one-1": "RUNNING", "one-2": "POWEROFF", "one-5": "RUNNING",
                          "one-10": "SUSPENDED"}
    for n, v in first[2:]:
        assert n == "VM" and set(v) == {"ID", "DEPLOY_ID", "STATE"}
        assert v["DEPLOY_ID"] == f"one-{v['ID']}"
    assert status(fake_host, 1005.0) == []  # nothing changed
    fake_host.managers["one-10"].thaw()
    fake_host.managers["one-1"].freeze()
    assert vms(status(fake_host, 1010.0)) == {"one-10": "RUNNING", "one-1": "SUSPENDED"}
    fake_host.add("one-4", "running")
    assert status(fake_host, 1015.0) == [("VM", {"ID": "4", "DEPLOY_ID": "one-4",
                                                 "STATE": "RUNNING"})]


def test_missing_vm_is_reported_once_after_three_misses(v1_host: FakeHost) -> None:
    v1_host.add("one-1")
    v1_host.add("one-2")
    status(v1_host, 1000.0)
    shutil.rmtree(v1_host.run_dir / "one-2")
    for i in range(1, 4):
        assert status(v1_host, 1000.0 + 5 * i) == [], i
    assert status(v1_host, 1020.0) == [("VM", {"ID": "2", "DEPLOY_ID": "one-2",
                                               "STATE": "POWEROFF"})]
    assert status(v1_host, 1025.0) == []


def test_a_container_that_comes_back_resets_its_miss_count(v1_host: FakeHost) -> None:
    v1_host.add("one-1")
    status(v1_host, 1000.0)
    saved = v1_host.run_dir.parent / "saved"
    shutil.move(v1_host.run_dir / "one-1", saved)
    status(v1_host, 1005.0)
    status(v1_host, 1010.0)
    shutil.move(saved, v1_host.run_dir / "one-1")
    assert status(v1_host, 1015.0) == []
    shutil.rmtree(v1_host.run_dir / "one-1")
    assert [status(v1_host, 1020.0 + 5 * i) for i in range(3)] == [[], [], []]
    assert vms(status(v1_host, 1040.0)) == {"one-1": "POWEROFF"}


@pytest.mark.parametrize(("now", "full"), [(1179.0, False), (1181.0, True), (800.0, True)])
def test_full_report_when_the_last_run_is_older_than_sync(v1_host: FakeHost, now: float,
                                                          full: bool) -> None:
    v1_host.add("one-1")
    status(v1_host, 1000.0)
    out = status(v1_host, now)
    assert (out[:1] == [("SYNC_STATE", "yes")]) is full
    assert (vms(out) == {"one-1": "RUNNING"}) is full


@pytest.mark.parametrize("damage", [b"", b"garbage", None])
def test_lost_or_corrupt_state_gives_a_full_report(v1_host: FakeHost, damage: bytes | None) -> None:
    v1_host.add("one-1")
    status(v1_host, 1000.0)
    p = Path(state_path(v1_host, "vm-status"))
    if damage is None:
        p.unlink()
    else:
        p.write_bytes(damage)
    assert vms(status(v1_host, 1001.0)) == {"one-1": "RUNNING"}


def test_empty_host(tmp_path: Path) -> None:
    out = parse(probes.vm_status(str(tmp_path / "none"), str(tmp_path / "s"), 180, 1.0))
    assert out == [("SYNC_STATE", "yes"), ("MISSING_STATE", "POWEROFF")]
    assert probes.vm_status(str(tmp_path / "none"), str(tmp_path / "s"), 180, 2.0) == ""


# -- MONITOR_VM --------------------------------------------------------------------------------

def monitor(host: FakeHost) -> dict[str, dict[str, str]]:
    out = probes.vm_monitor(str(host.run_dir), state_path(host, "vm-monitor"))
    res = {}
    for name, v in parse(out):
        assert name == "VM" and set(v) == {"ID", "DEPLOY_ID", "MONITOR"}
        assert v["DEPLOY_ID"] == f"one-{v['ID']}"
        text = base64.b64decode(v["MONITOR"], validate=True).decode()
        res[v["DEPLOY_ID"]] = parse(text)
    return res


def set_cpu(host: FakeHost, name: str, ns: int) -> None:
    paths = host.managers[name].paths
    if host.kind == "v2":
        Path(paths["unified"], "cpu.stat").write_text(
            f"usage_usec {ns // 1000}\nuser_usec 0\nsystem_usec 0\n")
    else:
        Path(paths["cpuacct"], "cpuacct.usage").write_text(f"{ns}\n")


def set_memory(host: FakeHost, name: str, usage: int) -> None:
    paths = host.managers[name].paths
    if host.kind == "v2":
        Path(paths["unified"], "memory.current").write_text(f"{usage}\n")
        Path(paths["unified"], "memory.stat").write_text(V2_MEMORY_STAT)
    else:
        Path(paths["memory"], "memory.usage_in_bytes").write_text(f"{usage}\n")
        Path(paths["memory"], "memory.stat").write_text(V1_MEMORY_STAT)


class Clock:
    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.mono = 50 * 10**9
        self.boot = (own_starttime() * 10**9) // os.sysconf("SC_CLK_TCK") + 10 * 10**9
        monkeypatch.setattr(time, "monotonic_ns", lambda: self.mono)
        monkeypatch.setattr(time, "clock_gettime_ns", lambda clk: self.boot)

    def advance(self, seconds: float) -> None:
        self.mono += int(seconds * 1e9)
        self.boot += int(seconds * 1e9)


def test_monitor_values(fake_host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    fake_host.add("one-1")
    fake_host.add("one-2", "stopped")
    fake_host.add("one-3", "created")
    fake_host.add("one-4")
    fake_host.managers["one-4"].freeze()
    fake_host.add("web")
    set_cpu(fake_host, "one-1", 2 * 10**9)  # 2 s of CPU in the 10 s since init started
    set_memory(fake_host, "one-1", 5500928)
    before = netdev.read_net_dev(os.getpid())
    first = monitor(fake_host)
    after = netdev.read_net_dev(os.getpid())
    assert set(first) == {"one-1", "one-4"}  # running and frozen VMs only
    m = dict(first["one-1"])
    assert set(m) == {"CPU", "MEMORY", "NETRX", "NETTX", "DISKRDBYTES", "DISKWRBYTES",
                      "DISKRDIOPS", "DISKWRIOPS"}
    assert m["CPU"] == "20.00"  # first sample: average since init started
    truth = from_paths(fake_host.managers["one-1"].paths).stats()
    assert int(m["MEMORY"]) == truth.memory_working_set_bytes // 1024 == (5500928 - 577536) // 1024
    assert int(m["DISKRDBYTES"]) == truth.io_read_bytes
    assert int(m["DISKWRIOPS"]) == truth.io_write_ops
    assert sum(c.rx_bytes for c in before.values()) <= int(m["NETRX"]) <= \
        sum(c.rx_bytes for c in after.values())
    assert sum(c.tx_bytes for c in before.values()) <= int(m["NETTX"]) <= \
        sum(c.tx_bytes for c in after.values())
    # 1.5 s of CPU in the next 2 s: 75% of one core
    clock.advance(2)
    set_cpu(fake_host, "one-1", 3_500_000_000)
    assert dict(monitor(fake_host)["one-1"])["CPU"] == "75.00"
    # more than one core: 3 s in 1 s = 300% (capped at the host's cores x 100)
    clock.advance(1)
    set_cpu(fake_host, "one-1", 6_500_000_000)
    assert float(dict(monitor(fake_host)["one-1"])["CPU"]) == min(300.0, os.cpu_count() * 100)


def test_cpu_restarts_from_a_first_sample_after_counter_reset(
        v1_host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    clock = Clock(monkeypatch)
    v1_host.add("one-1")
    set_cpu(v1_host, "one-1", 5 * 10**9)
    monitor(v1_host)
    clock.advance(1)
    set_cpu(v1_host, "one-1", 1 * 10**9)  # went back: not the same counter any more
    assert dict(monitor(v1_host)["one-1"])["CPU"] == f"{100 * 1 / 11:.2f}"
    # a corrupted state file: first-sample figures again, no failure
    Path(state_path(v1_host, "vm-monitor")).write_bytes(b"\x00" * 50)
    clock.advance(1)
    assert dict(monitor(v1_host)["one-1"])["CPU"] == f"{100 * 1 / 12:.2f}"


def test_disk_sizes(v1_host: FakeHost, tmp_path: Path) -> None:
    disks = tmp_path / "ds" / "0" / "1"
    disks.mkdir(parents=True)
    with open(disks / "disk.0", "wb") as f:
        f.write(os.urandom(3 * (1 << 20) + 5))
    with open(disks / "disk.1", "wb") as f:
        f.truncate(100 << 20)  # sparse: nothing allocated
    (disks / "disk.3").mkdir()  # a plain directory: no cheap size, left out
    os.symlink(disks / "disk.0", disks / "disk.4")
    v1_host.add("one-1", disks=[{"id": 0, "path": str(disks / "disk.0")},
                                {"id": 1, "path": str(disks / "disk.1")},
                                {"id": 2, "path": str(disks / "missing")},
                                {"id": 3, "path": str(disks / "disk.3")},
                                {"id": 4, "path": str(disks / "disk.4")}])
    m = [v for n, v in monitor(v1_host)["one-1"] if n == "DISK_SIZE"]

    def du(p: str) -> str:
        return subprocess.run(["du", "-mL", p], capture_output=True, text=True,
                              check=True).stdout.split()[0]

    assert m == [{"ID": "0", "SIZE": du(str(disks / "disk.0"))},
                 {"ID": "1", "SIZE": du(str(disks / "disk.1"))},
                 {"ID": "4", "SIZE": du(str(disks / "disk.4"))}]
    assert m[0]["SIZE"] == "4" and m[1]["SIZE"] == "0"


def test_block_device_and_mount_point_sizes() -> None:
    from lxcone.monitor.probes import _disk_size_mb

    blocks = [b for b in os.listdir("/sys/block") if not b.startswith(("loop", "zram"))]
    if blocks:
        sectors = int(Path(f"/sys/block/{blocks[0]}/size").read_text())
        dev = f"/dev/{blocks[0]}"
        if os.path.exists(dev):
            assert _disk_size_mb(dev) == -(-sectors * 512 // (1 << 20))
    st = os.statvfs("/")
    assert _disk_size_mb("/") == -(-(st.f_blocks - st.f_bfree) * st.f_frsize // (1 << 20))


def test_one_bad_container_does_not_fail_the_probe(fake_host: FakeHost,
                                                   capsys: pytest.CaptureFixture) -> None:
    fake_host.add("one-1")
    fake_host.add("one-2")
    fake_host.add("one-3")
    p2 = fake_host.managers["one-2"].paths
    if fake_host.kind == "v2":
        Path(p2["unified"], "io.stat").write_text("8:0 rbytes=many\n")
    else:
        Path(p2["blkio"], "blkio.throttle.io_service_bytes_recursive").write_text(
            "8:0 Read lots\n")
    p3 = fake_host.managers["one-3"].paths
    for d in set(p3.values()):
        shutil.rmtree(d)  # the cgroup went away under us
    got = monitor(fake_host)
    assert "one-1" in got and "one-2" not in got
    assert "one-2" in capsys.readouterr().err
    # init (this process) still runs: what is left is its network view
    assert set(dict(got["one-3"])) == {"NETRX", "NETTX"}


def test_a_container_vanishing_mid_run(v1_host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    for i in range(1, 4):
        v1_host.add(f"one-{i}")
    real = cgroupfs.sample

    def sample(paths, io=True):
        if paths["memory"].endswith("/one-2"):
            v1_host.managers["one-2"].destroy()
            shutil.rmtree(v1_host.run_dir / "one-2")
        return real(paths, io)

    monkeypatch.setattr(cgroupfs, "sample", sample)
    got = monitor(v1_host)
    assert {"one-1", "one-3"} <= set(got)
    assert "CPU" not in dict(got.get("one-2", []))


# -- the entry point ---------------------------------------------------------------------------

def test_main_exit_codes(v1_host: FakeHost, monkeypatch: pytest.MonkeyPatch,
                         capsys: pytest.CaptureFixture) -> None:
    v1_host.add("one-1")
    assert probes.main("lxcone-vm-status", ["lxcone", "0", "node1"]) == 0
    assert "one-1" in capsys.readouterr().out
    assert probes.main("/x/vm/monitor/lxcone-vm-monitor", ["lxcone", "0", "node1"]) == 0
    assert probes.main("lxcone-bogus", ["lxcone", "0", "node1"]) == 1
    assert "unknown probe" in capsys.readouterr().err
    real = os.listdir

    def denied(path):
        if str(path) == str(v1_host.run_dir):
            raise PermissionError(13, "Permission denied", path)
        return real(path)

    monkeypatch.setattr(os, "listdir", denied)
    assert probes.main("lxcone-vm-status", ["lxcone", "0", "node1"]) == 1
    assert probes.main("lxcone-vm-monitor", ["lxcone", "0", "node1"]) == 1
    assert "Permission denied" in capsys.readouterr().err


def test_status_refuses_to_guess_when_records_are_unreadable(
        v1_host: FakeHost, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    v1_host.add("one-1")
    v1_host.add("one-2")
    real = os.stat

    def stat(path, *a, **kw):
        if "one-2/state.json" in str(path):
            raise PermissionError(13, "Permission denied", path)
        return real(path, *a, **kw)

    monkeypatch.setattr(os, "stat", stat)
    # STATE_VM would declare one-2 missing (then POWEROFF): fail the group instead
    assert probes.main("lxcone-vm-status", ["lxcone", "0", "n"]) == 1
    assert "permission denied" in capsys.readouterr().err
    # MONITOR_VM may skip it (a gap in a graph, no state change)
    assert probes.main("lxcone-vm-monitor", ["lxcone", "0", "n"]) == 0
    out = capsys.readouterr()
    assert "one-1" in out.out and "one-2" not in out.out


def test_state_files_live_under_the_run_dir_by_default(v1_host: FakeHost,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LXCONE_MONITOR_STATE_DIR")
    v1_host.add("one-1")
    for p in ("vm-status", "vm-monitor", "host-monitor"):
        assert probes.main(f"lxcone-{p}", ["lxcone", "7", "node1"]) == 0
    assert sorted(os.listdir(v1_host.run_dir / ".monitor")) == [
        "host-monitor-7.state", "vm-monitor-7.state", "vm-status-7.state"]


def test_probe_name() -> None:
    assert probes.probe_name("/var/tmp/one/im/lxcone-probes.d/vm/monitor/lxcone-vm-monitor") \
        == "vm-monitor"
    assert probes.probe_name("vm_status") == "vm-status"


def test_monitor_output_units_are_sane(v1_host: FakeHost) -> None:
    v1_host.add("one-1")
    set_memory(v1_host, "one-1", 2 * GIB)
    m = as_dict(base64.b64decode(parse(probes.vm_monitor(
        str(v1_host.run_dir), state_path(v1_host, "vm-monitor")))[0][1]["MONITOR"]).decode())
    assert int(m["MEMORY"]) == (2 * GIB - 577536) // 1024  # KiB
    assert 0 <= float(m["CPU"]) <= os.cpu_count() * 100
    for k in ("NETRX", "NETTX", "DISKRDBYTES", "DISKWRBYTES", "DISKRDIOPS", "DISKWRIOPS"):
        assert m[k].isdigit()


def test_steady_state_runs_import_nothing_heavy(v1_host: FakeHost) -> None:
    """After a first run has cached every state.json, a probe run imports no json (nor re,
    dataclasses, ...): what onemonitord pays every 5 and 30 seconds."""
    import sys

    v1_host.add("one-1")
    v1_host.add("one-2", "stopped")
    root = str(Path(probes.__file__).resolve().parents[2])
    code = ("import sys; sys.path.insert(0, sys.argv[1])\n"
            "from lxcone.monitor import probes\n"
            "for p in ('vm-monitor', 'vm-status'):\n"
            "    assert probes.main(p, ['lxcone', '0', 'n']) == 0\n"
            "bad = {'json', 're', 'dataclasses', 'pathlib', 'typing', 'xml', 'contextlib',\n"
            "       'lxcone.cgroups', 'lxcone.runtime', 'cffi', 'pyroute2'} & set(sys.modules)\n"
            "sys.stderr.write(repr(sorted(bad)))\n")
    runs = [subprocess.run([sys.executable, "-I", "-S", "-c", code, root], capture_output=True,
                           text=True, env=dict(os.environ), stdin=subprocess.DEVNULL, check=True)
            for _ in range(2)]
    assert "json" in runs[0].stderr  # the first run parsed the records
    assert runs[1].stderr == "[]"
