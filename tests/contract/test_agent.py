"""The resident agent as oned meets it: started on first use, serving actions, replaceable at
any time without touching running containers, and refusing what it must refuse."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from contract.oned import (
    agent_of_another_version,
    loops_backed_by,
    python_client_runs,
    recording_python,
    running_agent,
    ssh_stream,
)
from lxcone import native, procstat
from lxcone.agent import server, wire
from lxcone.testing.fixtures import needs_root
from lxcone.testing.helpers import wait_for
from lxcone.testing.vmxml import action_data, disk, vm_xml

pytestmark = [pytest.mark.root, needs_root]


@pytest.fixture
def agent_cfg(request, tmp_path, runtime, datastore):
    """The agent's config and the actions' env: the shim on the C client (``native.CLIENT``),
    or on the Python client when the test is parametrized with ``python``. LXCONE_PYTHON logs
    its runs (``python_client_runs(tmp_path / "python-runs.log")``)."""
    cfg = tmp_path / "agent.toml"
    cfg.write_text(f'run_dir = "{runtime.run_dir}"\ncgroup_parent = "{runtime.cgroup_parent}"\n'
                   f'host_netns = "{runtime.host_netns}"\nstop_signal = "SIGUSR2"\n'
                   f'datastores = "{datastore.parent.parent}"\nagent = true\n')
    python, _ = recording_python(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "LXCONE_CLIENT"}
    env.update(LXCONE_PYTHON=python, LXCONE_CONFIG=str(cfg))
    if getattr(request, "param", "c") == "c":
        env["LXCONE_CLIENT"] = native.CLIENT
    yield env, cfg
    server.stop(runtime.run_dir, timeout=60)  # an agent the client started on its own
    assert server.read_pid(runtime.run_dir) is None


def deploy(env, datastore, vm_id=12):
    xml = vm_xml(vm_id, nics=[], disks=[disk(0)])
    return ssh_stream(env, "deploy", str(datastore.parent / str(vm_id) / "deployment.0"),
                      "node1", str(vm_id), "node1", stdin=xml)


def cancel(env, vm_id=12):
    xml = action_data(vm_xml(vm_id, deploy_id=f"one-{vm_id}", nics=[], disks=[disk(0)]))
    return ssh_stream(env, "cancel", f"one-{vm_id}", "node1", str(vm_id), "node1", stdin=xml)


def served(run_dir: str) -> list[str]:
    """The actions the agent logged, each just after sending its reply: a client may have
    returned a moment before the line is there."""
    log = Path(run_dir) / "agent.log"
    return [line for line in log.read_text().splitlines() if " exit " in line] \
        if log.exists() else []


BOTH_CLIENTS = pytest.mark.parametrize("agent_cfg", ["c", "python"], indirect=True)


@BOTH_CLIENTS
def test_the_first_action_starts_the_agent_and_the_next_ones_use_it(agent_cfg, runtime,
                                                                    datastore):
    env, _ = agent_cfg
    p = deploy(env, datastore)  # no agent yet: runs in its own process, starts one
    assert (p.returncode, p.stdout) == (0, b"one-12\n"), p.stderr
    wait_for(lambda: server.read_pid(runtime.run_dir) is not None, 30)
    wait_for((Path(runtime.run_dir) / "agent.sock").exists, 30)
    assert served(runtime.run_dir) == []
    p = cancel(env)
    assert p.returncode == 0, p.stderr
    wait_for(lambda: served(runtime.run_dir), 10)  # logged just after the reply
    assert [line.split("lxcone-agent: ")[1].split(" in ")[0] for line in served(runtime.run_dir)
            ] == ["cancel vm 12 exit 0"]
    assert runtime.list() == [] and loops_backed_by(str(datastore)) == []


@BOTH_CLIENTS
def test_containers_outlive_a_killed_agent_and_a_new_agent_manages_them(agent_cfg, runtime,
                                                                       datastore):
    env, _ = agent_cfg
    assert deploy(env, datastore).returncode == 0  # starts the agent
    wait_for((Path(runtime.run_dir) / "agent.sock").exists, 30)
    first = server.read_pid(runtime.run_dir)
    init = runtime.state("one-12").pid
    os.kill(first, signal.SIGKILL)
    wait_for(lambda: server.read_pid(runtime.run_dir) is None, 10)
    assert runtime.state("one-12").status == "running" and runtime.state("one-12").pid == init
    # The dead agent's socket is still there: the client neither hangs on it nor fails; it runs
    # the action itself and starts a new agent, which then manages the container.
    p = ssh_stream(env, "poll", "one-12", "node1", "12", "node1", stdin=b"")
    assert (p.returncode, p.stdout) == (0, b"STATE=a\n"), p.stderr
    wait_for(lambda: server.read_pid(runtime.run_dir) not in (None, first), 30)
    assert cancel(env).returncode == 0
    wait_for(lambda: any(" cancel vm 12 exit 0 " in x for x in served(runtime.run_dir)), 10)
    assert runtime.list() == [] and loops_backed_by(str(datastore)) == []


def children_of(pid: int) -> list[int]:
    return [int(c) for task in os.listdir(f"/proc/{pid}/task")
            for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]


def monitor_zombies_of(pid: int) -> list[int]:
    return [c for c in children_of(pid)
            if "(lxcone-monitor) Z" in Path(f"/proc/{c}/stat").read_text()]


def test_the_agent_reaps_the_monitor_of_a_guest_that_powered_itself_off(agent_cfg, runtime,
                                                                       datastore):
    env, cfg = agent_cfg
    with running_agent(cfg, runtime.run_dir):
        assert deploy(env, datastore).returncode == 0
        agent = server.read_pid(runtime.run_dir)
        monitor = runtime.state("one-12").monitor_pid
        assert monitor in children_of(agent)  # the agent started it: its zombie is ours
        # busybox init: power off, once it can receive it (the deploy returns at its exec)
        wait_for(lambda: procstat.receives(runtime.state("one-12").pid, signal.SIGUSR2), 10)
        runtime.kill("one-12", signal.SIGUSR2)
        wait_for(lambda: runtime.state("one-12").status == "stopped", 20)
        wait_for(lambda: not Path(f"/proc/{monitor}").exists(), 10)  # reaped, not a zombie
        assert monitor_zombies_of(agent) == []
        assert cancel(env).returncode == 0  # releases the disks of the stopped VM
    assert loops_backed_by(str(datastore)) == []


def test_a_client_of_another_version_is_reset_and_runs_the_action_itself(agent_cfg, runtime):
    _, cfg = agent_cfg
    with running_agent(cfg, runtime.run_dir) as log:
        s = socket.socket(socket.AF_UNIX)
        s.connect(str(Path(runtime.run_dir) / "agent.sock"))
        s.sendall(b"LXA0" + bytes(12))
        with pytest.raises(ConnectionResetError):
            s.recv(1)
        s.close()
        wait_for(lambda: "the client runs it itself" in log.read_text(), 10)


@pytest.mark.parametrize("group", ["", "nogroup"])
def test_only_root_and_the_agent_group_may_ask_the_agent(tmp_path, group):
    # A run dir that uid 65534 can reach (pytest's tmp dirs are root-only).
    run_dir = Path(tempfile.mkdtemp(prefix="lxcone-uid-"))
    try:
        run_dir.chmod(0o755)
        cfg = tmp_path / "agent.toml"
        cfg.write_text(f'run_dir = "{run_dir}"\nagent_group = "{group}"\n')
        with running_agent(cfg, str(run_dir)):
            sock = run_dir / "agent.sock"
            if group:
                assert (sock.stat().st_mode & 0o777, sock.stat().st_gid) == (0o660, 65534)
            else:
                assert sock.stat().st_mode & 0o777 == 0o600
                sock.chmod(0o666)  # as if an operator opened it up: the agent still checks
            request = wire.encode_fields([str(cfg).encode(), b"poll", b"one-12", b"h", b"12",
                                          b"h", b""])
            code = ("import socket,sys; s=socket.socket(socket.AF_UNIX); s.connect(sys.argv[1]);"
                    " s.sendall(bytes.fromhex(sys.argv[2])); sys.stdout.buffer.write(s.recv(4096))")
            # The venv's interpreter lives under /root, which uid 65534 cannot enter.
            python = shutil.which("python3", path="/usr/bin:/bin")
            if python is None:
                pytest.skip("no system python3 for an unprivileged client")
            p = subprocess.run([python, "-c", code, str(sock), request.hex()], user=65534,
                               group=65534, extra_groups=[], capture_output=True, timeout=30,
                               check=True)
            if group:
                assert p.stdout == wire.encode_reply(0, b"STATE=d\n", b"")
            else:
                assert p.stdout == wire.encode_reply(
                    1, b"", b"ERROR: poll: uid 65534 may not run actions\n")
    finally:
        shutil.rmtree(run_dir)


def test_two_vms_deploy_at_once_through_the_agent(agent_cfg, runtime, datastore):
    env, cfg = agent_cfg
    shutil.copytree(datastore, datastore.parent / "13")
    with running_agent(cfg, runtime.run_dir) as log, ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda v: deploy(env, datastore, v), (12, 13)))
        assert [(p.returncode, p.stdout) for p in results] == [(0, b"one-12\n"),
                                                               (0, b"one-13\n")], results
        assert {s.name: s.status for s in runtime.list()} == {"one-12": "running",
                                                                "one-13": "running"}
        assert all(p.returncode == 0 for p in pool.map(lambda v: cancel(env, v), (12, 13)))
        # each logged just after its reply
        wait_for(lambda: log.read_text().count(" exit 0 ") == 4, 10)
    assert runtime.list() == [] and loops_backed_by(str(datastore.parent)) == []


# -- the C client's way out: whatever is not the agent's goes to the Python client -------------


def test_with_agent_false_the_c_client_leaves_the_action_to_the_python_client(
        agent_cfg, runtime, datastore, tmp_path):
    env, cfg = agent_cfg
    cfg.write_text(cfg.read_text().replace("agent = true", "agent = false"))
    assert (deploy(env, datastore).returncode, runtime.state("one-12").status) == (0, "running")
    assert cancel(env).returncode == 0
    assert len(python_client_runs(tmp_path / "python-runs.log")) == 2
    assert not (Path(runtime.run_dir) / "agent.sock").exists()
    assert runtime.list() == [] and loops_backed_by(str(datastore)) == []


def test_an_agent_of_another_version_leaves_a_large_action_to_the_client(agent_cfg, runtime,
                                                                        datastore, tmp_path):
    """The C client reads 5 MiB of XML, is reset while sending it, and hands it to the Python
    client in a memfd; that one is reset too, and runs the action in its own process (the
    agent it starts for the next actions finds the lock taken and exits). The deploy parses
    the whole XML: its closing tags come after the padding."""
    env, _ = agent_cfg
    unit = "<VM> & ]] caf\u00e9 '\"\n"
    pad = unit * ((5 << 20) // len(unit) + 1)
    xml = vm_xml(12, nics=[], disks=[disk(0)], user={"PAD": pad})
    assert len(xml) > 5 << 20
    log = Path(runtime.run_dir) / "agent.log"
    with agent_of_another_version(runtime.run_dir) as resets:
        p = ssh_stream(env, "deploy", str(datastore / "deployment.0"), "node1", "12", "node1",
                       stdin=xml)
        assert (p.returncode, p.stdout) == (0, b"one-12\n"), p.stderr
        assert runtime.state("one-12").status == "running"
        assert cancel(env).returncode == 0
        assert len(resets) == 4  # each action: the C client, then the Python client
        assert len(python_client_runs(tmp_path / "python-runs.log")) == 2
        # the agents the Python client started (one per action) gave up on the taken lock
        wait_for(lambda: log.exists() and log.read_text().count("not starting") == 2, 30)
    assert runtime.list() == [] and loops_backed_by(str(datastore)) == []


@pytest.mark.parametrize(("line", "spelled"), [
    ('cgroup_parent = "{cg}"', 'cgroup_parent = """{cg}"""'),  # a multi-line string, one line
    ('stop_signal = "SIGUSR2"', 'stop_signal = "SIG\\u0055SR2"'),  # an escape
])
def test_a_config_the_scans_are_not_sure_of_runs_the_action_in_process(
        agent_cfg, runtime, datastore, tmp_path, line, spelled):
    env, cfg = agent_cfg
    line, spelled = (x.format(cg=runtime.cgroup_parent) for x in (line, spelled))
    assert line in cfg.read_text()
    cfg.write_text(cfg.read_text().replace(line, spelled))
    assert subprocess.run([native.CLIENT, "--scan-config", str(cfg)], capture_output=True,
                          check=True).stdout == b"?\n"
    with running_agent(cfg, runtime.run_dir) as log:
        assert deploy(env, datastore).returncode == 0
        assert runtime.state("one-12").status == "running"
        assert cancel(env).returncode == 0
        assert len(python_client_runs(tmp_path / "python-runs.log")) == 2
    assert " exit " not in log.read_text(), "the agent served an action"
    assert runtime.list() == [] and loops_backed_by(str(datastore)) == []


def test_a_config_with_a_table_fails_with_the_drivers_error_not_the_clients(agent_cfg,
                                                                           tmp_path):
    env, cfg = agent_cfg
    cfg.write_text(cfg.read_text() + "[extra]\nx = 1\n")
    p = ssh_stream(env, "poll", "one-12", "node1", "12", "node1", stdin=b"")
    assert p.returncode == 1 and p.stdout == b""
    assert p.stderr.startswith(b"ERROR: poll: ") and b"unknown key 'extra'" in p.stderr, p.stderr
    assert len(python_client_runs(tmp_path / "python-runs.log")) == 1
