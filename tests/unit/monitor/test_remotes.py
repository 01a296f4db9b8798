"""remotes/im: laid out and wired as OpenNebula's own lxc driver is, and every probe group run
the way OpenNebula's monitord client runs it (ProbeRunner in common.d/monitord-client.rb:
every executable regular file of the group dir, ``<probe> lxcone <host id> <host name>``, the
MONITOR_CONFIGURATION XML on stdin, stdouts concatenated, any non-zero exit fails the group)."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from .conftest import FakeHost
from .one_template import parse

REMOTES = Path(__file__).resolve().parents[3] / "remotes" / "im"
PROBES = REMOTES / "lxcone-probes.d"
GROUPS = ["host/system", "host/monitor", "host/beacon", "vm/status", "vm/monitor",
          "vm/execution", "vm/snapshot"]
XML = ("<MONITOR_CONFIGURATION><DATASTORE_LOCATION><![CDATA[/var/lib/one//datastores]]>"
       "</DATASTORE_LOCATION><PROBES_PERIOD><SYNC_STATE_VM><![CDATA[180]]></SYNC_STATE_VM>"
       "</PROBES_PERIOD><HOST_ID>0</HOST_ID></MONITOR_CONFIGURATION>")


def executables(group: str) -> list[Path]:
    """What ProbeRunner#run_probes runs: File.file? && File.executable? (symlinks followed)."""
    d = PROBES / group
    return sorted(p for p in d.iterdir() if p.is_file() and os.access(p, os.X_OK))


def run_group(group: str, env: dict[str, str]) -> str:
    out = ""
    for probe in executables(group):
        r = subprocess.run([str(probe), "lxcone", "0", "node1"], input=XML.encode(),
                           capture_output=True, env=env, timeout=30, check=False)
        assert r.returncode == 0, (probe, r.stderr)
        out += r.stdout.decode()
    return out


def test_lxcone_d_is_wired_like_ones_lxc_d() -> None:
    d = REMOTES / "lxcone.d"
    entries = sorted(os.listdir(d))
    assert entries == ["monitord-client.rb", "monitord-client_control.sh"]
    for e in entries:
        assert os.path.islink(d / e)
        assert os.readlink(d / e) == f"../common.d/{e}"  # OpenNebula's own files, not copies


def test_all_seven_groups_exist_and_only_probes_are_executable() -> None:
    for group in GROUPS:
        d = PROBES / group
        assert d.is_dir(), group
        assert os.listdir(d), f"{group} is empty: git would not keep it"
        for p in d.iterdir():
            if p.name.startswith("README"):
                assert not os.access(p, os.X_OK), p
    runnable = {g: [p.name for p in executables(g)] for g in GROUPS}
    assert runnable == {"host/system": ["lxcone-host-system"],
                        "host/monitor": ["lxcone-host-monitor"],
                        "host/beacon": ["lxcone-host-beacon"],
                        "vm/status": ["lxcone-vm-status"], "vm/monitor": ["lxcone-vm-monitor"],
                        "vm/execution": [], "vm/snapshot": []}
    for g, names in runnable.items():
        for n in names:
            assert os.readlink(PROBES / g / n) == "../../lxcone-probe"
    launcher = (PROBES / "lxcone-probe").read_text()
    assert launcher.startswith("#!/usr/bin/python3 -IS\n")


def test_every_group_runs_as_monitord_runs_it(v1_host: FakeHost) -> None:
    v1_host.add("one-1")
    v1_host.add("one-2", "stopped")
    env = {"PATH": "/usr/bin:/bin", "LXCONE_RUN_DIR": str(v1_host.run_dir),
           "LXCONE_MONITOR_STATE_DIR": str(v1_host.run_dir.parent / "state")}
    system = dict(a for a in parse(run_group("host/system", env)) if a[0] != "DS")
    assert system["HYPERVISOR"] == "lxcone" and int(system["TOTALCPU"]) > 0
    monitor = dict(parse(run_group("host/monitor", env)))
    assert int(monitor["USEDCPU"]) + int(monitor["FREECPU"]) == int(system["TOTALCPU"])
    assert run_group("host/beacon", env).strip().isdigit()
    status = parse(run_group("vm/status", env))
    assert ("SYNC_STATE", "yes") in status
    assert {v["DEPLOY_ID"]: v["STATE"] for n, v in status if n == "VM"} == {
        "one-1": "RUNNING", "one-2": "POWEROFF"}
    vms = parse(run_group("vm/monitor", env))
    assert [v["DEPLOY_ID"] for _, v in vms] == ["one-1"]
    assert run_group("vm/execution", env) == run_group("vm/snapshot", env) == ""


def test_the_launcher_finds_lxcone_through_the_env(tmp_path: Path) -> None:
    # a copy of the remotes outside the checkout (as on a host): LXCONE_PYTHONPATH says where
    copy = tmp_path / "one" / "im" / "lxcone-probes.d"
    (copy / "host" / "beacon").mkdir(parents=True)
    probe = copy / "host" / "beacon" / "lxcone-host-beacon"
    probe.write_bytes((PROBES / "lxcone-probe").read_bytes())
    probe.chmod(0o755)
    env = {"PATH": "/usr/bin:/bin", "LXCONE_PYTHONPATH": str(REMOTES.parents[1])}
    r = subprocess.run([str(probe), "lxcone", "0", "n"], capture_output=True, env=env,
                       input=b"", check=False)
    assert r.returncode == 0 and r.stdout.strip().isdigit(), r.stderr
    env["LXCONE_PYTHONPATH"] = str(tmp_path / "nowhere")
    r = subprocess.run([str(probe), "lxcone", "0", "n"], capture_output=True, env=env,
                       input=b"", check=False)
    assert r.returncode == 1 and b"not installed" in r.stderr


@pytest.mark.parametrize("group", ["vm/status", "vm/monitor"])
def test_a_missing_run_dir_is_an_empty_host(group: str, tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "LXCONE_RUN_DIR": str(tmp_path / "none"),
           "LXCONE_MONITOR_STATE_DIR": str(tmp_path / "state")}
    out = run_group(group, env)
    assert all(n != "VM" for n, _ in parse(out))
