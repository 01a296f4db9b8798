"""The `lxcone` command as a user runs it: output, ERROR lines, exit codes, nothing left."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from lxcone.testing.fixtures import needs_root

pytestmark = [pytest.mark.root, needs_root]

LXCONE = os.path.join(os.path.dirname(sys.executable), "lxcone")


@pytest.fixture
def cli(run_dir, cgroup_parent, host_netns):
    base = [LXCONE, "--run-dir", run_dir, "--cgroup-parent", cgroup_parent,
            "--host-netns", host_netns]

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        p = subprocess.run([*base, *args], capture_output=True, text=True, timeout=60,
                           stdin=subprocess.DEVNULL, check=False)
        if check:
            assert p.returncode == 0, (p.returncode, p.stdout, p.stderr)
        return p

    yield run
    listed = run("list").stdout.split()
    for name in listed[::3]:
        run("delete", "-f", name, check=False)


def test_run_exec_state_stop_delete(cli, busybox_rootfs):
    out = cli("run", "c1", "--rootfs", busybox_rootfs, "--memory", "64M", "--cpus", "0.5",
              "--stop-signal", "USR2").stdout
    assert out.startswith("c1 running pid ")
    assert cli("exec", "c1", "--", "hostname").stdout == "c1\n"
    assert cli("exec", "c1", "--", "sh", "-c", "exit 5", check=False).returncode == 5
    state = json.loads(cli("state", "c1").stdout)
    assert state["status"] == "running" and state["pid"] > 1
    assert "c1" in cli("list").stdout
    cli("freeze", "c1")
    assert json.loads(cli("state", "c1").stdout)["status"] == "frozen"
    cli("thaw", "c1")
    cli("stop", "c1", "-t", "10")
    assert json.loads(cli("state", "c1").stdout)["status"] == "stopped"
    assert b"shutting down" in cli("console-log", "c1").stdout.encode()
    cli("delete", "c1")
    assert cli("list").stdout == ""


@pytest.mark.parametrize(("args", "message"), [
    (["run", "bad/name", "--rootfs", "/tmp"], "name"),
    (["run", "c2", "--rootfs", "/nonexistent"], "does not exist"),
    (["run", "c2", "--rootfs", "{rootfs}", "--memory", "lots"], "size"),
    (["run", "c2", "--rootfs", "{rootfs}", "--cpus", "-1"], "cpu"),
    (["run", "c2", "--rootfs", "{rootfs}", "--", "/sbin/missing-init"], "does not exist"),
    (["run", "c2"], "required: --rootfs"),
    (["frobnicate"], "invalid choice"),
    (["stop", "ghost"], "no such container"),
    (["exec", "ghost", "--", "true"], "no such container"),
    (["delete", "../../etc"], "no such container"),
])
def test_errors_are_one_clear_line_and_leave_nothing(cli, busybox_rootfs, run_dir, args, message):
    args = [a.replace("{rootfs}", busybox_rootfs) for a in args]
    p = cli(*args, check=False)
    assert p.returncode != 0
    assert p.stderr.startswith("ERROR: ") and message.lower() in p.stderr.lower(), p.stderr
    assert "Traceback" not in p.stderr
    assert cli("list").stdout == ""


def test_duplicate_run_fails_and_keeps_the_first(cli, busybox_rootfs):
    cli("run", "dup", "--rootfs", busybox_rootfs, "--stop-signal", "USR2")
    p = cli("run", "dup", "--rootfs", busybox_rootfs, check=False)
    assert p.returncode == 1 and "already exists" in p.stderr
    assert json.loads(cli("state", "dup").stdout)["status"] == "running"
    cli("kill", "dup")
