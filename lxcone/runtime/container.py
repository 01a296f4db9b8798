"""Container lifecycle: create, start, stop, kill, freeze, thaw, exec, state, list, delete.

The runtime holds no process of its own: each running container has one lxcone-monitor (its
init's parent) and everything else is found again from the run dir, so any LXCoNe process may
exit or crash while containers keep running and stay manageable from a new process.
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import select
import shutil
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, fields, replace
from pathlib import Path

from lxcone import native, procstat
from lxcone.cgroups import CgroupManager, Resources, Stats, from_paths, new_manager
from lxcone.filelock import flock
from lxcone.runtime import placement
from lxcone.runtime import state as st
from lxcone.runtime.errors import (
    ContainerExists,
    ContainerNotFound,
    InvalidTransition,
    MountBusy,
    MountConflict,
    SpecError,
    StartError,
)
from lxcone.runtime.spec import DEFAULT_ENV, Bind, ContainerSpec, check_binds, validate

DEFAULT_RUN_DIR = "/run/lxcone"
DEFAULT_CGROUP_PARENT = "lxcone"
# How long a stop waits for init to be able to receive its signal (_wait_until_caught).
CATCH_WAIT_S = 2.0

CREATED, RUNNING, FROZEN, STOPPED = "created", "running", "frozen", "stopped"

_NS_ALWAYS = (native.CLONE_NEWNS | native.CLONE_NEWPID | native.CLONE_NEWUTS
              | native.CLONE_NEWIPC | native.CLONE_NEWNET | native.CLONE_NEWCGROUP)


@dataclass(frozen=True)
class ContainerState:
    name: str
    status: str  # created | running | frozen | stopped
    pid: int | None  # init, host view, when running or frozen
    monitor_pid: int | None
    exit: str | None  # how init ended last time ("exited 0", "signaled 9")


@dataclass(frozen=True)
class ExecResult:
    returncode: int  # negative: killed by that signal (as subprocess does)
    stdout: bytes
    stderr: bytes


class Runtime:
    """Manages containers under one run dir and one cgroup parent.

    ``host_netns`` names the network namespace (a path such as /run/netns/x) holding the
    host side of NICs and the bridges; None means the caller's own.
    """

    def __init__(self, run_dir: str = DEFAULT_RUN_DIR, cgroup_parent: str = DEFAULT_CGROUP_PARENT,
                 host_netns: str | None = None) -> None:
        self.run_dir = Path(run_dir)
        self.cgroup_parent = cgroup_parent
        self.host_netns = host_netns
        # Processes spawn() started (our children, inside a container) and statuses reaped on
        # the caller's behalf: see _wait_exit for why stop/kill must reap them.
        self._children: dict[int, str] = {}
        self._statuses: dict[int, int] = {}

    # -- lookup -------------------------------------------------------------------------------

    def _dir(self, name: str) -> Path:
        from lxcone.runtime.spec import NAME_RE

        if not NAME_RE.fullmatch(name):
            # Never build a path from a hostile name ("../x", "a/b").
            raise ContainerNotFound(name)
        return self.run_dir / name

    def _load(self, name: str) -> tuple[Path, dict]:
        d = self._dir(name)
        try:
            return d, st.read_state(d)
        except FileNotFoundError:
            raise ContainerNotFound(name) from None

    def spec(self, name: str) -> ContainerSpec:
        _, s = self._load(name)
        return ContainerSpec.from_dict(s["spec"])

    def _cgroups(self, s: dict) -> CgroupManager:
        return from_paths(s["cgroup_paths"])

    # -- create / delete ----------------------------------------------------------------------

    def create(self, spec: ContainerSpec) -> None:
        """Validate and record a container; nothing runs yet. ContainerExists if taken."""
        validate(spec)
        d = self._dir(spec.name)
        self.run_dir.mkdir(parents=True, exist_ok=True, mode=0o711)
        try:
            d.mkdir(mode=0o700)
        except FileExistsError:
            raise ContainerExists(spec.name) from None
        try:
            mgr = new_manager(self.cgroup_parent, spec.name)
            st.write_state(d, {"spec": spec.to_dict(), "cgroup_paths": dict(mgr.paths),
                               "host_netns": self.host_netns})
            # Nothing the monitor reads changes after create (NICs are the runtime's), so the
            # start path does not rewrite it.
            self._write_monitor_config(d, spec, mgr)
        except BaseException:
            shutil.rmtree(d, ignore_errors=True)
            raise

    def delete(self, name: str, force: bool = False) -> None:
        """Remove a stopped container's state and cgroups; ``force`` kills it first."""
        d, s = self._load(name)
        status = self.state(name).status
        if status in (RUNNING, FROZEN):
            if not force:
                raise InvalidTransition(name, status, "delete")
            self.kill(name)
        self._cgroups(s).destroy()
        shutil.rmtree(d)

    # -- start --------------------------------------------------------------------------------

    def run(self, spec: ContainerSpec) -> ContainerState:
        """create + start; on failure nothing is left behind, not even the record."""
        self.create(spec)
        try:
            return self.start(spec.name)
        except BaseException:
            self.delete(spec.name, force=True)
            raise

    def start(self, name: str) -> ContainerState:
        """Start init and return once it has been exec'd. Raises StartError naming the failing
        step; on any failure the cgroups, NICs and processes it made are gone."""
        d, s = self._load(name)
        spec = ContainerSpec.from_dict(s["spec"])
        status = self._state_of(name, d, s).status
        if status not in (CREATED, STOPPED):
            raise InvalidTransition(name, status, "start")
        for leftover in ("init", "exit"):
            (d / leftover).unlink(missing_ok=True)
        mgr = self._cgroups(s)
        ctl_w = status_r = -1
        monitor_pid = pid = None
        try:
            if not (d / "config").exists():
                self._write_monitor_config(d, spec, mgr)
            mgr.create_unified()  # init is born in it (clone3(CLONE_INTO_CGROUP))
            status_r, status_w = os.pipe2(os.O_CLOEXEC)
            ctl_r, ctl_w = os.pipe2(os.O_CLOEXEC)
            monitor_pid = os.posix_spawn(
                native.MONITOR, ["lxcone-monitor", str(d / "config")], {},
                file_actions=[
                    (os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 1, "/dev/null", os.O_WRONLY, 0),
                    (os.POSIX_SPAWN_OPEN, 2, str(d / "monitor.log"),
                     os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600),
                    (os.POSIX_SPAWN_DUP2, status_w, 3),
                    (os.POSIX_SPAWN_DUP2, ctl_r, 4),
                ],
            )
            os.close(status_w)
            os.close(ctl_r)
            # While the monitor starts up and clones init (which waits for the go-ahead), on
            # another CPU: from this one the monitor would wait for us.
            with placement.off_current_cpu():
                mgr.create_v1()
                mgr.set(spec.resources)
            # Nothing to plug: the go-ahead at once, in the same write.
            os.write(ctl_w, b"cgroups\n" if spec.nics else b"cgroups\ngo\n")
            # Buffered: with the early "go" both replies may arrive in one read.
            status = open(status_r, "rb", closefd=False)  # noqa: SIM115 (closed with the fd)
            reply = _read_line(status)
            if not reply.startswith("pid "):
                raise _start_error(reply, name, d)
            pid = int(reply.split()[1])
            if spec.nics:
                # The child mounts meanwhile, and execs init once the monitor has our "go".
                self._plug_nics(spec, pid)
                with contextlib.suppress(BrokenPipeError):  # it ended the start: its report follows
                    os.write(ctl_w, b"go\n")
            reply = _read_line(status)
            if reply != "running":
                raise _start_error(reply, name, d)
        except BaseException:
            if ctl_w >= 0:
                os.close(ctl_w)  # EOF = abort: the monitor kills init and exits
                ctl_w = -1
            if pid is not None:
                # Once we said "go" the monitor no longer reads fd 4: kill init ourselves, or
                # the monitor would keep it running and never exit.
                with contextlib.suppress(ProcessLookupError):
                    fd = native.pidfd_open(pid)
                    try:
                        native.pidfd_send_signal(fd, signal.SIGKILL)
                    finally:
                        os.close(fd)
            if monitor_pid is not None:
                _wait_gone(monitor_pid, d / "config", 10.0)
            self._unplug_nics(spec, s)
            mgr.destroy()
            raise
        finally:
            for fd in (status_r, ctl_w):
                if fd >= 0:
                    os.close(fd)
        # The monitor wrote the init file before "running": no need to read it back.
        return ContainerState(name, RUNNING, pid, monitor_pid, None)

    def _write_monitor_config(self, d: Path, spec: ContainerSpec, mgr: CgroupManager) -> None:
        flags = _NS_ALWAYS
        lines = [f"name {spec.name}", f"rootfs {os.path.realpath(spec.rootfs)}",
                 f"hostname {spec.effective_hostname}", f"run_dir {d}"]
        if spec.privileged:
            lines += ["root_uid 0", "tty_gid 5"]
        else:
            m = spec.id_map
            flags |= native.CLONE_NEWUSER
            lines += [f"uid_map 0 {m.host_uid} {m.size}", f"gid_map 0 {m.host_gid} {m.size}",
                      f"root_uid {m.host_uid}", f"tty_gid {m.host_gid + 5}"]
        lines.append(f"ns_flags {flags}")
        # init is born in the v2 directory (clone3(CLONE_INTO_CGROUP)) and joins the v1 ones
        # itself (CgroupManager.join_files says why).
        unified = mgr.unified_dir()
        if unified:
            lines.append(f"cgroup_dir {unified}")
        lines += [f"cgroup_join {p}" for p in mgr.join_files()]
        lines += [f"arg {a}" for a in spec.init]
        lines += [f"env {e}" for e in spec.env]
        lines += [f"bind {int(b.readonly)} {b.target.lstrip('/')}\t{b.source}" for b in spec.binds]
        st.write_atomic(d / "config", "\n".join(lines) + "\n")

    def _plug_nics(self, spec: ContainerSpec, pid: int) -> None:
        from lxcone import netns

        fd = netns.open_netns(pid)
        try:
            for nic in spec.nics:  # each brings lo up too
                netns.add_nic(nic, fd, self.host_netns)
        finally:
            os.close(fd)

    def _unplug_nics(self, spec: ContainerSpec, s: dict) -> None:
        """Free the host ends of a container whose init is dead or dying: off the bridge and
        renamed at once; the kernel deletes the pairs with the netns (netns.retire_nic)."""
        if not spec.nics:
            return
        from lxcone import netns

        for nic in spec.nics:
            netns.retire_nic(nic.host_name, s.get("host_netns", self.host_netns))

    # -- hot NICs -----------------------------------------------------------------------------

    def add_nic(self, name: str, nic: object) -> None:
        """Plug a NIC into a running container and record it in the spec."""
        from lxcone import netns

        d, s = self._load(name)
        info = self._running_init(name, d, "add a NIC to")
        spec = ContainerSpec.from_dict(s["spec"])
        fd = netns.open_netns(info.pid)
        try:
            netns.add_nic(nic, fd, s.get("host_netns"))
        finally:
            os.close(fd)
        others = [n for n in spec.nics if n.host_name != nic.host_name]
        spec = spec.with_changes(nics=(*others, nic))
        s["spec"] = spec.to_dict()
        st.write_state(d, s)

    def remove_nic(self, name: str, host_name: str) -> None:
        """Unplug a NIC (idempotent) and drop it from the spec."""
        from lxcone import netns

        d, s = self._load(name)
        netns.remove_nic(host_name, s.get("host_netns"))
        spec = ContainerSpec.from_dict(s["spec"])
        s["spec"] = spec.with_changes(
            nics=tuple(n for n in spec.nics if n.host_name != host_name)).to_dict()
        st.write_state(d, s)

    # -- hot mounts ---------------------------------------------------------------------------

    def mount_into(self, name: str, source: str, target: str, readonly: bool = False) -> None:
        """Bind the host path ``source`` (typically a mounted disk) at ``target`` inside the
        container, as a deploy-time bind would be: idmapped to an unprivileged container's
        user namespace, read-only if asked, its missing directories made inside the container
        root by the container's root. Recorded in the spec and the monitor's config, so a
        stop/start and a guest reboot keep it. A container that is not running only gets the
        record (its next start mounts it).

        Idempotent: the same bind again is a no-op. Another bind or another mount already at
        ``target`` raises MountConflict; a bad target raises SpecError.
        """
        target = check_mount_target(target)
        bind = Bind(os.path.normpath(source), target, bool(readonly))
        d, _ = self._load(name)
        with flock(d):  # one read-modify-write of the record at a time
            d, s = self._load(name)
            spec = ContainerSpec.from_dict(s["spec"])
            current = _bind_at(spec, target)
            if current is not None and (
                    (os.path.normpath(current.source), current.readonly)
                    != (bind.source, bind.readonly)):
                raise MountConflict(name, target, _describe(current))
            if current is None:
                # Only the new bind's source is checked (a vanished older one is not this
                # call's business), and the count against the monitor's limit.
                validate(spec.with_changes(binds=(bind,)), (check_binds,))
                if len(spec.binds) >= _MAX_BINDS:
                    raise SpecError(f"at most {_MAX_BINDS} bind mounts")
                new = spec.with_changes(binds=(*spec.binds, bind))
                # Recorded before mounting: a crash in between leaves a record that the next
                # start, reboot or retry honours, never a mount nobody knows of.
                self._record_binds(d, s, new)
            info = st.read_init(d)
            if info is None or not info.alive():
                return
            try:
                created = self._hot_mount(name, info, spec, bind)
            except BaseException as exc:
                if current is None:
                    self._record_binds(d, s, spec)
                if isinstance(exc, native.HotMountError) and exc.errno == errno.EEXIST:
                    raise MountConflict(name, target, "not one of its binds") from exc
                raise
            if created:
                # Only directories we made are removed again at umount_from.
                s.setdefault("mount_dirs", {})[target] = created
                st.write_state(d, s)

    def umount_from(self, name: str, target: str) -> None:
        """Unmount the bind at ``target`` inside the running container, remove the directories
        ``mount_into`` made for it, and drop it from the spec and the monitor's config.

        Never lazily: a mount some process in the container still uses raises MountBusy and
        stays (mounted and recorded). Idempotent: nothing recorded at ``target`` is a success.
        """
        target = check_mount_target(target)
        d, _ = self._load(name)
        with flock(d):  # one read-modify-write of the record at a time
            d, s = self._load(name)
            spec = ContainerSpec.from_dict(s["spec"])
            if _bind_at(spec, target) is None:
                return
            dirs = s.get("mount_dirs", {})
            info = st.read_init(d)
            if info is not None and info.alive():
                pidfd = self._pidfd_of(name, info, "unmount from")
                try:
                    native.hot_umount(pidfd, target, join_userns=not spec.privileged,
                                      rmdir_upto=dirs.get(target))
                except native.HotMountError as exc:
                    if exc.errno == errno.EBUSY:
                        raise MountBusy(name, target) from exc
                    raise
                finally:
                    os.close(pidfd)
            dirs.pop(target, None)
            if not dirs:
                s.pop("mount_dirs", None)
            self._record_binds(d, s, spec.with_changes(
                binds=tuple(b for b in spec.binds if _norm_target(b.target) != target)))

    def _record_binds(self, d: Path, s: dict, spec: ContainerSpec) -> None:
        # The state first: it is the truth, the config is rebuilt from it at each change.
        s["spec"] = spec.to_dict()
        st.write_state(d, s)
        self._write_monitor_config(d, spec, self._cgroups(s))

    def _pidfd_of(self, name: str, info: st.InitInfo, action: str) -> int:
        """A pidfd for init, checked to be that very process (not a recycled pid)."""
        try:
            pidfd = native.pidfd_open(info.pid)
        except ProcessLookupError:
            raise InvalidTransition(name, STOPPED, action) from None
        if not info.alive():
            os.close(pidfd)
            raise InvalidTransition(name, STOPPED, action)
        return pidfd

    def _hot_mount(self, name: str, info: st.InitInfo, spec: ContainerSpec,
                   bind: Bind) -> str | None:
        tree = native.open_tree(bind.source)
        try:
            attrs = native.MOUNT_ATTR_RDONLY if bind.readonly else 0
            userns = -1
            if not spec.privileged:
                attrs |= native.MOUNT_ATTR_IDMAP
                try:
                    userns = os.open(f"/proc/{info.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
                except (FileNotFoundError, ProcessLookupError):
                    raise InvalidTransition(name, STOPPED, "mount into") from None
            try:
                pidfd = self._pidfd_of(name, info, "mount into")  # also proves userns is init's
                try:
                    if attrs:
                        native.mount_setattr(tree, attrs, userns_fd=userns)
                    return native.hot_mount(pidfd, tree, bind.target,
                                            join_userns=not spec.privileged)
                finally:
                    os.close(pidfd)
            finally:
                if userns >= 0:
                    os.close(userns)
        finally:
            os.close(tree)

    # -- state --------------------------------------------------------------------------------

    def state(self, name: str) -> ContainerState:
        return self._state_of(name, *self._load(name))

    def _state_of(self, name: str, d: Path, s: dict) -> ContainerState:
        info = st.read_init(d)
        exit_ = st.read_exit(d)
        if info is None:
            return ContainerState(name, STOPPED if exit_ else CREATED, None, None, exit_)
        if not info.alive():
            return ContainerState(name, STOPPED, None, None, exit_ or "vanished")
        status = RUNNING
        try:
            if self._cgroups(s).freezer_state() != "THAWED":
                status = FROZEN
        except FileNotFoundError:
            pass  # the cgroup went away under a dying container: it is not frozen
        return ContainerState(name, status, info.pid, info.monitor_pid, exit_)

    def list(self) -> list[ContainerState]:
        try:
            names = sorted(os.listdir(self.run_dir))
        except FileNotFoundError:
            return []
        out = []
        for n in names:
            try:
                out.append(self.state(n))
            except (ContainerNotFound, NotADirectoryError):
                continue  # not ours, or deleted while we looked
        return out

    def _running_init(self, name: str, d: Path, action: str) -> st.InitInfo:
        info = st.read_init(d)
        if info is None or not info.alive():
            raise InvalidTransition(name, STOPPED if info else CREATED, action)
        return info

    # -- stop / kill --------------------------------------------------------------------------

    def stop(self, name: str, timeout: float = 10.0, kill_after: bool = True) -> ContainerState:
        """Ask init to power off (spec.stop_signal), wait up to ``timeout`` s, then kill it, or
        with ``kill_after=False`` leave it running and return its (running) state.
        Idempotent: stopping a stopped container just reports it."""
        d, s = self._load(name)
        spec = ContainerSpec.from_dict(s["spec"])
        info = st.read_init(d)
        if info is not None and info.alive():
            self._terminate(name, s, info, spec.stop_signal, timeout, escalate=kill_after)
            if not kill_after and info.alive():
                return self.state(name)
        return self._finish_stop(name, d, s, spec, info)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> ContainerState:
        """Send ``sig`` to init; for SIGKILL wait until the container is gone and cleaned."""
        d, s = self._load(name)
        spec = ContainerSpec.from_dict(s["spec"])
        info = st.read_init(d)
        alive = info is not None and info.alive()
        if sig != signal.SIGKILL:
            if not alive:
                raise InvalidTransition(name, STOPPED, f"send signal {sig} to")
            pidfd = native.pidfd_open(info.pid)
            try:
                native.pidfd_send_signal(pidfd, sig)
            finally:
                os.close(pidfd)
            return self.state(name)
        if alive:
            self._terminate(name, s, info, signal.SIGKILL, 10.0, unplug=spec)
        return self._finish_stop(name, d, s, spec, info, unplugged=alive)

    def _terminate(self, name: str, s: dict, info: st.InitInfo, sig: int, timeout: float,
                   unplug: ContainerSpec | None = None, escalate: bool = True) -> None:
        """Send ``sig`` to init and wait up to ``timeout`` s for it to exit, then SIGKILL.
        With ``unplug``, delete its NICs while init dies (whatever happens to init)."""
        pidfd = -1
        try:
            pidfd = native.pidfd_open(info.pid)
            mgr = self._cgroups(s)
            # A frozen init can neither act on a signal nor die (v1 freezer) until thawed.
            if mgr.freezer_state() != "THAWED":
                mgr.thaw()
            deadline = time.monotonic() + timeout
            if sig != signal.SIGKILL:
                _wait_until_caught(info.pid, pidfd, sig, deadline)
            native.pidfd_send_signal(pidfd, sig)
            if unplug is not None:
                # While init dies on the other CPU.
                self._unplug_nics(unplug, s)
                unplug = None
            if (not self._wait_exit(name, pidfd, max(0.0, deadline - time.monotonic()))
                    and sig != signal.SIGKILL and escalate):
                native.pidfd_send_signal(pidfd, signal.SIGKILL)
                self._wait_exit(name, pidfd, 10.0)
        except ProcessLookupError:
            pass  # it exited on its own meanwhile
        finally:
            if pidfd >= 0:
                os.close(pidfd)
            if unplug is not None:
                self._unplug_nics(unplug, s)

    def _wait_exit(self, name: str, pidfd: int, timeout: float) -> bool:
        """Wait for init (behind ``pidfd``) to exit, reaping our exec'd processes meanwhile.

        The init of a pid namespace cannot finish exiting until every task in the namespace has
        been reaped (zap_pid_ns_processes), and an exec'd process is our child (CLONE_PARENT),
        so its zombie would hold the whole container until we waited for it.
        """
        deadline = time.monotonic() + timeout
        while True:
            self._reap_children(name)
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            if _wait_fd(pidfd, min(left, 0.02 if self._has_children(name) else left)):
                self._reap_children(name)
                return True

    def _has_children(self, name: str) -> bool:
        return name in self._children.values()

    def _reap_children(self, name: str) -> None:
        for pid in [p for p, n in self._children.items() if n == name]:
            try:
                done, status = os.waitpid(pid, os.WNOHANG)
            except ChildProcessError:
                del self._children[pid]  # someone else reaped it
                continue
            if done:
                del self._children[pid]
                self._statuses[pid] = status

    def wait(self, pid: int) -> int:
        """Wait for a process from ``spawn`` and return its exit code (negative: signal).

        Use this rather than os.waitpid: stop/kill may already have reaped it."""
        status = self._statuses.pop(pid, None)
        if status is None:
            _, status = os.waitpid(pid, 0)
            self._children.pop(pid, None)
        return os.waitstatus_to_exitcode(status)

    def _finish_stop(self, name: str, d: Path, s: dict, spec: ContainerSpec,
                     info: st.InitInfo | None, unplugged: bool = False) -> ContainerState:
        if info is not None:
            _wait_gone(info.monitor_pid, d / "config", 10.0)
        if not unplugged:
            self._unplug_nics(spec, s)
        self._cgroups(s).destroy()
        return self.state(name)

    # -- live resources -----------------------------------------------------------------------

    def update(self, name: str, resources: Resources) -> None:
        """Apply new limits to a created, running or frozen container and record them (a later
        start applies the recorded ones). ``None`` fields keep their value. A limit the kernel
        refuses (memory below what the container uses and cannot reclaim: EBUSY) raises with
        the file and errno; the record then keeps the old limits."""
        d, s = self._load(name)
        spec = ContainerSpec.from_dict(s["spec"])
        merged = replace(spec.resources, **{
            f.name: getattr(resources, f.name) for f in fields(Resources)
            if getattr(resources, f.name) not in (None, {})})
        spec = spec.with_changes(resources=merged)
        validate(spec)
        if self.state(name).status in (RUNNING, FROZEN):
            self._cgroups(s).set(resources)
        s["spec"] = spec.to_dict()
        st.write_state(d, s)

    # -- freeze / thaw ------------------------------------------------------------------------

    def freeze(self, name: str) -> None:
        d, s = self._load(name)
        self._running_init(name, d, "freeze")
        self._cgroups(s).freeze()

    def thaw(self, name: str) -> None:
        d, s = self._load(name)
        self._running_init(name, d, "thaw")
        self._cgroups(s).thaw()

    # -- exec ---------------------------------------------------------------------------------

    def spawn(self, name: str, argv: Sequence[str], env: Sequence[str] | None = None, *,
              cwd: str = "/", uid: int = 0, gid: int = 0, stdin: int = -1, stdout: int = -1,
              stderr: int = -1) -> int:
        """Start ``argv`` inside the running container; returns its pid, our child: reap it
        with ``wait(pid)``."""
        d, s = self._load(name)
        info = self._running_init(name, d, "exec in")
        mgr = self._cgroups(s)
        if mgr.freezer_state() != "THAWED":
            raise InvalidTransition(name, FROZEN, "exec in")
        if env is None:
            env = s["spec"].get("env", DEFAULT_ENV)  # only env: no need to rebuild the spec
        pid = native.attach(info.pid, argv, env, cgroup_dir=mgr.unified_dir(),
                            join=mgr.join_files(), cwd=cwd, uid=uid, gid=gid, stdin=stdin,
                            stdout=stdout, stderr=stderr)
        self._children[pid] = name
        return pid

    def exec(self, name: str, argv: Sequence[str], env: Sequence[str] | None = None,
             input: bytes | None = None, timeout: float | None = None) -> ExecResult:
        """Run ``argv`` inside the container and collect its exit code and output (the
        lxc-attach equivalent). TimeoutError after ``timeout`` s (the command is killed)."""
        in_r, in_w = os.pipe2(os.O_CLOEXEC)
        out_r, out_w = os.pipe2(os.O_CLOEXEC)
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
        try:
            pid = self.spawn(name, argv, env, stdin=in_r, stdout=out_w, stderr=err_w)
        except BaseException:
            for fd in (in_r, in_w, out_r, out_w, err_r, err_w):
                os.close(fd)
            raise
        for fd in (in_r, out_w, err_w):
            os.close(fd)
        try:
            out, err = _communicate(in_w, out_r, err_r, input or b"", timeout)
        except TimeoutError:
            os.kill(pid, signal.SIGKILL)
            self.wait(pid)
            raise
        return ExecResult(self.wait(pid), out, err)

    def stats(self, name: str) -> Stats:
        """Usage and limits from the container's cgroups (partial, never failing as a whole)."""
        _, s = self._load(name)
        return self._cgroups(s).stats()

    def console_socket(self, name: str) -> str:
        """Path of the unix socket that serves the console of a running container."""
        d, _ = self._load(name)
        self._running_init(name, d, "attach to the console of")
        return str(d / "console.sock")

    def console_log(self, name: str) -> bytes:
        d, _ = self._load(name)
        try:
            return (d / "console.log").read_bytes()
        except FileNotFoundError:
            return b""


_NO_MOUNT_UNDER = ("/proc", "/sys", "/dev")
_MAX_BINDS = 32  # LXCONE_MAX_BINDS in csrc/container.h, as spec.check_binds enforces


def check_mount_target(target: str) -> str:
    """The normalised form of a hot mount target (``//media/./3/`` -> ``/media/3``), or
    SpecError: it must be absolute, without ``..``, not ``/`` and not under /proc, /sys or /dev
    (the kernel's and the runtime's own mounts)."""
    if not isinstance(target, str) or not target.startswith("/"):
        raise SpecError(f"mount target {target!r} must be an absolute path inside the container")
    if any(c in target for c in "\n\t\0"):
        raise SpecError(f"mount target {target!r} must not contain newlines, tabs or NUL")
    parts = [p for p in target.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise SpecError(f"mount target {target!r} must not contain '..'")
    norm = "/" + "/".join(parts)
    if norm == "/":
        raise SpecError("mount target must not be the container's / (mount below it)")
    for top in _NO_MOUNT_UNDER:
        if norm == top or norm.startswith(top + "/"):
            raise SpecError(f"mount target {norm} is refused: nothing is mounted under {top}")
    if len(norm.encode()) >= 4000:
        raise SpecError(f"mount target {target[:40]!r}... is too long")
    return norm


def _norm_target(target: str) -> str:
    return "/" + "/".join(p for p in target.split("/") if p not in ("", "."))


def _bind_at(spec: ContainerSpec, target: str) -> Bind | None:
    return next((b for b in spec.binds if _norm_target(b.target) == target), None)


def _describe(bind: Bind) -> str:
    return f"bind of {bind.source}{', read-only' if bind.readonly else ''}"


def _read_line(stream: io.BufferedReader) -> str:
    return stream.readline(4096).decode(errors="replace").strip()


def _start_error(reply: str, name: str, d: Path) -> OSError:
    # "error <errno> <call...> <path>" from the monitor or the container child.
    parts = reply.split()
    if len(parts) >= 4 and parts[0] == "error" and parts[1].isdigit():
        return StartError(int(parts[1]), " ".join(parts[2:-1]), parts[-1], name)
    log = ""
    with contextlib.suppress(FileNotFoundError):
        log = (d / "monitor.log").read_text().strip()
    return StartError(errno.EPROTO, "lxcone-monitor", log or reply or "exited early", name)


def _wait_until_caught(pid: int, pidfd: int, sig: int, deadline: float) -> None:
    """Wait, at most CATCH_WAIT_S and until ``deadline``, until init can receive ``sig``
    (procstat.receives says why a stop signal sent earlier is lost). The cap covers a kernel
    that does not name wait channels (no kallsyms): the signal is then sent after it."""
    delay = 2e-4
    deadline = min(deadline, time.monotonic() + CATCH_WAIT_S)
    while (left := deadline - time.monotonic()) > 0:
        if procstat.receives(pid, sig) is not False:
            return  # it can, or it is gone
        if _wait_fd(pidfd, min(delay, left)):
            return  # init exited meanwhile
        delay = min(delay * 2, 0.05)


def _wait_fd(fd: int, timeout: float) -> bool:
    # poll, not select: a resident process (agent, exporter) easily holds fds >= 1024
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(max(0.0, timeout) * 1000))


def _wait_gone(pid: int, config: Path, timeout: float) -> None:
    """Wait for a monitor to exit, reaping it when it is our child (pid 1 reaps it otherwise)."""
    try:
        fd = native.pidfd_open(pid)
    except ProcessLookupError:
        return
    # The monitor may have been killed long ago and its pid reused: only wait for ours. A
    # zombie has no cmdline left (its pid cannot be reused yet), but keeps its comm.
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            cmdline = f.read()
        with open(f"/proc/{pid}/stat", "rb") as f:
            comm = f.read().split(b" (", 1)[1].rsplit(b") ", 1)[0]
    except (OSError, IndexError):
        cmdline, comm = b"", b""
    ours = (cmdline.split(b"\0")[1:2] == [bytes(config)] if cmdline
            else comm == b"lxcone-monitor")
    if not ours:
        os.close(fd)
        return
    try:
        _wait_fd(fd, timeout)
    finally:
        os.close(fd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


def _communicate(in_w: int, out_r: int, err_r: int, data: bytes,
                 timeout: float | None) -> tuple[bytes, bytes]:
    deadline = None if timeout is None else time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    readers = {out_r: out, err_r: err}
    view = memoryview(data)
    poller = select.poll()
    for fd in readers:
        poller.register(fd, select.POLLIN)
    writing = bool(data)
    if writing:
        poller.register(in_w, select.POLLOUT)
    else:
        os.close(in_w)
    try:
        while readers or writing:
            left = None if deadline is None else max(0.0, deadline - time.monotonic()) * 1000
            events = poller.poll(left)
            if not events:
                raise TimeoutError(f"command did not finish within {timeout} s")
            for fd, _ in events:
                if fd == in_w:
                    try:
                        n = os.write(fd, view[:65536])
                    except BrokenPipeError:
                        n = len(view)
                    view = view[n:]
                    if not view:
                        poller.unregister(fd)
                        os.close(fd)
                        writing = False
                    continue
                chunk = os.read(fd, 65536)
                if chunk:
                    readers[fd] += chunk
                else:
                    poller.unregister(fd)
                    del readers[fd]
                    os.close(fd)
    finally:
        for fd in list(readers) + ([in_w] if writing else []):
            os.close(fd)
    return bytes(out), bytes(err)
