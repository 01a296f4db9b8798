"""Fixtures of the contract tests: the driver's config (in-process and through the agent) and a
system datastore holding a VM's disks."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from contract.oned import (
    loops_backed_by,
    mounts_under,
    python_client_runs,
    recording_python,
    running_agent,
)


@pytest.fixture(params=["in-process", "agent"])
def driver(request, tmp_path, runtime):
    """The driver configured onto the test's run dir, cgroup parent and host netns; every test
    runs twice: each action in its own process (``agent = false``) through the Python client
    (no LXCONE_CLIENT), and through a resident agent that the test starts, with the shim on the
    C client (``native.CLIENT``). The agent's log proves it served the actions, the
    interpreter's log which client ran them: the C one starts no Python on the agent's path."""
    cfg = tmp_path / "lxcone.toml"
    cfg.write_text(f'run_dir = "{runtime.run_dir}"\ncgroup_parent = "{runtime.cgroup_parent}"\n'
                   f'host_netns = "{runtime.host_netns}"\nstop_signal = "SIGUSR2"\n'
                   "shutdown_timeout_s = 10\n"
                   f"agent = {'true' if request.param == 'agent' else 'false'}\n")
    python, runs = recording_python(tmp_path)
    env = {k: v for k, v in os.environ.items() if k != "LXCONE_CLIENT"}
    env.update(LXCONE_PYTHON=python, LXCONE_CONFIG=str(cfg))
    if request.param == "in-process":
        yield env, cfg
        assert not (Path(runtime.run_dir) / "agent.sock").exists(), "agent = false started one"
        assert python_client_runs(runs), "the actions did not go through the Python client"
        return
    from lxcone import native

    env["LXCONE_CLIENT"] = native.CLIENT
    with running_agent(cfg, runtime.run_dir) as log:
        yield env, cfg
    served = [line for line in log.read_text().splitlines() if " exit " in line]
    assert served, "the agent served no action: the client ran them itself"
    assert python_client_runs(runs) == [], "the C client left actions to the Python client"


@pytest.fixture
def datastore(tmp_path, busybox_rootfs):
    """A system datastore dir holding VM 12's disks as OpenNebula's TM leaves them: disk.0 a
    raw ext4 image with the busybox rootfs, disk.1 the context ISO, disk.2 a data directory."""
    from lxcone.testing import images

    images.need("mkfs.ext4", "genisoimage")
    vm_dir = tmp_path / "datastores" / "0" / "12"
    vm_dir.mkdir(parents=True)
    images.fs_image(str(vm_dir / "disk.0"), "ext4", 64, populate=busybox_rootfs)
    ctx = tmp_path / "ctx"
    ctx.mkdir()
    (ctx / "context.sh").write_text("ETH0_IP='192.168.150.100'\nSET_HOSTNAME='ctx-host'\n")
    images.iso(str(ctx), str(vm_dir / "disk.1"))
    (vm_dir / "disk.2").mkdir()
    (vm_dir / "disk.2" / "data.txt").write_text("payload\n")
    yield vm_dir
    assert loops_backed_by(str(tmp_path)) == [], "loop devices leaked"
    assert mounts_under(str(tmp_path)) == [], "mounts leaked"
