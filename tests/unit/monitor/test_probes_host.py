"""SYSTEM_HOST, MONITOR_HOST and BEACON_HOST: strict template syntax, OpenNebula's units, and
the values checked against the host's own tools (df, /proc, uname)."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

import lxcone
from lxcone.monitor import host, netdev, probes

from .one_template import as_dict

SYSTEM_KEYS = {"HYPERVISOR", "TOTALCPU", "CPUSPEED", "TOTALMEMORY", "ARCH", "HOSTNAME",
               "VERSION", "DS_LOCATION_USED_MB", "DS_LOCATION_TOTAL_MB", "DS_LOCATION_FREE_MB"}


def meminfo_kib(key: str) -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


def df_mb(path: str) -> tuple[int, int, int]:
    """(used, total, free) as ONE's monitor_ds.rb takes them from df."""
    out = subprocess.run(["df", "-B1M", "-P", path], capture_output=True, text=True,
                         check=True).stdout
    f = out.splitlines()[-1].split()
    return int(f[2]), int(f[1]), int(f[3])


def config_xml(location: str) -> str:
    return (f"<MONITOR_CONFIGURATION><DATASTORE_LOCATION><![CDATA[{location}]]>"
            "</DATASTORE_LOCATION><HOST_ID>0</HOST_ID></MONITOR_CONFIGURATION>")


def test_system_host(tmp_path: Path) -> None:
    ds = tmp_path / "datastores"
    for name, marked in [("0", True), ("1", False), ("100", True), ("abc", True)]:
        (ds / name).mkdir(parents=True)
        if marked:
            (ds / name / ".monitor").write_text("ssh\n")
    (ds / "7").write_text("a file")
    out = probes.host_system(config_xml(str(ds)))
    t = as_dict(out.replace("DS=[", "DS_0=[", 1).replace("DS=[", "DS_100=[", 1))
    assert set(t) >= SYSTEM_KEYS
    assert t["HYPERVISOR"] == "lxcone"
    assert int(t["TOTALCPU"]) == os.cpu_count() * 100
    assert int(t["TOTALMEMORY"]) == meminfo_kib("MemTotal")
    assert int(t["CPUSPEED"]) >= 0
    assert t["ARCH"] == os.uname().machine
    assert t["HOSTNAME"] == os.uname().nodename
    assert t["VERSION"] == lxcone.__version__
    has_v1 = any(line.split()[2] == "cgroup" for line in Path("/proc/self/mounts").read_text()
                 .splitlines())
    assert t.get("CGROUPS_VERSION") == ("1" if has_v1 else "2")
    used, total, free = df_mb(str(ds))
    assert (int(t["DS_LOCATION_USED_MB"]), int(t["DS_LOCATION_TOTAL_MB"]),
            int(t["DS_LOCATION_FREE_MB"])) == pytest.approx((used, total, free), abs=2)
    assert t["DS_0"]["ID"] == "0" and t["DS_100"]["ID"] == "100"
    assert set(t["DS_0"]) == {"ID", "USED_MB", "TOTAL_MB", "FREE_MB"}
    assert int(t["DS_0"]["TOTAL_MB"]) == total
    assert out.count("DS=[") == 2  # 1 has no .monitor, abc is not a datastore id, 7 is a file


def test_missing_datastore_location_reports_zeros(tmp_path: Path) -> None:
    t = as_dict(probes.host_system(config_xml(str(tmp_path / "nope"))))
    assert (t["DS_LOCATION_USED_MB"], t["DS_LOCATION_TOTAL_MB"]) == ("0", "0")
    assert "DS" not in t


def test_hostile_host_strings_stay_one_attribute_each(monkeypatch: pytest.MonkeyPatch) -> None:
    real = os.uname()

    class Uname:
        sysname, release, version = real.sysname, real.release, real.version
        machine = 'x86"64\\'
        nodename = 'evil"\nVM = [ ID="1" ]]]>\\'

    monkeypatch.setattr(os, "uname", lambda: Uname)
    monkeypatch.setattr(host, "cpuinfo_text",
                        lambda: 'model name\t: Fake "CPU"\u2028 @ 2GHz\\\ncpu MHz\t: 1999.6\n')
    t = as_dict(probes.host_system(""))
    assert t["HOSTNAME"] == 'evil" VM = [ ID="1" ]]] >'
    assert t["ARCH"] == 'x86"64'
    assert t["MODELNAME"] == 'Fake "CPU"  @ 2GHz'
    assert t["CPUSPEED"] == "2000"
    assert "VM" not in t


@pytest.mark.parametrize(("mounts", "version"), [
    (b"cgroup /sys/fs/cgroup/memory cgroup rw 0 0\ncgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n",
     "1"),
    (b"cgroup2 /sys/fs/cgroup cgroup2 rw 0 0\n", "2"),
    (b"cgroup /sys/fs/cgroup/systemd cgroup rw,name=systemd 0 0\n", "1"),
    (b"proc /proc proc rw 0 0\n", None),
])
def test_cgroups_version(mounts: bytes, version: str | None) -> None:
    assert host.cgroups_version(mounts) == version


def test_cpuinfo_parsing() -> None:
    assert host.model_name("processor\t: 0\ncpu\t\t: POWER9 (raw)\n") == "POWER9 (raw)"
    assert host.model_name("model name\t: AMD EPYC\ncpu\t: x\n") == "AMD EPYC"
    assert host.model_name("processor: 0\n") is None
    assert host.cpu_mhz("cpu MHz\t\t: 2596.122\n") == 2596


def test_physical_nics(tmp_path: Path) -> None:
    for name, device in [("eth0", True), ("enp3s0", True), ("br0", False), ("veth1", False),
                         ("lo", False), ("bond0", False)]:
        (tmp_path / name).mkdir()
        if device:
            (tmp_path / name / "device").mkdir()
    assert host.physical_nics(str(tmp_path)) == ["enp3s0", "eth0"]


def test_monitor_host_units_and_cpu_delta(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    state = str(tmp_path / "host-monitor-0.state")
    total = os.cpu_count() * 100
    nics = [n for n in os.listdir("/sys/class/net") if os.path.exists(f"/sys/class/net/{n}/device")]

    def nic_bytes() -> tuple[int, int]:
        c = netdev.parse_net_dev(Path("/proc/net/dev").read_text())
        return (sum(c[n].rx_bytes for n in nics if n in c),
                sum(c[n].tx_bytes for n in nics if n in c))

    before = nic_bytes()
    t = as_dict(probes.host_monitor(state))
    after = nic_bytes()
    assert set(t) == {"HYPERVISOR", "USEDMEMORY", "FREEMEMORY", "FREECPU", "USEDCPU", "NETRX",
                      "NETTX"}
    assert int(t["USEDMEMORY"]) + int(t["FREEMEMORY"]) == meminfo_kib("MemTotal")
    assert int(t["USEDCPU"]) + int(t["FREECPU"]) == total
    assert 0 <= int(t["FREECPU"]) <= total
    assert before[0] <= int(t["NETRX"]) <= after[0]
    assert before[1] <= int(t["NETTX"]) <= after[1]
    # the delta against the previous run: 50 of 100 jiffies idle -> half the CPU free
    from lxcone.monitor import procfs

    monkeypatch.setattr(procfs, "cpu_times", lambda: (1000, 2000))
    probes.host_monitor(state)
    monkeypatch.setattr(procfs, "cpu_times", lambda: (1050, 2100))
    t = as_dict(probes.host_monitor(state))
    assert (int(t["FREECPU"]), int(t["USEDCPU"])) == (total // 2, total - total // 2)
    # no usable previous sample (corrupt state, or counters went back: a reboot): since boot
    Path(state).write_bytes(b"junk")
    monkeypatch.setattr(procfs, "cpu_times", lambda: (900, 1000))
    assert int(as_dict(probes.host_monitor(state))["FREECPU"]) == round(total * 0.9)
    monkeypatch.setattr(procfs, "cpu_times", lambda: (10, 100))
    assert int(as_dict(probes.host_monitor(state))["FREECPU"]) == round(total * 0.1)


def test_cpu_times_is_the_proc_stat_cpu_line() -> None:
    from lxcone.monitor.procfs import cpu_times

    idle, total = cpu_times()
    first = Path("/proc/stat").read_text().splitlines()[0].split()
    assert first[0] == "cpu"
    assert 0 < idle <= total
    assert total >= sum(int(x) for x in first[1:9]) - 1000


def test_beacon_is_the_epoch() -> None:
    out = probes.host_beacon()
    assert out.endswith("\n") and abs(int(out) - time.time()) < 5
