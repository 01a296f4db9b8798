"""Fixtures for the lxcone.netns kernel tests: a throw-away host netns and a container netns.

The host side (bridges, veth host ends) lives in a netns created per test and deleted at
teardown; the teardown also proves the machine's root netns gained no interface. The
"container" is a ``sleep`` in a new netns (and, in the ``userns`` variant, a new user namespace
owning it, as in an unprivileged container).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from . import netns_oracle as oracle


@dataclass
class Container:
    proc: subprocess.Popen[bytes]
    fd: int  # O_RDONLY|O_CLOEXEC fd of its netns, opened by the fixture (not by lxcone)
    userns: bool

    @property
    def pid(self) -> int:
        return self.proc.pid

    @property
    def netns(self) -> str:
        return f"/proc/{self.pid}/ns/net"


@pytest.fixture
def host_netns() -> Iterator[str]:
    """Path of a fresh netns standing in for the host side; root netns checked at teardown."""
    before = oracle.link_set(None)
    name = f"lxt-{secrets.token_hex(4)}"
    subprocess.run(["ip", "netns", "add", name], check=True)
    path = f"/run/netns/{name}"
    try:
        yield path
    finally:
        subprocess.run(["ip", "netns", "del", name], check=True)
        assert not os.path.exists(path), f"{path} survived ip netns del"
        gained = oracle.link_set(None) - before
        assert not gained, f"the root netns gained interfaces: {sorted(gained)}"


def _start_container(userns: bool) -> Container:
    argv = ["unshare", "--net", "sleep", "1000"]
    if userns:
        argv = ["unshare", "--user", "--map-root-user", "--net", "sleep", "1000"]
    proc = subprocess.Popen(argv)
    # /proc/<pid>/ns/net is the new netns only once unshare(1) has exec'd sleep.
    deadline = time.monotonic() + 5
    while True:
        try:
            with open(f"/proc/{proc.pid}/comm") as f:
                if f.read().strip() == "sleep":
                    break
        except FileNotFoundError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"{' '.join(argv)} did not start (rc={proc.returncode})")
        time.sleep(0.002)
    fd = os.open(f"/proc/{proc.pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
    return Container(proc, fd, userns)


def _stop_container(container: Container) -> None:
    os.close(container.fd)
    container.proc.kill()
    container.proc.wait(timeout=10)


@pytest.fixture(params=["netns", "userns"])
def container(request: pytest.FixtureRequest) -> Iterator[Container]:
    """A process in its own netns; ``userns``: that netns is owned by a child user namespace."""
    c = _start_container(request.param == "userns")
    try:
        if c.userns:
            assert os.readlink(f"/proc/{c.pid}/ns/user") != os.readlink("/proc/self/ns/user")
        yield c
    finally:
        _stop_container(c)


@pytest.fixture
def second_container() -> Iterator[Container]:
    c = _start_container(False)
    try:
        yield c
    finally:
        _stop_container(c)
