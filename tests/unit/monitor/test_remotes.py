"""remotes/im: laid out and wired as OpenNebula's own lxc driver is, and every probe group run
the way OpenNebula's monitord client runs it (ProbeRunner in common.d/monitord-client.rb:
every executable regular file of the group dir, ``<probe> lxcone <host id> <host name>``, the
MONITOR_CONFIGURATION XML on stdin, stdouts concatenated, any non-zero exit fails the group)."""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import FakeHost
from .one_template import parse
from .remotes_tree import make_remotes
from .remotes_tree import probe as probe_in

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


# -- the run dir from the driver's lxcone.toml -------------------------------------------------


def run_probe(exe: Path, env: dict[str, str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(exe), "lxcone", "0", "node1"], input=XML.encode(),
                          capture_output=True, env=env, timeout=30, check=False, cwd=cwd)


def test_the_probes_take_run_dir_from_the_remotes_lxcone_toml(v1_host: FakeHost,
                                                              tmp_path: Path) -> None:
    """No LXCONE_RUN_DIR (as onemonitord runs them): the run dir is the one the operator set in
    <remotes>/etc/vmm/lxcone/lxcone.toml, next to the probes, not /run/lxcone."""
    v1_host.add("one-4")
    remotes = make_remotes(tmp_path / "var-tmp-one",
                           f'# as shipped, with the run dir changed\nrun_dir = "{v1_host.run_dir}"'
                           '\nagent = true\ncgroup_parent = "lxcone"\n')
    env = {"PATH": "/usr/bin:/bin"}
    status = run_probe(probe_in(remotes, "vm/status"), env, tmp_path)
    assert status.returncode == 0, status.stderr
    assert {v["DEPLOY_ID"]: v["STATE"] for n, v in parse(status.stdout.decode())
            if n == "VM"} == {"one-4": "RUNNING"}
    monitor = run_probe(probe_in(remotes, "vm/monitor"), env, tmp_path)
    assert monitor.returncode == 0, monitor.stderr
    assert [v["DEPLOY_ID"] for _, v in parse(monitor.stdout.decode())] == ["one-4"]
    # their state went to <run dir>/.monitor, the default state dir of that run dir
    assert sorted(os.listdir(v1_host.run_dir / ".monitor")) == ["vm-monitor-0.state",
                                                                 "vm-status-0.state"]
    # the environment still wins (the tests' way in)
    env["LXCONE_RUN_DIR"] = str(tmp_path / "elsewhere")
    status = run_probe(probe_in(remotes, "vm/status"), env, tmp_path)
    assert status.returncode == 0 and b"one-4" not in status.stdout


@pytest.mark.parametrize(("config", "words"), [
    (b"run_dir = [\n", b"Invalid value"),
    (b"run_dir = 7\n", b"run_dir must be a string"),
    (b'run_dir = "relative/run"\n', b"run_dir must be an absolute path"),
    (b'run_dir = "/srv/\xff"\n', b"not UTF-8 text"),
])
@pytest.mark.parametrize("group", ["vm/status", "vm/monitor", "host/monitor"])
def test_a_bad_lxcone_toml_fails_the_probe_loudly(v1_host: FakeHost, tmp_path: Path,
                                                  group: str, config: bytes,
                                                  words: bytes) -> None:
    """A malformed file or value must not turn into "no containers on this host": the probe
    exits 1 (the agent then reports the group as failed) with one line naming the file."""
    v1_host.add("one-4")
    remotes = make_remotes(tmp_path / "var-tmp-one", config)
    r = run_probe(probe_in(remotes, group), {"PATH": "/usr/bin:/bin"}, tmp_path)
    cfg = remotes / "etc/vmm/lxcone/lxcone.toml"
    assert (r.returncode, r.stdout) == (1, b"")
    assert r.stderr.startswith(f"lxcone {group.replace('/', '-')}: {cfg}: ".encode())
    assert words in r.stderr and r.stderr.count(b"\n") == 1


def test_host_probes_without_a_run_dir_ignore_the_config(tmp_path: Path) -> None:
    remotes = make_remotes(tmp_path / "var-tmp-one", b"run_dir = [\n")
    for group in ("host/system", "host/beacon"):
        r = run_probe(probe_in(remotes, group), {"PATH": "/usr/bin:/bin"}, tmp_path)
        assert r.returncode == 0 and r.stdout, (group, r.stderr)


def test_through_sudo_the_probe_still_finds_its_config(v1_host: FakeHost,
                                                       tmp_path: Path) -> None:
    """As oneadmin the launcher re-executes itself as root through sudo (the sudoers rule of
    `python -m lxcone.install host`): it must hand root its own path, which locates the remotes
    tree, not only its name. sudo is not run here (a stand-in records the command), then the
    recorded command runs as root would run it: isolated, from another directory, no env."""
    v1_host.add("one-4")
    remotes = make_remotes(tmp_path / "var-tmp-one", f'run_dir = "{v1_host.run_dir}"\n')
    (remotes / "etc/vmm/lxcone/python").write_text(sys.executable + "\n")
    exe = probe_in(remotes, "vm/status")
    shim = ("import os, runpy, sys\n"
            "os.geteuid = lambda: 1000\n"
            "real_exists = os.path.exists\n"
            "os.path.exists = lambda p: p == '/usr/bin/sudo' or real_exists(p)\n"
            "def execv(path, argv):\n"
            "    print(repr((path, argv))); sys.exit(0)\n"
            "os.execv = execv\n"
            "sys.argv = sys.argv[1:]\n"
            "runpy.run_path(sys.argv[0], run_name='__main__')\n")
    r = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", shim, str(exe), "lxcone", "0",
                        "node1"], capture_output=True, text=True, check=False, cwd=tmp_path,
                       env={"PATH": "/usr/bin:/bin"})
    assert r.returncode == 0, r.stderr
    path, argv = ast.literal_eval(r.stdout)
    assert path == "/usr/bin/sudo"
    assert argv == ["sudo", "-n", sys.executable, "-I", "-m", "lxcone.monitor.probes", str(exe),
                    "lxcone", "0", "node1"]
    root = subprocess.run(argv[2:], input=XML.encode(), capture_output=True, check=False,
                          cwd="/", env={"PATH": "/usr/bin:/bin"}, timeout=60)
    assert root.returncode == 0, root.stderr
    assert [v["DEPLOY_ID"] for n, v in parse(root.stdout.decode()) if n == "VM"] == ["one-4"]
