"""``lxcone demo``: the embedded default. Plays OpenNebula's part for one VM: a busybox-static
image on a local file datastore, the VM XML as oned sends it, and the driver's executables in
remotes/vmm/lxcone run exactly as one_vmm_exec runs them (argv + XML on stdin). The VM is
deployed with a NIC on a bridge, checked (isolated, limited, reachable from the bridge),
rebooted, powered off, deployed again through the warm agent, and terminated; then everything
is removed.

The bridge and the host end of the veth live in a network namespace made for the demo, so the
machine's own network is never touched.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from lxcone import native
from lxcone.images.busybox import build_rootfs
from lxcone.runtime import Runtime
from lxcone.testing.vmxml import action_data, disk, nic, vm_xml

BRIDGE, BRIDGE_IP, GUEST_IP = "lxdemo0", "10.199.0.1", "10.199.0.2"
VM_ID = 42
VMM = Path(__file__).resolve().parents[1] / "remotes" / "vmm" / "lxcone"


def _say(text: str) -> None:
    print(text, flush=True)


class _Oned:
    """The calls oned makes for one VM, timed."""

    def __init__(self, env: dict[str, str], vm_dir: Path) -> None:
        self.env, self.vm_dir = env, vm_dir

    def xml(self, **changes: object) -> bytes:
        kw: dict = {"name": "demo vm", "memory": 64, "cpu": 0.5, "vcpu": 1,
                    "disks": [disk(0), disk(1, TYPE="CDROM", TARGET="hda")],
                    "nics": [nic(VM_ID, 0, BRIDGE=BRIDGE, IP=GUEST_IP)],
                    "context": {"DISK_ID": 1, "ETH0_MASK": "255.255.255.0",
                                "ETH0_GATEWAY": BRIDGE_IP, "ETH0_DNS": BRIDGE_IP,
                                "SET_HOSTNAME": "lxcone-demo"}}
        return vm_xml(VM_ID, **{**kw, **changes})

    def __call__(self, action: str, *args: str, stdin: bytes) -> tuple[str, float]:
        argv = [str(VMM / action), *args, str(VM_ID), "demo-host"]
        t = time.perf_counter()
        # ssh stream transport: the XML with a trailing newline (protocol doc addendum A.2)
        p = subprocess.run(argv, input=stdin + b"\n", capture_output=True, env=self.env,
                           timeout=180, check=False)
        ms = 1000 * (time.perf_counter() - t)
        if p.returncode != 0:
            raise RuntimeError(f"{action} exited {p.returncode}: {p.stderr.decode().strip()}")
        return p.stdout.decode().strip(), ms

    def deploy(self) -> tuple[str, float]:
        return self("deploy", str(self.vm_dir / "deployment.0"), "demo-host", stdin=self.xml())

    def act(self, action: str, *args: str) -> float:
        return self(action, f"one-{VM_ID}", *args,
                    stdin=action_data(self.xml(deploy_id=f"one-{VM_ID}")))[1]


def _datastore(work: Path, rootfs: Path) -> Path:
    """<work>/datastores/0/42 as the TM leaves it: disk.0 a raw ext4 image of the rootfs,
    disk.1 the context ISO."""
    vm_dir = work / "datastores" / "0" / str(VM_ID)
    vm_dir.mkdir(parents=True)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-d", str(rootfs), str(vm_dir / "disk.0"), "64M"],
                   check=True)
    ctx = work / "context"
    ctx.mkdir()
    (ctx / "context.sh").write_text(f"ETH0_IP='{GUEST_IP}'\nSET_HOSTNAME='lxcone-demo'\n")
    subprocess.run(["genisoimage", "-quiet", "-J", "-R", "-V", "CONTEXT", "-o",
                    str(vm_dir / "disk.1"), str(ctx)], check=True)
    return vm_dir


def run_demo() -> int:
    """Returns 0 when every check passed."""
    if os.geteuid() != 0:
        raise PermissionError(1, "the demo creates namespaces and cgroups: run it as root")
    from pyroute2 import netns as pr_netns

    from lxcone.agent import server
    from lxcone.netns import ensure_bridge, host_ipr

    work = Path(tempfile.mkdtemp(prefix="lxcone-demo-"))
    host_ns = f"lxcone-demo-{os.getpid()}"
    cgroup_parent = f"lxcone-demo-{os.getpid()}"
    run_dir = work / "run"
    rt = Runtime(str(run_dir), cgroup_parent, f"/run/netns/{host_ns}")
    name = f"one-{VM_ID}"
    failures = 0

    def check(label: str, ok: bool, detail: str = "") -> None:
        nonlocal failures
        failures += not ok
        _say(f"  [{'PASS' if ok else 'FAIL'}] {label}{': ' + detail if detail else ''}")

    try:
        _say(f"1. datastore: busybox-static rootfs as a raw ext4 image, context ISO -> {work}")
        rootfs = build_rootfs(work / "rootfs", hostname="demo")
        vm_dir = _datastore(work, rootfs)
        config = work / "lxcone.toml"
        config.write_text(f'run_dir = "{run_dir}"\ncgroup_parent = "{cgroup_parent}"\n'
                          f'host_netns = "/run/netns/{host_ns}"\n'
                          f'datastores = "{work / "datastores"}"\nstop_signal = "SIGUSR2"\n'
                          "shutdown_timeout_s = 20\nagent = true\n")
        oned = _Oned({**os.environ, "LXCONE_PYTHON": sys.executable,
                      "LXCONE_CLIENT": native.CLIENT, "LXCONE_CONFIG": str(config)}, vm_dir)
        _say(f"2. host side: netns {host_ns}, bridge {BRIDGE} {BRIDGE_IP}/24")
        pr_netns.create(host_ns)
        index = ensure_bridge(BRIDGE, rt.host_netns)
        with host_ipr(rt.host_netns) as ipr:
            ipr.addr("add", index=index, address=BRIDGE_IP, prefixlen=24)

        out, ms = oned.deploy()
        _say(f"3. {VMM / 'deploy'} printed '{out}' in {ms:.0f} ms (first action on this "
             "host: it ran in its own process and started the lxcone agent)")
        check("deploy id", out == name)
        state = rt.state(name)
        check("running", state.status == "running",
              f"init is host pid {state.pid}, monitor pid {state.monitor_pid}")

        def sh(cmd: str) -> str:
            return rt.exec(name, ["/bin/sh", "-c", cmd], timeout=20).stdout.decode().strip()

        _say("4. checks")
        check("hostname from the VM's context", sh("hostname") == "lxcone-demo", sh("hostname"))
        check("rootfs is the datastore image", "ext4" in sh("grep ' / ' /proc/mounts"))
        check("context disk at /context", sh("cat /context/context.sh").startswith("ETH0_IP="))
        ps = sh("ps -o pid,comm").splitlines()[1:]
        check("init is pid 1, no host process visible",
              ps[0].split()[0] == "1" and len(ps) < 10, f"{len(ps)} processes")
        check("NIC configured from NIC + CONTEXT", f"{GUEST_IP}/24" in sh("ip -4 addr show eth0")
              and f"default via {BRIDGE_IP}" in sh("ip route"),
              f"eth0 {GUEST_IP}/24, gateway {BRIDGE_IP}, host side one-{VM_ID}-0 on {BRIDGE}")
        check("DNS from the VM", f"nameserver {BRIDGE_IP}" in sh("cat /etc/resolv.conf"))
        reach = subprocess.run(["nsenter", f"--net=/run/netns/{host_ns}",
                                str(rootfs / "bin" / "busybox"), "ping", "-c1", "-W2",
                                GUEST_IP], capture_output=True, timeout=10, check=False)
        check("reachable from the bridge", reach.returncode == 0, f"ping {GUEST_IP}")
        with open(f"/proc/{state.pid}/status") as f:
            host_uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
        check("unprivileged: root inside is an ordinary uid outside",
              sh("id -u") == "0" and host_uid == "100000", f"uid 0 inside = {host_uid} on host")
        stats = rt.stats(name)
        check("MEMORY=64 is the cgroup's hard limit", stats.memory_limit_bytes == 64 << 20,
              f"{stats.memory_usage_bytes} bytes in use, {stats.pids_current} tasks")

        _say("5. more actions, as oned calls them (through the agent now)")
        ms = oned.act("reboot", "demo-host")
        check("reboot", rt.state(name).pid != state.pid, f"{ms:.0f} ms, new init")
        ms = oned.act("shutdown", "demo-host")
        check("shutdown (guest powers off, disks released)", rt.list() == [], f"{ms:.0f} ms")
        out, ms = oned.deploy()
        check("deploy again (resume)", rt.state(name).status == "running", f"{ms:.0f} ms")
        ms = oned.act("cancel", "demo-host")
        check("cancel (terminate)", rt.list() == [], f"{ms:.0f} ms")
        # The agent logs an action just after replying: give the last line a moment.
        deadline = time.monotonic() + 5
        while (served := (run_dir / "agent.log").read_text().count(" exit 0 ")) < 4 \
                and time.monotonic() < deadline:
            time.sleep(0.01)
        check("the agent served the actions after the first", served == 4, f"{served} logged")
    finally:
        server.stop(str(run_dir), timeout=60)
        for s in rt.list():
            rt.delete(s.name, force=True)
        if os.path.exists(f"/run/netns/{host_ns}"):
            pr_netns.remove(host_ns)
        for d in (os.path.join("/sys/fs/cgroup", h, cgroup_parent)
                  for h in os.listdir("/sys/fs/cgroup")):
            if os.path.isdir(d):
                os.rmdir(d)
        shutil.rmtree(work, ignore_errors=True)
    _say("6. stopped the agent; removed the cgroups, the demo netns and the datastore")
    _say("demo: all checks passed" if not failures else f"demo: {failures} check(s) FAILED")
    return 0 if not failures else 1
