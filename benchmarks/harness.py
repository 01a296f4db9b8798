"""Shared settings and the LXCoNe side of the benchmarks.

``LXCONE_BENCH_QUICK=1`` turns every benchmark into a 3-round smoke run (the test suite may run
it to prove the benchmarks still work); the figures from a quick run mean nothing.
"""

from __future__ import annotations

import math
import os
import re
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import peers

QUICK = os.environ.get("LXCONE_BENCH_QUICK", "") not in ("", "0")
#: Pause before every timed round, after the previous round's cleanup, so asynchronous kernel
#: work it started (netns teardown, RCU frees) does not land in the next measurement. Same for
#: every peer.
SETTLE_S = float(os.environ.get("LXCONE_BENCH_SETTLE_MS", "0" if QUICK else "30")) / 1000
#: How long the "idle host" rounds (group start-idle) leave the machine alone before the step.
IDLE_HOST_S = 0.1

BRIDGE = "lxbbr0"
SUBNET = "10.213.78"


#: Errors the runtime under test raised and the harness worked around, by call site and message;
#: conftest puts them into the JSON and report.py lists them. They are bugs to report, not noise.
RUNTIME_ERRORS: dict[str, int] = {}


def note_error(where: str, exc: BaseException) -> None:
    # Container names differ per round; keep one key per kind of failure.
    key = re.sub(r"lx[obr][0-9a-f]{6}-[\w.-]+", "<name>", f"{where}: {type(exc).__name__}: {exc}")
    RUNTIME_ERRORS[key] = RUNTIME_ERRORS.get(key, 0) + 1


def rounds(n: int, quick: int = 3) -> int:
    """``n`` rounds normally, ``quick`` in quick mode."""
    return quick if QUICK else n


def settle() -> None:
    """Between cleanup and the timed step: reap, pause, then prime the cgroup write lock.

    Moving a task into a cgroup (a write to cgroup.procs, which every runtime here does on start
    and attach, and LXC's monitor on stop) takes the kernel's cgroup_threadgroup_rwsem for
    writing. Its rcu_sync stays in the fast mode for a grace period after the last writer; after
    ~30 ms of quiet the next writer waits a full RCU grace period, 6-8 ms on this VM (measured:
    0.02 ms back to back, 5.9 ms after 30 ms idle, 7.8 ms after 100 ms). Which peer pays it
    would depend on what its own cleanup happened to write, so every round starts from the same
    state: one no-op write (our own pid into our own pids cgroup) right before the step. The
    idle-host cost is measured separately (group start-idle, ``idle_host()``).
    """
    peers.reap_orphans()
    if SETTLE_S:
        time.sleep(SETTLE_S)
    peers.prime_cgroup_write_lock()


def idle_host() -> None:
    """Setup tail for the start-idle group: leave the host quiet, do not prime (the cold path)."""
    peers.reap_orphans()
    time.sleep(IDLE_HOST_S)


def bench(benchmark, target: Callable[[], object], setup: Callable[[], object] | None, n: int,
          who: str, what: str, *, teardown: Callable[[], object] | None = None,
          warmup: int = 1, idle: bool = False, **info: object) -> None:
    """Time ``target`` for ``n`` rounds (``warmup`` untimed ones first); ``setup`` (+ settle)
    before each round and ``teardown`` (the check of the state the step promised) after it are
    untimed.

    ``idle``: instead of settle(), leave the host quiet for 100 ms and do not prime the cgroup
    write lock, so the step pays what a start on an idle host pays."""
    benchmark.extra_info.update(who=who, what=what, **info)
    tail = idle_host if idle else settle

    def _setup() -> None:
        if setup is not None:
            setup()
        tail()

    benchmark.pedantic(target, setup=_setup, teardown=teardown, rounds=n, iterations=1,
                       warmup_rounds=warmup)
    record_tails(benchmark)


def percentile(data: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty list."""
    s = sorted(data)
    k = max(0, min(len(s) - 1, math.ceil(p / 100 * len(s)) - 1))
    return s[k]


def record_tails(benchmark) -> None:
    """Put p95/p99 (nearest rank) into extra_info; pytest-benchmark itself stops at quartiles."""
    data = list(benchmark.stats.stats.data)
    if data:
        benchmark.extra_info["p95_s"] = percentile(data, 95)
        benchmark.extra_info["p99_s"] = percentile(data, 99)
        benchmark.extra_info["median_s"] = statistics.median(data)


class Ours:
    """An ``lxcone.runtime.Runtime`` with a unique run dir and cgroup parent, plus spec helpers
    that match the LXC and crun configurations (same rootfs, busybox init, SIGUSR2 halt)."""

    def __init__(self, run_dir: Path, cgroup_parent: str, host_netns: str, rootfs: str) -> None:
        from lxcone.runtime import Runtime

        self.run_dir = run_dir
        self.cgroup_parent = cgroup_parent
        self.host_netns = host_netns
        self.rootfs = rootfs
        self.rt = Runtime(run_dir=str(run_dir), cgroup_parent=cgroup_parent,
                          host_netns=host_netns)

    def spec(self, name: str, privileged: bool = False, nic: tuple[str, int] | None = None,
             limits: bool = False):
        """A ContainerSpec; ``nic=(host_name, host_octet)`` adds a veth on the bench bridge."""
        from lxcone.cgroups import Resources
        from lxcone.images.busybox import STOP_SIGNAL
        from lxcone.runtime import ContainerSpec

        kw = {}
        if nic is not None:
            from lxcone.netns import Address, NicSpec

            host_name, octet = nic
            kw["nics"] = (NicSpec(host_name=host_name, bridge=BRIDGE,
                                  addresses=(Address(f"{SUBNET}.{octet}", 24),)),)
        if limits:
            kw["resources"] = Resources(memory_limit_bytes=256 << 20, cpu_quota_us=50_000,
                                        cpu_period_us=100_000)
        return ContainerSpec(name=name, rootfs=self.rootfs, stop_signal=STOP_SIGNAL,
                             privileged=privileged, **kw)

    def kill(self, name: str) -> None:
        """``Runtime.kill(name)``, finished by a second call if the first one lost the race
        with the monitor's own cgroup cleanup (the call and the error are recorded)."""
        from lxcone.runtime import ContainerNotFound

        try:
            self.rt.kill(name)
        except ContainerNotFound:  # a FileNotFoundError too, but not this race
            raise
        except FileNotFoundError as exc:
            # Seen here: kill() reads freezer.state after SIGKILL, when lxcone-monitor may
            # already have removed the cgroup of the dead init.
            note_error("Runtime.kill", exc)
            self.rt.kill(name)

    def ensure_created(self, spec) -> None:
        """Untimed: the container exists and is stopped, as an LXC container that has been
        defined (lxc-create) and not started; a running one is killed, not deleted."""
        from lxcone.runtime import ContainerNotFound

        try:
            if self.rt.state(spec.name).status in ("running", "frozen"):
                self.rt.kill(spec.name)
        except ContainerNotFound:
            self.rt.create(spec)
        peers.reap_orphans()

    def ensure_gone(self, name: str) -> None:
        """Untimed cleanup between rounds: kill (if running) and delete the record."""
        from lxcone.runtime import ContainerNotFound

        try:
            self.rt.delete(name, force=True)
        except ContainerNotFound:  # a FileNotFoundError subclass: nothing to clean
            pass
        except FileNotFoundError as exc:  # the same race as in kill(), through delete()
            note_error("Runtime.delete(force=True)", exc)
            self.rt.delete(name, force=True)
        peers.reap_orphans()

    def monitors(self) -> list[int]:
        """Live lxcone-monitor processes whose config lives under our run dir (the oracle)."""
        prefix = str(self.run_dir).encode()
        return peers.pids_matching(lambda argv: len(argv) > 1 and argv[0].endswith(
            b"lxcone-monitor") and argv[1].startswith(prefix))

    def cleanup(self) -> list[str]:
        """Kill and delete everything, then prove nothing is left; returns the problems."""
        problems = []
        try:
            states = self.rt.list()
        except Exception as exc:  # the runtime under test may be broken; still clean up
            problems.append(f"Runtime.list() failed: {exc!r}")
            states = []
        for s in states:
            if s.status in ("running", "frozen"):
                problems.append(f"lxcone container {s.name} was still {s.status} at teardown")
            try:
                self.rt.delete(s.name, force=True)
            except Exception as exc:
                problems.append(f"delete({s.name}, force=True) failed: {exc!r}")
        peers.reap_orphans()
        left = self.monitors()
        if left:
            problems.append(f"lxcone-monitor processes left: {left}")
            peers.kill_leftovers(left)
        for d in peers.cgroup_dirs(self.cgroup_parent):
            if peers.has_child_cgroups(d):
                problems.append(f"cgroups left under {d}: {sorted(os.listdir(d))[:5]}")
            if not peers.rmdir_tree(d):
                problems.append(f"could not remove {d}")
        return problems


# -- the OpenNebula driver (issue 4) ------------------------------------------------------------

REMOTES_VMM = Path(__file__).resolve().parent.parent / "remotes" / "vmm" / "lxcone"
#: The VM every driver benchmark deploys: MEMORY (MiB), CPU, VCPU.
VM_MEMORY_MIB, VM_CPU, VM_VCPU = 128, 0.5, 1
SHUTDOWN_TIMEOUT_S = 30


class Driver:
    """LXCoNe's OpenNebula driver as oned runs it: ``remotes/vmm/lxcone/<action>`` through the
    ssh stream (``peers.SshStream``), configured like the contract tests' ``driver`` fixture onto
    a private run dir, cgroup parent and datastores dir, and the bench netns.

    ``agent``: the config key of the same name. With ``agent = true`` the first action starts
    the resident agent (``python -m lxcone.agent serve --config <cfg>``, socket
    ``<run_dir>/agent.sock``); ``cleanup`` stops it with ``python -m lxcone.agent stop``.
    """

    def __init__(self, workdir: Path, cgroup_parent: str, host_netns: str, rootfs: str,
                 agent: bool) -> None:
        self.workdir = workdir
        self.agent = agent
        self.run_dir = workdir / "run"
        self.datastores = workdir / "datastores"
        self.datastores.mkdir(parents=True, exist_ok=True)
        self.cfg = workdir / "lxcone.toml"
        self.cfg.write_text(
            f'run_dir = "{self.run_dir}"\ncgroup_parent = "{cgroup_parent}"\n'
            f'host_netns = "{host_netns}"\nstop_signal = "SIGUSR2"\n'
            f"shutdown_timeout_s = {SHUTDOWN_TIMEOUT_S}\n"
            f'datastores = "{self.datastores}"\nagent = {"true" if agent else "false"}\n')
        self.python = sys.executable
        from lxcone import native

        # As installed: the shim on the C client (`python -m lxcone.install remotes` names it).
        self.env = {**os.environ, "LXCONE_PYTHON": self.python, "LXCONE_CLIENT": native.CLIENT,
                    "LXCONE_CONFIG": str(self.cfg)}
        # the in-process runtime on the same run dir: the oracle for states, and the cleanup
        self.ours = Ours(self.run_dir, cgroup_parent, host_netns, rootfs)
        self.vm_ids: set[int] = set()
        self.agent_running = False

    @property
    def variant(self) -> str:
        return "agent" if self.agent else "no-agent"

    def vm_dir(self, vm_id: int) -> Path:
        return self.datastores / "0" / str(vm_id)

    def add_vm(self, vm_id: int, base_image: str, deployment: bytes) -> str:
        """Untimed: the VM's system-datastore dir as the TM leaves it (disk.0 a copy of the
        raw image, deployment.0 the XML); returns the deployment file's path."""
        d = self.vm_dir(vm_id)
        d.mkdir(parents=True, exist_ok=True)
        peers.copy_image(base_image, str(d / "disk.0"))
        (d / "deployment.0").write_bytes(deployment)
        self.vm_ids.add(vm_id)
        return str(d / "deployment.0")

    def call(self, action: str, *args: str, stdin: bytes) -> peers.SshStream:
        return peers.SshStream([str(REMOTES_VMM / action)], args, stdin, env=self.env)

    def status(self, vm_id: int) -> str:
        from lxcone.runtime import ContainerNotFound

        try:
            return self.ours.rt.state(f"one-{vm_id}").status
        except ContainerNotFound:
            return "absent"

    def disks_in_use(self, vm_id: int) -> list[str]:
        """Loop devices and mounts still holding the VM's disks (empty once released)."""
        return [*peers.loops_backed_by(str(self.vm_dir(vm_id))),
                *peers.mounts_under(str(self.run_dir / f"one-{vm_id}.disks"))]

    # -- the agent

    def agent_socket(self) -> Path:
        return self.run_dir / "agent.sock"

    def agent_answers(self) -> bool:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(0.5)
            try:
                s.connect(str(self.agent_socket()))
            except OSError:
                return False
        return True

    def agent_pids(self) -> list[int]:
        cfg = str(self.cfg).encode()
        return peers.pids_matching(lambda argv: b"lxcone.agent" in b" ".join(argv)
                                   and cfg in b" ".join(argv))

    def warm_up(self, vm_id: int, stdin: bytes) -> None:
        """Untimed: one action (poll of a VM that has no container). With the agent, that action
        starts it: wait until it answers on its socket, then poll once more through it."""
        poll = self.call("poll", f"one-{vm_id}", "node1", str(vm_id), "node1", stdin=stdin)
        poll.check(None)
        if not self.agent:
            return
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not self.agent_answers():
            time.sleep(0.05)
        self.agent_running = self.agent_answers()
        poll.check(None)

    def stop_agent(self) -> list[str]:
        """``python -m lxcone.agent stop --config <cfg>``; then no agent process may be left."""
        problems = []
        if self.agent:
            p = subprocess.run([self.python, "-m", "lxcone.agent", "stop", "--config",
                                str(self.cfg)], capture_output=True, text=True, timeout=30,
                               check=False, env=self.env)
            if p.returncode != 0 and (self.agent_running or self.agent_pids()):
                problems.append(f"lxcone.agent stop exited {p.returncode}: {p.stderr.strip()}")
        for _ in range(100):
            if not self.agent_pids():
                break
            peers.reap_orphans()
            time.sleep(0.05)
        left = self.agent_pids()
        if left:
            problems.append(f"agent processes left after stop: {left}")
            peers.kill_leftovers(left)
        peers.reap_orphans()  # also an agent that exited on its own
        return problems

    def cleanup(self) -> list[str]:
        """Cancel every VM through the driver (releases its disks), stop the agent, then prove
        that no container, monitor, cgroup, disk mount, loop device or agent is left."""
        from lxcone.testing.vmxml import action_data, vm_xml

        problems = []
        for vm_id in sorted(self.vm_ids):
            if self.status(vm_id) not in ("absent", "stopped") or self.disks_in_use(vm_id):
                problems.append(f"VM {vm_id} ({self.variant}) was still deployed at teardown")
            xml = action_data(vm_xml(vm_id, deploy_id=f"one-{vm_id}", nics=[]))
            try:
                self.call("cancel", f"one-{vm_id}", "node1", str(vm_id), "node1",
                          stdin=xml).check()
            except (peers.PeerError, OSError, subprocess.SubprocessError) as exc:
                problems.append(f"cancel of VM {vm_id} at teardown failed: {exc}")
        problems += self.stop_agent()
        problems += self.ours.cleanup()
        for m in reversed(peers.mounts_under(str(self.workdir))):
            problems.append(f"mount left: {m}")
            subprocess.run(["umount", "-l", m], check=False)
        loops = peers.wait_loops_freed(str(self.workdir))
        if loops:
            problems.append(f"loop devices left: {loops}")
        return problems
