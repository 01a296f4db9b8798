"""``lxcone demo``: the embedded default. Builds a busybox-static rootfs, starts an unprivileged
container with a NIC on a bridge, shows that it is isolated, stops it, and removes everything.

The bridge and the host end of the veth live in a network namespace made for the demo, so the
machine's own network is never touched.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time

from lxcone.cgroups import Resources
from lxcone.images.busybox import STOP_SIGNAL, build_rootfs
from lxcone.runtime import ContainerSpec, Runtime

BRIDGE, BRIDGE_IP, GUEST_IP = "lxdemo0", "10.199.0.1", "10.199.0.2"


def _say(text: str) -> None:
    print(text, flush=True)


def run_demo() -> int:
    """Returns 0 when every isolation check passed."""
    if os.geteuid() != 0:
        raise PermissionError(1, "the demo creates namespaces and cgroups: run it as root")
    from pyroute2 import netns as pr_netns

    from lxcone.netns import Address, NicSpec, ensure_bridge, host_ipr

    work = tempfile.mkdtemp(prefix="lxcone-demo-")
    host_ns = f"lxcone-demo-{os.getpid()}"
    rt = Runtime(os.path.join(work, "run"), f"lxcone-demo-{os.getpid()}", f"/run/netns/{host_ns}")
    failures = 0

    def check(label: str, ok: bool, detail: str = "") -> None:
        nonlocal failures
        failures += not ok
        _say(f"  [{'PASS' if ok else 'FAIL'}] {label}{': ' + detail if detail else ''}")

    try:
        _say(f"1. rootfs: busybox-static -> {work}/rootfs")
        rootfs = build_rootfs(os.path.join(work, "rootfs"), hostname="demo")
        _say(f"2. host side: netns {host_ns}, bridge {BRIDGE} {BRIDGE_IP}/24")
        pr_netns.create(host_ns)
        index = ensure_bridge(BRIDGE, rt.host_netns)
        with host_ipr(rt.host_netns) as ipr:
            ipr.addr("add", index=index, address=BRIDGE_IP, prefixlen=24)
        nic = NicSpec(host_name="demo-0", guest_name="eth0", bridge=BRIDGE,
                      addresses=(Address(GUEST_IP, 24),), gateway=BRIDGE_IP)
        spec = ContainerSpec(name="demo", rootfs=str(rootfs), hostname="lxcone-demo",
                             stop_signal=STOP_SIGNAL, nics=(nic,),
                             resources=Resources(memory_limit_bytes=64 << 20,
                                                 cpu_quota_us=50_000, cpu_period_us=100_000))
        t = time.perf_counter()
        state = rt.run(spec)
        _say(f"3. started container 'demo' in {1000 * (time.perf_counter() - t):.1f} ms: "
             f"init is host pid {state.pid}, monitor pid {state.monitor_pid}")

        def sh(cmd: str) -> str:
            return rt.exec("demo", ["/bin/sh", "-c", cmd], timeout=20).stdout.decode().strip()

        _say("4. isolation checks")
        check("own hostname", sh("hostname") == "lxcone-demo", sh("hostname"))
        ps = sh("ps -o pid,comm").splitlines()[1:]
        check("init is pid 1, no host process visible",
              ps[0].split()[0] == "1" and len(ps) < 10, f"{len(ps)} processes: "
              + ", ".join(" ".join(p.split()) for p in ps))
        links = sh("ls /sys/class/net").split()
        check("own network interfaces", sorted(links) == ["eth0", "lo"], " ".join(links))
        check("NIC configured", f"{GUEST_IP}/24" in sh("ip -4 addr show eth0"),
              f"eth0 {GUEST_IP}/24 via bridge {BRIDGE}")
        check("bridge reachable", rt.exec("demo", ["ping", "-c1", "-W2", BRIDGE_IP],
                                           timeout=10).returncode == 0, f"ping {BRIDGE_IP}")
        with open(f"/proc/{state.pid}/status") as f:
            host_uid = next(line.split()[1] for line in f if line.startswith("Uid:"))
        check("unprivileged: root inside is an ordinary uid outside",
              sh("id -u") == "0" and host_uid == "100000", f"uid 0 inside = {host_uid} on host")
        check("own mount table", "/dev/pts" in sh("mount") and work not in sh("mount"),
              "no host path visible")
        stats = rt.stats("demo")
        check("limits set in its cgroups", stats.memory_limit_bytes == 64 << 20,
              f"memory limit {stats.memory_limit_bytes} bytes, in use "
              f"{stats.memory_usage_bytes} bytes, {stats.pids_current} tasks")
        _say("5. stop (SIGUSR2: busybox init powers off)")
        t = time.perf_counter()
        state = rt.stop("demo", timeout=10)
        check("stopped cleanly", state.status == "stopped",
              f"{state.exit} after {1000 * (time.perf_counter() - t):.0f} ms")
        console = rt.console_log("demo").decode(errors="replace")
        check("console captured", "lxcone busybox: lxcone-demo up" in console,
              "boot and shutdown lines in console.log")
        rt.delete("demo")
    finally:
        for s in rt.list():
            rt.delete(s.name, force=True)
        if os.path.exists(f"/run/netns/{host_ns}"):
            pr_netns.remove(host_ns)
        for d in (os.path.join("/sys/fs/cgroup", h, rt.cgroup_parent)
                  for h in os.listdir("/sys/fs/cgroup")):
            if os.path.isdir(d):
                os.rmdir(d)
        shutil.rmtree(work, ignore_errors=True)
    _say("6. removed the container, its cgroups, the demo netns and the rootfs")
    _say("demo: all checks passed" if not failures else f"demo: {failures} check(s) FAILED")
    return 0 if not failures else 1
