"""The C client of the agent (lxcone/native/csrc/client.c) against a fake agent and a stand-in
interpreter (no root): it sends what the Python client sends and prints what it gets back, and
hands whatever it is not sure of to the Python client, argv and stdin intact."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from lxcone import native
from lxcone.agent import wire

REMOTES = Path(__file__).resolve().parents[3] / "remotes"
ARGS = ["one-12", "a b", "q'\"$x`;", b"\xff\xfe\x80", "", "node1"]  # oned's, and worse
XML = b"<VM><ID>12</ID><NAME>caf\xc3\xa9 \xff</NAME></VM>\n"


@dataclass
class Tree:
    """A host's remotes: vmm/lxcone with the Python client, etc/vmm/lxcone/lxcone.toml."""

    base: Path
    vmm: Path
    cfg: Path
    run: Path


@pytest.fixture
def tree():
    base = Path(tempfile.mkdtemp(prefix="lxc-"))  # short: a socket path has 108 bytes
    vmm = base / "vmm" / "lxcone"
    vmm.mkdir(parents=True)
    shutil.copy(REMOTES / "vmm" / "lxcone" / "lxcone-client", vmm / "lxcone-client")
    (base / "etc" / "vmm" / "lxcone").mkdir(parents=True)
    cfg = base / "etc" / "vmm" / "lxcone" / "lxcone.toml"
    run = base / "run"
    run.mkdir()
    cfg.write_text(f'# as shipped\nrun_dir = "{run}"  # here\nagent = true\n')
    yield Tree(base, vmm, cfg, run)
    shutil.rmtree(base)


class FakeAgent:
    """Listens on <run>/agent.sock. ``reply``: reads the request, answers ``answer``; ``reset``:
    reads the magic and closes with the rest unread, as an agent of another version does;
    ``close``: reads the request and closes without a reply, as an agent that died in the
    action."""

    def __init__(self, run: Path, mode: str = "reply", answer=(0, b"", b"")) -> None:
        self.mode, self.answer = mode, answer
        self.connections = 0
        self.requests: list[list[bytes]] = []
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.bind(str(run / "agent.sock"))
        self.sock.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.connections += 1
            with conn:
                if self.mode == "reset":
                    conn.recv(4)
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    continue
                self.requests.append(wire.read_request(conn))
                if self.mode == "reply":
                    conn.sendall(wire.encode_reply(*self.answer))

    def close(self) -> None:
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        self.thread.join(10)


@pytest.fixture
def agent(tree):
    agents: list[FakeAgent] = []

    def start(mode: str = "reply", answer=(0, b"", b"")) -> FakeAgent:
        agents.append(FakeAgent(tree.run, mode, answer))
        return agents[-1]

    yield start
    for a in agents:
        a.close()


@pytest.fixture
def python(tmp_path):
    """A stand-in interpreter that records its argv and stdin, prints a line and exits 3."""
    py = tmp_path / "python"
    py.write_text(f"#!/bin/sh\nprintf '%s\\0' \"$@\" > {tmp_path}/argv\ncat > {tmp_path}/stdin\n"
                  "echo fake python\nexit 3\n")
    py.chmod(0o755)
    return py


def ran(python: Path) -> tuple[list[bytes], bytes] | None:
    """(argv, stdin) of the stand-in interpreter's run, if it ran."""
    argv = python.with_name("argv")
    if not argv.exists():
        return None
    return argv.read_bytes().split(b"\0")[:-1], python.with_name("stdin").read_bytes()


def env_for(tree: Tree, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LXCONE_")}
    return {**env, **extra}


def c_client(python, vmm, action, *args, stdin=XML, env=None, cwd=None):
    assert os.access(native.CLIENT, os.X_OK), f"{native.CLIENT} is not built: pip install -e ."
    return subprocess.run([native.CLIENT, str(python), str(vmm), action, *args], input=stdin,
                          capture_output=True, env=env, cwd=cwd, timeout=30, check=False)


def py_client(vmm, action, *args, stdin=XML, env=None, cwd=None):
    return subprocess.run([sys.executable, "-I", "-S", f"{vmm}/lxcone-client", action, *args],
                          input=stdin, capture_output=True, env=env, cwd=cwd, timeout=30,
                          check=False)


def result(p: subprocess.CompletedProcess) -> tuple[int, bytes, bytes]:
    return p.returncode, p.stdout, p.stderr


def handed_over(tree: Tree, action: str, *args) -> list[bytes]:
    """The argv the Python client gets from the C client: the shim's, for the same script."""
    return [b"-I", b"-S", f"{tree.vmm}/lxcone-client".encode(), action.encode(),
            *(os.fsencode(a) for a in args)]


# -- the agent's path --------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["LXCONE_CONFIG", "absolute dir", "relative dir"])
def test_both_clients_send_the_same_request_and_print_the_same_reply(tree, agent, python,
                                                                     where):
    fake = agent(answer=(7, b"one-12\n", b"ERROR: x\n"))
    env, vmm, cwd = env_for(tree), str(tree.vmm), None
    if where == "LXCONE_CONFIG":
        other = tree.base / "other.toml"
        shutil.copy(tree.cfg, other)
        env["LXCONE_CONFIG"] = str(other)
    elif where == "relative dir":  # as the shim passes it when oned's path is relative
        cwd, vmm = tree.base / "etc", "../vmm/./lxcone/../lxcone"
    c = c_client(python, vmm, "deploy", *ARGS, env=env, cwd=cwd)
    p = py_client(vmm, "deploy", *ARGS, env=env, cwd=cwd)
    assert result(c) == result(p) == (7, b"one-12\n", b"ERROR: x\n")
    assert ran(python) is None  # the stand-in interpreter: never needed
    config = env.get("LXCONE_CONFIG", str(tree.cfg)).encode()
    assert fake.requests[0] == fake.requests[1] == [config, b"deploy",
                                                    *(os.fsencode(a) for a in ARGS), XML]


def test_a_large_stdin_and_a_large_reply_go_through_whole(tree, agent, python):
    big = b"<VM>" + b"<X>" + os.urandom(5 << 20).hex().encode() + b"</X></VM>\n"  # 10 MiB
    fake = agent(answer=(0, big[:3 << 20], big[:1 << 20]))
    p = c_client(python, tree.vmm, "deploy", "one-12", stdin=big, env=env_for(tree))
    assert result(p) == (0, big[:3 << 20], big[:1 << 20])
    assert fake.requests[0][-1] == big


def test_an_agent_that_ends_during_the_action_is_an_error_never_a_rerun(tree, agent, python):
    fake = agent("close")
    c = c_client(python, tree.vmm, "cancel", "one-12", env=env_for(tree))
    p = py_client(tree.vmm, "cancel", "one-12", env=env_for(tree))
    assert result(c) == result(p) == (
        1, b"", f"ERROR: cancel: the lxcone agent ended during the action (see "
                f"{tree.run}/agent.log)\n".encode())
    assert ran(python) is None and len(fake.requests) == 2


def test_the_shim_runs_the_c_client_named_by_lxcone_client(tree, agent, python):
    fake = agent(answer=(0, b"STATE=a\n", b""))
    env = env_for(tree, LXCONE_CLIENT=native.CLIENT, LXCONE_PYTHON=str(python),
                  LXCONE_CONFIG=str(tree.cfg))
    p = subprocess.run([str(REMOTES / "vmm" / "lxcone" / "poll"), "one-12", "h", "12", "h"],
                       input=b"", capture_output=True, env=env, timeout=30, check=False)
    assert result(p) == (0, b"STATE=a\n", b"")
    assert ran(python) is None
    assert fake.requests == [[str(tree.cfg).encode(), b"poll", b"one-12", b"h", b"12", b"h",
                              b""]]


# -- everything else: the Python client takes over ------------------------------------------


CONFIGS_NOT_SURE = {
    "table": '[table]\nrun_dir = "{run}"\n',
    "multi-line string": 'cgroup_parent = """lxcone"""\nrun_dir = "{run}"\n',
    "multi-line literal hiding a key": "x = '''\nrun_dir = \"{run}\"\ny = 1'''\n",
    "escape": 'run_dir = "{run}\\u002f"\n',
    "quoted key": '"run_dir" = "{run}"\n',
    "dotted key": 'run_dir = "{run}"\nagent.x = 1\n',
    "twice": 'run_dir = "{run}"\nrun_dir = "{run}"\n',
    "not UTF-8": '# \udcff\nrun_dir = "{run}"\n',
    "lone CR": 'run_dir = "{run}"\ragent = true\n',
    "array": 'run_dir = "{run}"\nx = [\n  1,\n]\n',
    "agent not a boolean": 'run_dir = "{run}"\nagent = "true"\n',
}


@pytest.mark.parametrize("form", sorted(CONFIGS_NOT_SURE))
def test_a_config_the_scan_is_not_sure_of_goes_to_the_python_client(tree, agent, python,
                                                                     form):
    fake = agent(answer=(0, b"from the agent\n", b""))
    tree.cfg.write_bytes(CONFIGS_NOT_SURE[form].format(run=tree.run).encode(
        errors="surrogateescape"))
    assert subprocess.run([native.CLIENT, "--scan-config", str(tree.cfg)], capture_output=True,
                          check=True).stdout == b"?\n"
    p = c_client(python, tree.vmm, "deploy", *ARGS, env=env_for(tree))
    assert result(p) == (3, b"fake python\n", b"")
    assert ran(python) == (handed_over(tree, "deploy", *ARGS), XML)
    assert fake.connections == 0


def no_agent(tree: Tree, agent) -> None:
    pass


def stale_socket(tree: Tree, agent) -> None:
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(tree.run / "agent.sock"))
    s.close()  # the file stays, nobody listens: ECONNREFUSED


def agent_off(tree: Tree, agent) -> None:
    agent(answer=(0, b"from the agent\n", b""))
    tree.cfg.write_text(f'run_dir = "{tree.run}"\nagent = false # off\n')


def no_run_dir(tree: Tree, agent) -> None:
    tree.cfg.write_text(f'run_dir = "{tree.run}/gone"\n')


def empty_run_dir(tree: Tree, agent) -> None:
    tree.cfg.write_text('run_dir = ""\n')


def config_unreadable(tree: Tree, agent) -> None:
    tree.cfg.unlink()
    tree.cfg.mkdir()  # EISDIR on read; the Python client's scan: not sure either


def other_version(tree: Tree, agent) -> None:
    agent("reset")


@pytest.mark.parametrize("case", [no_agent, stale_socket, agent_off, no_run_dir, empty_run_dir,
                                  config_unreadable, other_version], ids=lambda f: f.__name__)
@pytest.mark.parametrize("size", [0, 5 << 20])
def test_whatever_is_not_the_agents_goes_to_the_python_client_with_stdin_intact(
        tree, agent, python, case, size):
    case(tree, agent)
    stdin = (b"<VM><ID>12</ID><USER_TEMPLATE><PAD><![CDATA[" + b"x\xff<>&'\"\n" * (size // 9)
             + b"]]></PAD></USER_TEMPLATE></VM>\n") if size else b""
    p = c_client(python, tree.vmm, "deploy", *ARGS, stdin=stdin, env=env_for(tree))
    assert result(p) == (3, b"fake python\n", b"")
    argv, got = ran(python)
    assert argv == handed_over(tree, "deploy", *ARGS)
    assert got == stdin  # through a memfd when the client had read it (reset), else untouched


def test_the_python_client_takes_an_agent_reset_during_a_large_stdin_as_nothing_ran(tree,
                                                                                     agent):
    # The agent of another version reads the magic only: a 5 MiB request is still being sent
    # when it resets it, and that send fails with EPIPE, not ECONNRESET. Nothing ran either
    # way: ask_agent says so (None), and the caller runs the action itself.
    from lxcone.testing.helpers import load_python_client

    mod = load_python_client("lxcone_client_copy")  # the tree's file is a copy of it
    agent("reset")
    sock = str(tree.run / "agent.sock")
    assert mod.ask_agent(sock, [b"cfg", b"deploy", b"x" * (5 << 20)]) is None
    assert mod.ask_agent(sock, [b"cfg", b"deploy", b""]) is None


def test_an_interpreter_that_cannot_run_is_one_error_line(tree):
    tree.cfg.write_text("agent = false\n")
    p = c_client(tree.base / "no-python", tree.vmm, "poll", "one-1", env=env_for(tree))
    assert result(p) == (1, b"", f"ERROR: poll: lxcone-client: execvp {tree.base}/no-python: "
                                 "No such file or directory\n".encode())


def test_a_call_without_an_action_is_one_error_line():
    p = subprocess.run([native.CLIENT, "python"], capture_output=True, timeout=10, check=False)
    assert p.returncode == 1 and p.stdout == b""
    assert p.stderr.startswith(b"ERROR: usage: lxcone-client ") and p.stderr.count(b"\n") == 1
