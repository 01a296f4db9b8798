"""How OpenNebula's one_vmm_exec runs remotes/vmm/lxcone/* (protocol doc §2.3, addendum A.2),
and the oracles the contract tests judge the host by."""

from __future__ import annotations

import base64
import contextlib
import fcntl
import os
import shlex
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from lxcone.images.busybox import STOP_SIGNAL
from lxcone.runtime import ContainerSpec, Runtime

REMOTES = Path(__file__).resolve().parents[2] / "remotes"
VMM = REMOTES / "vmm" / "lxcone"


def ssh_stream(env, action: str, *args: str, stdin: bytes) -> subprocess.CompletedProcess:
    """What `ssh host bash -s` executes: single-quoted args, stdin through a heredoc (+ newline)."""
    script = VMM / action
    quoted = " ".join(shlex.quote(a) for a in args)
    body = f"cat << 'EOT' | {script} {quoted}\n{stdin.decode()}\nEOT\n"
    return subprocess.run(["bash", "-s"], input=body.encode(), capture_output=True, env=env,
                          timeout=60, check=False)


def remotes_command(env, action: str, *args: str, stdin: bytes) -> subprocess.CompletedProcess:
    """RemotesCommand: `if [ -x script ]; then script args; else exit 42; fi`, raw stdin."""
    script = VMM / action
    cmd = f"if [ -x {script} ]; then {script} {' '.join(args)}; else exit 42; fi"
    return subprocess.run(["sh", "-c", cmd], input=stdin, capture_output=True, env=env,
                          timeout=60, check=False)


def local(env, action: str, *args: str, stdin: bytes) -> subprocess.CompletedProcess:
    """`-l` local actions: run on the frontend, stdin base64 (strict_encode64, no newline)."""
    return subprocess.run([str(VMM / action), *args], input=base64.b64encode(stdin),
                          capture_output=True, env=env, timeout=60, check=False)


TRANSPORTS = [ssh_stream, remotes_command, local]


def start_vm(runtime: Runtime, rootfs: str, vm_id: int = 12) -> int:
    """What deploy will do (next increment): a running container named one-<id>."""
    return runtime.run(ContainerSpec(name=f"one-{vm_id}", rootfs=rootfs,
                                     stop_signal=STOP_SIGNAL)).pid


@contextlib.contextmanager
def running_agent(cfg: Path, run_dir: str) -> Iterator[Path]:
    """An agent for the test's run dir, stopped (cleanly, exit 0) at the end; yields its log."""
    log = cfg.with_name("agent.log")
    with open(log, "wb") as err:
        agent = subprocess.Popen([sys.executable, "-m", "lxcone.agent", "serve", "--config",
                                  str(cfg)], stdin=subprocess.DEVNULL, stderr=err)
    try:
        sock = Path(run_dir) / "agent.sock"
        deadline = time.monotonic() + 30
        while not sock.exists():
            assert agent.poll() is None, log.read_text()
            assert time.monotonic() < deadline, "the agent did not start listening"
            time.sleep(0.01)
        yield log
    finally:
        agent.send_signal(signal.SIGTERM)
        assert agent.wait(60) == 0, log.read_text()
    assert not sock.exists(), "the agent left its socket behind"


def recording_python(where: Path) -> tuple[str, Path]:
    """A stand-in for LXCONE_PYTHON that logs each run (its argv, one line) and execs this
    interpreter: (its path, its log). Which client ran an action, C or Python, shows there: the
    C client starts no Python on the agent's path, and runs ``<python> -I -S .../lxcone-client``
    for everything else."""
    log = where / "python-runs.log"
    python = where / "python"
    python.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(log))}\n'
                      f'exec {shlex.quote(sys.executable)} "$@"\n')
    python.chmod(0o755)
    return str(python), log


def python_client_runs(log: Path) -> list[str]:
    """The runs of the Python client that ``recording_python`` logged."""
    return [x for x in log.read_text().splitlines() if "lxcone-client" in x] \
        if log.exists() else []


@contextlib.contextmanager
def agent_of_another_version(run_dir: str) -> Iterator[list[int]]:
    """An agent of another version on the run dir: it holds the agent lock (so no agent of
    ours can start) and resets every connection after reading 4 bytes, as ours does with an
    unknown MAGIC. Yields a list that gets one item per connection."""
    os.makedirs(run_dir, 0o711, exist_ok=True)
    resets: list[int] = []
    lock = os.open(os.path.join(run_dir, "agent.lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC,
                   0o600)
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    sock = socket.socket(socket.AF_UNIX)
    path = os.path.join(run_dir, "agent.sock")
    sock.bind(path)
    sock.listen(16)

    def serve() -> None:
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            with conn:
                conn.recv(4)
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            resets.append(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    try:
        yield resets
    finally:
        sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        thread.join(10)
        os.unlink(path)
        os.close(lock)


def loops_backed_by(prefix: str) -> list[str]:
    """Loop devices whose backing file lives under prefix (the leak oracle for disks)."""
    found = []
    for dev in Path("/sys/block").glob("loop*"):
        backing = dev / "loop" / "backing_file"
        if backing.exists() and backing.read_text().strip().startswith(prefix):
            found.append(dev.name)
    return found


def mounts_under(prefix: str) -> list[str]:
    with open("/proc/self/mountinfo") as f:
        return [line.split()[4] for line in f if line.split()[4].startswith(prefix)]
