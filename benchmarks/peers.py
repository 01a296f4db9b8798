"""Peer runtimes for the benchmarks (LXC 5.0 and crun), plus the /proc and cgroupfs oracles.

Stdlib only and independent of ``lxcone``: the peers and the checks that judge our runtime must
not share code with it. Every peer command is spawned with ``subprocess.run`` from the pytest
process, the same way for every peer, so the harness's own spawn cost (the ``baseline`` group)
is common to all rows.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from pathlib import Path

CGROUP_ROOT = "/sys/fs/cgroup"
PR_SET_CHILD_SUBREAPER = 36


class PeerError(RuntimeError):
    """A peer command failed; the message carries its argv, exit code and stderr tail."""


# -- processes ---------------------------------------------------------------------------------

def become_subreaper() -> None:
    """Make this process the reaper of its orphaned descendants.

    pid 1 on these machines does not reap orphans, so LXC's daemonised monitors, crun's
    container processes and monitors started by the ``lxcone`` CLI would otherwise pile up as
    zombies; as subreaper they come back to us and ``reap_orphans`` collects them.
    """
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err), "prctl(PR_SET_CHILD_SUBREAPER)")


def reap_orphans() -> None:
    """Reap every exited child without blocking.

    Call only between measured steps, never while a ``subprocess`` call is in flight. Returns
    None on purpose: it is passed as ``benchmark.pedantic(setup=...)``, and pytest-benchmark
    takes a truthy return value of a setup for the target's (args, kwargs).
    """
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def proc_cmdline(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().rstrip(b"\0").split(b"\0")
    except OSError:
        return []


def proc_state(pid: int) -> str | None:
    """One-letter state from /proc/PID/stat (R, S, Z, ...), None if gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2:data.rindex(b")") + 3].decode()


def proc_ppid(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return int(data[data.rindex(b")") + 2:].split()[1])


def pids_matching(pred) -> list[int]:
    """Live (non-zombie) pids whose argv satisfies ``pred(argv: list[bytes])``."""
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        pid = int(entry)
        argv = proc_cmdline(pid)
        if argv and pred(argv) and proc_state(pid) not in (None, "Z", "X"):
            out.append(pid)
    return out


def smaps_rollup(pid: int) -> dict[str, int]:
    """/proc/PID/smaps_rollup as {field: bytes} (Rss, Pss, Pss_Anon, Pss_File, ...)."""
    out = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            parts = line.split()
            if len(parts) == 3 and parts[2] == "kB":
                out[parts[0].rstrip(":")] = int(parts[1]) * 1024
    return out


def loadavg() -> float:
    with open("/proc/loadavg") as f:
        return float(f.read().split()[0])


# -- cgroupfs ----------------------------------------------------------------------------------

def hierarchies() -> list[str]:
    """Mounted cgroup hierarchies under /sys/fs/cgroup (v1 controllers, name=systemd, unified)."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            mnt = fields[4]
            fstype = fields[fields.index("-") + 1]
            if fstype in ("cgroup", "cgroup2") and mnt.startswith(CGROUP_ROOT + "/"):
                out.append(mnt)
    return out


def cgroup_dirs(name: str, pattern: bool = False) -> list[str]:
    """Directories called ``name`` (or starting with it when ``pattern``) at the root of every
    hierarchy."""
    found = []
    for h in hierarchies():
        try:
            entries = os.listdir(h)
        except OSError:
            continue
        for e in entries:
            hit = e == name or (pattern and e.startswith(name))
            if hit and os.path.isdir(os.path.join(h, e)):
                found.append(os.path.join(h, e))
    return found


def rmdir_tree(d: str, attempts: int = 100) -> bool:
    """Remove a cgroup directory and its children, deepest first (cgroupfs needs rmdir, not
    unlink). Retries EBUSY for a while: a cgroup stays busy until its last task is reaped."""
    try:
        entries = os.listdir(d)
    except FileNotFoundError:
        return True
    for e in entries:
        p = os.path.join(d, e)
        if os.path.isdir(p) and not os.path.islink(p):
            rmdir_tree(p, attempts)
    for _ in range(attempts):
        try:
            os.rmdir(d)
            return True
        except FileNotFoundError:
            return True
        except OSError:
            reap_orphans()
            time.sleep(0.02)
    return False


def prime_cgroup_write_lock() -> None:
    """Write our own pid into the pids cgroup we already sit in: moves nothing, but takes
    cgroup_threadgroup_rwsem for writing, so the next cgroup.procs write does not wait for an
    RCU grace period (see harness.settle)."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if "pids" in ctrls.split(","):
                procs = os.path.join(CGROUP_ROOT, "pids", path.lstrip("/"), "cgroup.procs")
                with open(procs, "w") as out:
                    out.write(str(os.getpid()))
                return


def has_child_cgroups(d: str) -> bool:
    try:
        return any(os.path.isdir(os.path.join(d, e)) for e in os.listdir(d))
    except FileNotFoundError:
        return False


def own_memcg() -> str:
    """Path of the v1 memory cgroup this process sits in (the machine may nest it)."""
    with open("/proc/self/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            if "memory" in ctrls.split(","):
                return os.path.join(CGROUP_ROOT, "memory", path.lstrip("/"))
    raise FileNotFoundError(2, "no v1 memory cgroup for this process", "/proc/self/cgroup")


def read_int(path: str) -> int:
    with open(path) as f:
        return int(f.read().split()[0])


def memcg_of(pid: int) -> str | None:
    try:
        with open(f"/proc/{pid}/cgroup") as f:
            for line in f:
                _, ctrls, path = line.rstrip("\n").split(":", 2)
                if "memory" in ctrls.split(","):
                    return os.path.join(CGROUP_ROOT, "memory", path.lstrip("/"))
    except OSError:
        return None
    return None


# -- a command runner shared by the peers ------------------------------------------------------

class Spawner:
    """Runs peer commands with stdio on /dev/null and stderr appended to one log file.

    A file rather than a pipe: ``lxc-start -d`` and ``crun create`` leave processes behind
    that may inherit stderr, and a pipe would make the caller wait for them.
    """

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.log = open(log_path, "ab", buffering=0)  # noqa: SIM115 - closed in close()

    def run(self, argv: Sequence[str], check: bool = True) -> int:
        start = self.log.tell()
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=self.log, check=False).returncode
        if rc != 0 and check:
            raise PeerError(f"{' '.join(argv)} exited {rc}: {self.tail(start)}")
        return rc

    def tail(self, start: int = 0) -> str:
        with open(self.log_path, "rb") as f:
            f.seek(max(start, os.path.getsize(self.log_path) - 2000))
            return f.read().decode(errors="replace").strip()

    def close(self) -> None:
        self.log.close()


# -- LXC ---------------------------------------------------------------------------------------

LXC_CONFIG = """\
lxc.uts.name = {name}
lxc.rootfs.path = dir:{rootfs}
lxc.init.cmd = /sbin/init
lxc.signal.halt = SIGUSR2
lxc.apparmor.profile = unconfined
lxc.mount.auto = proc:mixed sys:ro
lxc.autodev = 1
lxc.log.level = ERROR
lxc.log.file = {lxcpath}/{name}/lxc.log
{net}"""

LXC_NET_EMPTY = "lxc.net.0.type = empty\n"
LXC_NET_VETH = """\
lxc.net.0.type = veth
lxc.net.0.link = {bridge}
lxc.net.0.flags = up
lxc.net.0.veth.pair = {pair}
lxc.net.0.ipv4.address = {address}
"""
LXC_NET_HWADDR = "lxc.net.0.hwaddr = {hwaddr}\n"


class Lxc:
    """LXC 5.0 containers in a private lxcpath, driven through the lxc-* tools.

    Containers with a veth live in the bench netns (a /run/netns path). LXC's tools talk to the
    monitor over an abstract unix socket, which is per network namespace, so every command for
    such a container runs under ``nsenter --net=``. ``nsenter --net`` alone is not enough for a
    bridge, though: LXC decides whether ``lxc.net.0.link`` is a kernel bridge by looking at
    /sys/class/net/<link>/bridge, and /sys still shows the machine's own interfaces, so it falls
    back to Open vSwitch and fails ("Failed to attach ... bridge interface doesn't exist").
    ``ip netns exec`` would remount all of /sys and hide the cgroup mounts; instead, one private
    mount namespace (kept alive by a bind mount on a file) gets a sysfs mounted from inside the
    bench netns, bound over /sys/class/net and /sys/devices/virtual/net only, and veth
    commands run as ``nsenter --net=<netns> --mount=<that namespace>``. Its cost is in the
    ``baseline`` group.
    """

    def __init__(self, lxcpath: Path, rootfs: str, spawner: Spawner) -> None:
        self.lxcpath = lxcpath
        self.rootfs = rootfs
        self.sp = spawner
        self.netns: dict[str, str | None] = {}
        self.mntns: str | None = None
        self.mntns_netns: str | None = None
        lxcpath.mkdir(parents=True, exist_ok=True)
        self.pivot_existed = bool(cgroup_dirs("lxc.pivot"))

    def nsenter(self, netns: str) -> list[str]:
        """The ``nsenter`` prefix for commands about a container living in ``netns``."""
        if self.mntns is None:
            self._make_mntns(netns)
        if netns != self.mntns_netns:
            raise PeerError("all LXC veth containers must share one bench netns")
        return ["nsenter", f"--net={netns}", f"--mount={self.mntns}"]

    def _make_mntns(self, netns: str) -> None:
        ns = self.lxcpath / ".mntns"
        sysfs = self.lxcpath / ".sysfs"
        ns.touch()
        sysfs.mkdir(exist_ok=True)
        subprocess.run(["unshare", f"--mount={ns}", "--propagation", "private", "true"],
                       check=True)
        self.mntns, self.mntns_netns = str(ns), netns
        script = (f"mount -t sysfs sysfs {sysfs} && "
                  f"mount --bind {sysfs}/class/net /sys/class/net && "
                  f"mount --bind {sysfs}/devices/virtual/net /sys/devices/virtual/net")
        subprocess.run(["nsenter", f"--net={netns}", f"--mount={ns}", "sh", "-ec", script],
                       check=True)

    def mounts_under(self, prefix: str) -> list[str]:
        """Mount points under ``prefix`` in the private mount namespace of the veth containers
        (mounts made there, e.g. by the driver scripts, are invisible from ours)."""
        if self.mntns is None:
            return []
        out = subprocess.run(["nsenter", f"--mount={self.mntns}", "cat", "/proc/self/mountinfo"],
                             capture_output=True, text=True, check=True).stdout
        return mountinfo_under(out, prefix)

    def _drop_mntns(self) -> None:
        if self.mntns is not None:
            subprocess.run(["umount", self.mntns], check=False)
            self.mntns = None

    def define(self, name: str, netns: str | None = None, bridge: str | None = None,
               pair: str | None = None, address: str | None = None, *,
               rootfs: str | None = None, hwaddr: str | None = None, extra: str = "") -> None:
        """Write ``<lxcpath>/<name>/config``: the shared rootfs unless ``rootfs`` is given, net
        type empty or a veth on ``bridge`` (``hwaddr`` sets its MAC), ``extra`` lines last."""
        d = self.lxcpath / name
        d.mkdir(exist_ok=True)
        net = LXC_NET_EMPTY if bridge is None else LXC_NET_VETH.format(
            bridge=bridge, pair=pair, address=address)
        if bridge is not None and hwaddr is not None:
            net += LXC_NET_HWADDR.format(hwaddr=hwaddr)
        (d / "config").write_text(LXC_CONFIG.format(
            name=name, rootfs=rootfs or self.rootfs, lxcpath=self.lxcpath, net=net) + extra)
        self.netns[name] = netns

    def argv(self, tool: str, name: str, *args: str) -> list[str]:
        cmd = [tool, "-P", str(self.lxcpath), "-n", name, *args]
        ns = self.netns.get(name)
        return [*self.nsenter(ns), *cmd] if ns else cmd

    def start(self, name: str) -> None:
        """``lxc-start -d``: returns once the container is RUNNING."""
        self.sp.run(self.argv("lxc-start", name, "-d"))

    def attach(self, name: str, *cmd: str) -> None:
        self.sp.run(self.argv("lxc-attach", name, "--", *cmd))

    def stop_kill(self, name: str) -> None:
        self.sp.run(self.argv("lxc-stop", name, "-k"))

    def freeze(self, name: str) -> None:
        self.sp.run(self.argv("lxc-freeze", name))

    def unfreeze(self, name: str) -> None:
        self.sp.run(self.argv("lxc-unfreeze", name))

    def state(self, name: str) -> str:
        out = subprocess.run(self.argv("lxc-info", name, "-s", "-H"), capture_output=True,
                             text=True, check=False)
        return out.stdout.strip() or "STOPPED"

    def init_pid(self, name: str) -> int:
        out = subprocess.run(self.argv("lxc-info", name, "-p", "-H"), capture_output=True,
                             text=True, check=True)
        return int(out.stdout.strip())

    def monitor_pid(self, name: str) -> int:
        """The ``[lxc monitor] <lxcpath> <name>`` process (LXC rewrites its argv to say so)."""
        want = f"[lxc monitor] {self.lxcpath} {name}".encode()
        pids = pids_matching(lambda argv: b" ".join(argv).strip() == want)
        if len(pids) != 1:
            raise PeerError(f"expected one LXC monitor for {name}, found {pids}")
        return pids[0]

    def ensure_stopped(self, name: str) -> None:
        """Untimed cleanup between rounds: kill if running, then reap the monitor."""
        if self.state(name) != "STOPPED":
            self.stop_kill(name)
        reap_orphans()

    def cleanup(self) -> list[str]:
        """Stop every container, remove the cgroups LXC made for our names; returns problems."""
        problems = []
        for name in list(self.netns):
            try:
                if self.state(name) != "STOPPED":
                    problems.append(f"LXC container {name} was still running at teardown")
                    self.stop_kill(name)
            except (PeerError, subprocess.SubprocessError) as exc:
                problems.append(str(exc))
        reap_orphans()
        for name in self.netns:
            for prefix in (f"lxc.payload.{name}", f"lxc.monitor.{name}"):
                for d in cgroup_dirs(prefix, pattern=True):
                    if not rmdir_tree(d):
                        problems.append(f"could not remove {d}")
        self._drop_mntns()
        if not self.pivot_existed:
            # LXC parks its exiting monitors in a shared lxc.pivot cgroup; it did not exist
            # before us, so remove it if it is empty (rmdir fails harmlessly if it is not).
            for d in cgroup_dirs("lxc.pivot"):
                with contextlib.suppress(OSError):
                    os.rmdir(d)
        return problems


# -- crun --------------------------------------------------------------------------------------

# crun 1.8.1 refuses the hybrid layout ("cgroups in hybrid mode not supported, drop all
# controllers from cgroupv2", because hugetlb is enabled on /sys/fs/cgroup/unified). As in the
# performance anchors, it runs in a private mount namespace with the unified mount detached.
# Instead of paying `unshare`/`nsenter` on every call, one small stdlib-only server lives in
# that namespace and spawns crun for us: the only added cost is a pipe round trip (measured
# in the `baseline` group as `crun-ns server: /bin/true`).
CRUN_SERVER = r"""
import ctypes, json, os, subprocess, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.umount2(b"/sys/fs/cgroup/unified", 2) != 0 and ctypes.get_errno() != 22:
    err = os.strerror(ctypes.get_errno())
    print(json.dumps({"error": "umount /sys/fs/cgroup/unified: " + err}), flush=True)
    sys.exit(1)
log = open(sys.argv[1], "ab", buffering=0)
print(json.dumps({"ready": os.getpid()}), flush=True)
for line in sys.stdin:
    rc, i = 0, 0
    for i, argv in enumerate(json.loads(line)):
        rc = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=log).returncode
        if rc:
            break
    sys.stdout.write(json.dumps({"rc": rc, "index": i}) + "\n")
    sys.stdout.flush()
"""


class Crun:
    """crun containers from one OCI bundle (the shared busybox rootfs, read-only, /bin/sleep as
    the process because crun gives it no console for busybox init's askfirst shell)."""

    def __init__(self, workdir: Path, rootfs: str, cgroup_parent: str, log_path: Path) -> None:
        self.workdir = workdir
        self.root = workdir / "state"
        self.cgroup_parent = cgroup_parent
        self.log_path = log_path
        self.names: set[str] = set()
        self.bundles: dict[str, Path] = {}
        self.rootfs = rootfs
        workdir.mkdir(parents=True, exist_ok=True)
        self.server = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", sys.executable, "-I", "-S", "-c",
             CRUN_SERVER, str(log_path)],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
            bufsize=1)
        hello = json.loads(self.server.stdout.readline() or '{"error": "server died"}')
        if "ready" not in hello:
            raise PeerError(f"crun namespace server: {hello['error']}")

    def bundle(self, name: str, args: Sequence[str] = ("/bin/sleep", "1000000")) -> None:
        d = self.workdir / name
        d.mkdir(exist_ok=True)
        (d / "config.json").unlink(missing_ok=True)
        subprocess.run(["crun", "spec", "--bundle", str(d)], capture_output=True, check=True)
        spec = json.loads((d / "config.json").read_text())
        spec["process"]["terminal"] = False
        spec["process"]["args"] = list(args)
        spec["root"] = {"path": self.rootfs, "readonly": True}
        spec["hostname"] = name
        spec["linux"]["cgroupsPath"] = f"/{self.cgroup_parent}/{name}"
        (d / "config.json").write_text(json.dumps(spec, indent=1))
        self.bundles[name] = d
        self.names.add(name)

    def _cmd(self, *args: str) -> list[str]:
        return ["crun", "--root", str(self.root), *args]

    def seq(self, *argvs: Sequence[str]) -> None:
        """Run the commands one after another inside the namespace; stop at the first failure."""
        self.server.stdin.write(json.dumps([list(a) for a in argvs]) + "\n")
        reply = json.loads(self.server.stdout.readline() or '{"rc": -1, "index": 0}')
        if reply["rc"] != 0:
            with open(self.log_path, "rb") as f:
                f.seek(max(0, os.path.getsize(self.log_path) - 1500))
                tail = f.read().decode(errors="replace").strip()
            raise PeerError(f"{' '.join(argvs[reply['index']])} exited {reply['rc']}: {tail}")

    def create_start(self, name: str) -> None:
        self.seq(self._cmd("create", "--bundle", str(self.bundles[name]), name),
                 self._cmd("start", name))

    def create_start_exec(self, name: str, *cmd: str) -> None:
        self.seq(self._cmd("create", "--bundle", str(self.bundles[name]), name),
                 self._cmd("start", name), self._cmd("exec", name, *cmd))

    def exec(self, name: str, *cmd: str) -> None:
        self.seq(self._cmd("exec", name, *cmd))

    def pause(self, name: str) -> None:
        self.seq(self._cmd("pause", name))

    def resume(self, name: str) -> None:
        self.seq(self._cmd("resume", name))

    def delete_force(self, name: str) -> None:
        self.seq(self._cmd("delete", "-f", name))

    def ensure_deleted(self, name: str) -> None:
        if (self.root / name).exists():
            self.delete_force(name)
        reap_orphans()

    def true_roundtrip(self) -> None:
        self.seq(["/bin/true"])

    def cleanup(self) -> list[str]:
        problems = []
        for name in sorted(self.names):
            if (self.root / name).exists():
                try:
                    self.delete_force(name)
                except PeerError as exc:
                    problems.append(str(exc))
        if self.server.poll() is None:
            self.server.stdin.close()
            try:
                self.server.wait(5)
            except subprocess.TimeoutExpired:
                self.server.kill()
                self.server.wait()
        reap_orphans()
        for d in cgroup_dirs(self.cgroup_parent):
            if not rmdir_tree(d):
                problems.append(f"could not remove {d}")
        return problems


# -- block devices, mounts and limits (oracles for the driver benchmark) -------------------------

def loops_backed_by(prefix: str) -> list[str]:
    """Loop devices whose backing file lives under ``prefix`` (global: any mount namespace)."""
    found = []
    for dev in sorted(os.listdir("/sys/block")):
        if not dev.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{dev}/loop/backing_file") as f:
                backing = f.read().strip()
        except OSError:  # not bound
            continue
        if backing.startswith(prefix):
            found.append(f"/dev/{dev}")
    return found


def mountinfo_under(text: str, prefix: str) -> list[str]:
    """Mount points under ``prefix`` in a mountinfo text."""
    return [line.split()[4] for line in text.splitlines()
            if line.split() and line.split()[4].startswith(prefix)]


def mounts_under(prefix: str) -> list[str]:
    """Mount points under ``prefix`` in this process's mount namespace."""
    with open("/proc/self/mountinfo") as f:
        return mountinfo_under(f.read(), prefix)


#: The limit files the driver benchmark compares between the two sides (cgroup v1).
LIMIT_FILES = ("memory/memory.limit_in_bytes", "memory/memory.memsw.limit_in_bytes",
               "cpu/cpu.cfs_quota_us", "cpu/cpu.cfs_period_us", "cpu/cpu.shares",
               "cpuset/cpuset.cpus")


def cgroup_limits(pid: int) -> dict[str, str]:
    """The limits in force on ``pid``: each LIMIT_FILES entry read in the cgroup the process
    sits in (per /proc/PID/cgroup), as text."""
    paths = {}
    with open(f"/proc/{pid}/cgroup") as f:
        for line in f:
            _, ctrls, path = line.rstrip("\n").split(":", 2)
            for c in ctrls.split(","):
                paths[c] = path
    out = {}
    for entry in LIMIT_FILES:
        ctrl, name = entry.split("/")
        try:
            with open(os.path.join(CGROUP_ROOT, ctrl, paths[ctrl].lstrip("/"), name)) as f:
                out[name] = f.read().strip()
        except (KeyError, OSError) as exc:
            out[name] = f"? ({exc.__class__.__name__})"
    return out


# -- OpenNebula's ssh transport, and the LXC 5.0 counterpart of the driver's actions ------------

class SshStream:
    """One action call as oned's ssh transport makes the host run it: ``bash -s`` reading a
    script in which the action's stdin (the VM XML) comes through a quoted heredoc with a
    trailing newline and the arguments are single-quoted. The script text is built once; ``run``
    is what a benchmark times: from spawning bash to its exit, stdout and stderr read to EOF
    through pipes, as oned reads them."""

    def __init__(self, command: Sequence[str], args: Sequence[str], stdin: bytes,
                 env: dict[str, str] | None = None, timeout: float = 120.0) -> None:
        self.argv = [*command, *args]
        quoted = " ".join(shlex.quote(a) for a in self.argv)
        self.body = f"cat << 'EOT' | {quoted}\n{stdin.decode()}\nEOT\n".encode()
        self.env = env
        self.timeout = timeout

    def run(self) -> subprocess.CompletedProcess:
        return subprocess.run(["bash", "-s"], input=self.body, capture_output=True, env=self.env,
                              timeout=self.timeout, check=False)

    def check(self, stdout: bytes | None = b"") -> subprocess.CompletedProcess:
        """``run``, raising PeerError unless it exited 0 (with ``stdout``, unless None)."""
        p = self.run()
        if p.returncode != 0 or (stdout is not None and p.stdout != stdout):
            raise PeerError(f"{' '.join(self.argv)} exited {p.returncode}, stdout {p.stdout!r}: "
                            f"{p.stderr.decode(errors='replace').strip()[-1500:]}")
        return p


# The LXC 5.0 side of the driver benchmark: what a minimal LXC-based driver script would run on
# the host for each action, and nothing else (no XML parsing, the LXC config is written before
# the run). They run under one `nsenter --net --mount` prefix (the Lxc class explains why).
LXC_DRIVER_SCRIPTS = {
    "deploy": """\
#!/bin/sh
# deploy IMAGE MOUNTPOINT LXCPATH NAME: the raw image on a loop device, mounted, then
# lxc-start -d, which returns once the container is RUNNING.
set -e
dev=$(losetup -f --show "$1")
echo "$dev" > "$2.loop"
mount "$dev" "$2"
# PATH without newuidmap/newgidmap: root has no /etc/subuid range on this machine, so LXC
# writes the id maps itself (as our runtime does) instead of failing.
PATH=/usr/sbin:/sbin exec /usr/bin/lxc-start -P "$3" -n "$4" -d
""",
    "cancel": """\
#!/bin/sh
# cancel MOUNTPOINT LXCPATH NAME: lxc-stop -k, then unmount the image and free the loop device.
set -e
lxc-stop -P "$2" -n "$3" -k
umount "$1"
read -r dev < "$1.loop"
losetup -d "$dev"
""",
    "shutdown": """\
#!/bin/sh
# shutdown MOUNTPOINT LXCPATH NAME TIMEOUT: graceful lxc-stop (lxc.signal.halt, wait for the
# guest to power off, never kill), then unmount the image and free the loop device.
set -e
lxc-stop -P "$2" -n "$3" --nokill -t "$4"
umount "$1"
read -r dev < "$1.loop"
losetup -d "$dev"
""",
    "attach_nic": """\
#!/bin/sh
# attach_nic LXCPATH NAME HOST_IF MAC BRIDGE GUEST_IF ADDRESS: a veth whose host end is up on
# the bridge and whose other end is created inside the container's netns (found through
# lxc-info -p) under its final name and MAC, then addressed and set up inside with lxc-attach.
# (lxc-device add cannot be used here: it looks for the interface in pid 1's netns, and the
# bridge lives in the bench netns.)
set -e
pid=$(lxc-info -P "$1" -n "$2" -p -H)
ip link add "$3" master "$5" up type veth peer name "$6" address "$4" netns "$pid"
lxc-attach -P "$1" -n "$2" -- /bin/sh -c "ip addr add $7 dev $6 && ip link set $6 up"
""",
    "detach_nic": """\
#!/bin/sh
# detach_nic HOST_IF: deleting the host end of the veth removes the guest end with it.
exec ip link del "$1"
""",
}


class LxcDriverVm:
    """One VM of the LXC side: a copy of the raw image, its mount point, its LXC container."""

    def __init__(self, name: str, image: Path, mnt: Path) -> None:
        self.name = name
        self.image = image
        self.mnt = mnt


class LxcDriver:
    """LXC 5.0 doing what the OpenNebula driver's actions do, as shell scripts run through the
    same ssh-stream transport (LXC_DRIVER_SCRIPTS). The scripts, the images and the mount points
    live under ``workdir``; the containers are ``lxc``'s (so its teardown checks them too)."""

    def __init__(self, lxc: Lxc, netns: str, workdir: Path) -> None:
        self.lxc = lxc
        self.netns = netns
        self.workdir = workdir
        self.remotes = workdir / "remotes"
        self.remotes.mkdir(parents=True, exist_ok=True)
        for action, text in LXC_DRIVER_SCRIPTS.items():
            path = self.remotes / action
            path.write_text(text)
            path.chmod(0o755)
        self.prefix = lxc.nsenter(netns)
        self.vms: dict[str, LxcDriverVm] = {}
        self.hot_ifs: set[str] = set()

    def define(self, name: str, base_image: str, *, bridge: str, pair: str, mac: str,
               address: str, extra: str) -> LxcDriverVm:
        """Untimed: the image copy, the mount point and the LXC config (rootfs = the mount
        point, a veth on ``bridge``, the ``extra`` lines: limits, id maps)."""
        d = self.workdir / name
        d.mkdir(exist_ok=True)
        vm = LxcDriverVm(name, d / "disk.0", d / "rootfs")
        vm.mnt.mkdir(exist_ok=True)
        copy_image(base_image, str(vm.image))
        self.lxc.define(name, netns=self.netns, bridge=bridge, pair=pair, address=address,
                        rootfs=str(vm.mnt), hwaddr=mac, extra=extra)
        self.vms[name] = vm
        return vm

    def call(self, action: str, *args: str, stdin: bytes = b"") -> SshStream:
        return SshStream([*self.prefix, str(self.remotes / action)], args, stdin)

    def deploy(self, vm: LxcDriverVm, stdin: bytes = b"") -> SshStream:
        return self.call("deploy", str(vm.image), str(vm.mnt), str(self.lxc.lxcpath), vm.name,
                         stdin=stdin)

    def cancel(self, vm: LxcDriverVm, stdin: bytes = b"") -> SshStream:
        return self.call("cancel", str(vm.mnt), str(self.lxc.lxcpath), vm.name, stdin=stdin)

    def shutdown(self, vm: LxcDriverVm, timeout_s: int, stdin: bytes = b"") -> SshStream:
        return self.call("shutdown", str(vm.mnt), str(self.lxc.lxcpath), vm.name,
                         str(timeout_s), stdin=stdin)

    def attach_nic(self, vm: LxcDriverVm, host_if: str, mac: str, bridge: str, guest_if: str,
                   address: str, stdin: bytes = b"") -> SshStream:
        self.hot_ifs.add(host_if)
        return self.call("attach_nic", str(self.lxc.lxcpath), vm.name, host_if, mac, bridge,
                         guest_if, address, stdin=stdin)

    def detach_nic(self, host_if: str, stdin: bytes = b"") -> SshStream:
        return self.call("detach_nic", host_if, stdin=stdin)

    def log_tail(self, vm: LxcDriverVm) -> str:
        try:
            with open(self.lxc.lxcpath / vm.name / "lxc.log", "rb") as f:
                return f.read()[-3000:].decode(errors="replace")
        except OSError as exc:
            return str(exc)

    def is_deployed(self, vm: LxcDriverVm) -> bool:
        return bool(loops_backed_by(str(vm.image)) or self.lxc.mounts_under(str(vm.mnt))
                    or self.lxc.state(vm.name) != "STOPPED")

    def exec_out(self, vm: LxcDriverVm, *cmd: str) -> str:
        """lxc-attach output (untimed checks)."""
        return subprocess.run(self.lxc.argv("lxc-attach", vm.name, "--", *cmd),
                              capture_output=True, text=True, check=True).stdout

    def ensure_undeployed(self, vm: LxcDriverVm) -> None:
        """Untimed: stopped, unmounted, loop device freed, whatever state a round left."""
        if self.lxc.state(vm.name) != "STOPPED":
            self.lxc.stop_kill(vm.name)
        for m in self.lxc.mounts_under(str(vm.mnt)):
            subprocess.run([*self.prefix, "umount", m], check=True)
        for dev in loops_backed_by(str(vm.image)):
            subprocess.run(["losetup", "-d", dev], check=False)
        reap_orphans()

    def ensure_deployed(self, vm: LxcDriverVm) -> None:
        if self.lxc.state(vm.name) == "RUNNING":
            return
        self.ensure_undeployed(vm)
        self.deploy(vm).check()
        reap_orphans()

    def cleanup(self) -> list[str]:
        """Undeploy everything, then prove no container, mount, loop device or veth is left;
        returns the problems (the LXC cgroups are the Lxc fixture's to check)."""
        problems = []
        for vm in self.vms.values():
            try:
                if self.is_deployed(vm):
                    problems.append(f"LXC driver VM {vm.name} was still deployed at teardown")
                self.ensure_undeployed(vm)
            except (PeerError, subprocess.SubprocessError, OSError) as exc:
                problems.append(f"undeploying {vm.name}: {exc}")
        links = set(netns_links(self.netns))
        for host_if in sorted(self.hot_ifs & links):
            problems.append(f"hot-plugged veth {host_if} left in the bench netns")
            subprocess.run(["nsenter", f"--net={self.netns}", "ip", "link", "del", host_if],
                           check=False)
        loops = wait_loops_freed(str(self.workdir))
        if loops:
            problems.append(f"loop devices left: {loops}")
        mounts = self.lxc.mounts_under(str(self.workdir))
        if mounts:
            problems.append(f"mounts left: {mounts}")
        return problems


def copy_image(src: str, dst: str) -> None:
    """A private copy of a raw image (reflink where the filesystem can, sparse otherwise)."""
    subprocess.run(["cp", "--reflink=auto", "--sparse=always", src, dst], check=True)


# -- host-side network namespace ---------------------------------------------------------------

def make_host_netns(name: str, bridge: str, address: str) -> str:
    """A throw-away netns holding ``bridge`` (up, with ``address``); returns its /run/netns path.

    The machine's own network namespace is never touched: every ``ip`` command runs inside the
    new namespace through ``nsenter --net`` (``ip netns exec`` would also remount /sys).
    """
    subprocess.run(["ip", "netns", "add", name], check=True)
    path = f"/run/netns/{name}"
    try:
        for cmd in (["ip", "link", "set", "lo", "up"],
                    ["ip", "link", "add", bridge, "type", "bridge"],
                    ["ip", "addr", "add", address, "dev", bridge],
                    ["ip", "link", "set", bridge, "up"]):
            subprocess.run(["nsenter", f"--net={path}", *cmd], check=True)
    except BaseException:
        subprocess.run(["ip", "netns", "delete", name], check=False)
        raise
    return path


def netns_links(path: str) -> list[str]:
    out = subprocess.run(["nsenter", f"--net={path}", "ip", "-o", "link", "show"],
                         capture_output=True, text=True, check=True).stdout
    return [line.split(":")[1].strip().split("@")[0] for line in out.splitlines()]


def delete_netns(name: str) -> None:
    subprocess.run(["ip", "netns", "delete", name], check=False)


def kill_all(pids: Iterable[int]) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)


def kill_leftovers(pids: Iterable[int]) -> None:
    """Teardown: SIGKILL processes a check found left, give them a moment, reap our own."""
    kill_all(pids)
    time.sleep(0.2)
    reap_orphans()


def wait_loops_freed(prefix: str) -> list[str]:
    """Wait up to 2 s for every loop device backed under ``prefix`` to be freed (a busy one is
    freed when its last user goes); the ones still bound."""
    for _ in range(100):
        left = loops_backed_by(prefix)
        if not left:
            return []
        time.sleep(0.02)
    return loops_backed_by(prefix)


def rm_tree(path: Path) -> None:
    shutil.rmtree(path, ignore_errors=True)
