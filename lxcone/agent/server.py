"""The resident per-host agent: runs driver actions for the thin action client.

A fresh Python process per action pays ~40 ms of interpreter and ~130 ms of pyroute2 import
before doing anything (DESIGN.md §3); the agent pays it once and runs each action in a thread of
its own, through the same ``lxcone.driver.main.run`` as the in-process path, so both behave the
same to the byte. It holds no state that matters: containers belong to their monitors and
records, so the agent can be stopped, killed or restarted at any time (the per-VM lock is an
flock, released with the process).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import socket
import struct
import sys
import threading
import time
from pathlib import Path

from lxcone.agent import wire

SOCKET = "agent.sock"
PIDFILE = "agent.pid"
LOCKFILE = "agent.lock"
LOG = "agent.log"
REQUEST_TIMEOUT_S = 30.0  # a client sends its whole request at once; a stalled one is dropped
# Children of ours that we reap: monitors of containers we started (their parent is whoever
# started them; pid 1 of some hosts does not reap) and nothing else. Processes from `spawn`
# (exec into a container) are waited for by the action that made them.
_REAPED_COMMS = (b"lxcone-monitor",)


class AgentRunning(OSError):
    """Another agent already serves this run dir."""


def paths(run_dir: str) -> dict[str, Path]:
    d = Path(run_dir)
    return {"socket": d / SOCKET, "pid": d / PIDFILE, "lock": d / LOCKFILE, "log": d / LOG}


def preload() -> None:
    """Import everything an action may need, so that no request pays for it."""
    import xml.etree.ElementTree  # noqa: F401

    import lxcone.driver.actions
    import lxcone.driver.convert
    import lxcone.driver.disks
    import lxcone.netns.links
    import lxcone.storage.disk
    import lxcone.storage.snapshot  # noqa: F401


class Agent:
    def __init__(self, run_dir: str, log: bool = True, group: str = "") -> None:
        self.paths = paths(run_dir)
        self.group = group
        self._gid: int | None = None
        self.run_dir = run_dir
        self.log_enabled = log
        self._lock_fd = -1
        self._sock: socket.socket | None = None
        self._sock_ino: int | None = None
        self._busy: set[threading.Thread] = set()
        self._busy_lock = threading.Lock()
        self._stopping = threading.Event()

    # -- life --------------------------------------------------------------------------------

    def bind(self) -> None:
        """Take the run dir's agent lock and listen on its socket. AgentRunning if taken."""
        os.makedirs(self.run_dir, mode=0o711, exist_ok=True)
        fd = os.open(self.paths["lock"], os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise AgentRunning(0, "another lxcone agent serves this run dir",
                               str(self.paths["lock"])) from None
        self._lock_fd = fd
        # Bound under a private name, restricted, then renamed: the socket never exists at its
        # public path with the umask's mode. Whatever is at the public path is stale: the
        # agent that made it no longer holds the lock.
        tmp = self.paths["socket"].with_name(f"{SOCKET}.{os.getpid()}")
        tmp.unlink(missing_ok=True)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        if self.group:
            import grp

            try:
                self._gid = grp.getgrnam(self.group).gr_gid
            except KeyError:
                sock.close()
                raise OSError(errno.ENOENT, f"agent_group: no group {self.group!r}") from None
        try:
            sock.bind(str(tmp))
            if self._gid is not None:
                os.chown(tmp, 0, self._gid)
            os.chmod(tmp, 0o660 if self._gid is not None else 0o600)
            sock.listen(128)
            os.rename(tmp, self.paths["socket"])
        except BaseException:
            sock.close()
            tmp.unlink(missing_ok=True)
            raise
        self._sock = sock
        self._sock_ino = os.stat(self.paths["socket"]).st_ino
        self.paths["pid"].write_text(f"{os.getpid()}\n")

    def serve_forever(self) -> None:
        assert self._sock is not None
        reaper = threading.Thread(target=self._reap_loop, name="reaper", daemon=True)
        reaper.start()
        self.log(f"serving on {self.paths['socket']} (pid {os.getpid()})")
        while not self._stopping.is_set():
            try:
                conn, _ = self._sock.accept()
            except OSError:
                if self._stopping.is_set():
                    break
                raise
            t = threading.Thread(target=self._handle, args=(conn,), name="action")
            with self._busy_lock:
                self._busy.add(t)
            t.start()

    def stop(self) -> None:
        """Stop accepting; called from the signal handler."""
        self._stopping.set()
        if self._sock is not None:
            # shutdown() wakes the accept() of the main thread; close() alone would not.
            with contextlib.suppress(OSError):
                self._sock.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        """Wait for the actions in flight (a shutdown may take its whole timeout), then leave
        the run dir as a new agent would want it."""
        with self._busy_lock:
            busy = list(self._busy)
        if busy:
            self.log(f"waiting for {len(busy)} action(s) in flight")
        for t in busy:
            t.join()
        with contextlib.suppress(FileNotFoundError):
            if os.stat(self.paths["socket"]).st_ino == self._sock_ino:
                self.paths["socket"].unlink()
        if self._sock is not None:
            self._sock.close()
        self.paths["pid"].unlink(missing_ok=True)
        if self._lock_fd >= 0:
            os.close(self._lock_fd)
        self.log("stopped")

    # -- one request ---------------------------------------------------------------------------

    def _handle(self, conn: socket.socket) -> None:
        from lxcone.driver.main import run

        t0 = time.monotonic()
        action = "?"
        try:
            with conn:
                conn.settimeout(REQUEST_TIMEOUT_S)
                uid, gid = _peer_ids(conn)
                try:
                    fields = wire.read_request(conn)
                except wire.UnknownFormat as exc:
                    # A client of another version: a reset tells it nothing ran, and it runs
                    # the action in its own process instead.
                    self.log(f"request from uid {uid}: {exc}; the client runs it itself")
                    conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                    return
                except (wire.WireError, OSError) as exc:
                    self.log(f"bad request from uid {uid}: {exc}")
                    with contextlib.suppress(OSError):
                        conn.sendall(wire.encode_reply(1, b"", f"ERROR: agent: {exc}\n".encode()))
                    return
                config, action, *argv, stdin = fields
                action = action.decode(errors="replace")
                if not self._allowed(uid, gid):
                    code, out, err = 1, "", f"ERROR: {action}: uid {uid} may not run actions\n"
                else:
                    code, out, err = run(action, [a.decode(errors="surrogateescape")
                                                  for a in argv], stdin,
                                         config.decode(errors="surrogateescape"))
                with contextlib.suppress(OSError):  # the client went away: nothing to tell
                    conn.sendall(wire.encode_reply(code, out.encode(), err.encode()))
            ms = (time.monotonic() - t0) * 1000
            self.log(f"{action} vm {argv[-2].decode(errors='replace') if len(argv) > 1 else '?'} "
                     f"exit {code} in {ms:.1f} ms{(': ' + err.strip()) if err else ''}")
        finally:
            with self._busy_lock:
                self._busy.discard(threading.current_thread())

    def _allowed(self, uid: int, gid: int) -> bool:
        """Root, ourselves, or a member of agent_group (primary or supplementary)."""
        if uid in (0, os.geteuid()):
            return True
        if self._gid is None:
            return False
        if gid == self._gid:
            return True
        import grp
        import pwd

        try:
            return pwd.getpwuid(uid).pw_name in grp.getgrgid(self._gid).gr_mem
        except KeyError:
            return False

    # -- housekeeping --------------------------------------------------------------------------

    def _reap_loop(self) -> None:
        while not self._stopping.wait(1.0):
            reap_monitors()

    def log(self, msg: str) -> None:
        if self.log_enabled:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            sys.stderr.write(f"{stamp} lxcone-agent: {msg}\n")
            sys.stderr.flush()


def _peer_ids(conn: socket.socket) -> tuple[int, int]:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    _, uid, gid = struct.unpack("3i", creds)
    return uid, gid


def reap_monitors() -> int:
    """Reap our children that are exited container monitors; how many were reaped.

    A container that powers itself off ends its monitor, whose parent is the agent that started
    it: without this it would stay a zombie for the agent's lifetime."""
    reaped = 0
    me = os.getpid()
    try:
        tids = os.listdir(f"/proc/{me}/task")
    except OSError:
        return 0
    for tid in tids:
        try:
            with open(f"/proc/{me}/task/{tid}/children", "rb") as f:
                children = f.read().split()
        except OSError:
            continue
        for pid in map(int, children):
            try:
                with open(f"/proc/{pid}/stat", "rb") as f:
                    stat = f.read()
            except OSError:
                continue
            comm, _, rest = stat.partition(b" (")[2].rpartition(b") ")
            if rest[:1] == b"Z" and comm in _REAPED_COMMS:
                with contextlib.suppress(ChildProcessError):
                    if os.waitpid(pid, os.WNOHANG)[0]:
                        reaped += 1
    return reaped


def serve(run_dir: str, log_path: str | None = None, group: str = "") -> int:
    """Run the agent until SIGTERM/SIGINT. 0 on a clean stop, 3 when another agent serves."""
    os.makedirs(run_dir, mode=0o711, exist_ok=True)
    if log_path is not None:
        fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        os.dup2(fd, 2)
        os.close(fd)
    agent = Agent(run_dir, group=group)
    try:
        agent.bind()
    except AgentRunning as exc:
        agent.log(f"not starting: {exc.strerror} ({exc.filename})")
        return 3
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: agent.stop())
    signal.signal(signal.SIGHUP, signal.SIG_IGN)  # a closing ssh session must not stop it
    try:
        preload()
        agent.serve_forever()
    finally:
        agent.close()
    return 0


def read_pid(run_dir: str) -> int | None:
    """The pid of the agent serving ``run_dir``, if one does (it holds the lock)."""
    p = paths(run_dir)
    try:
        fd = os.open(p["lock"], os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        with contextlib.suppress(OSError, ValueError):
            return int(p["pid"].read_text())
        return None
    else:
        return None  # nobody holds it: no agent
    finally:
        os.close(fd)


def stop(run_dir: str, timeout: float = 300.0) -> bool:
    """SIGTERM the agent of ``run_dir`` and wait until it exited; False if none ran."""
    from lxcone import native

    pid = read_pid(run_dir)
    if pid is None:
        return False
    try:
        fd = native.pidfd_open(pid)
    except ProcessLookupError:
        return False
    try:
        native.pidfd_send_signal(fd, signal.SIGTERM)
        import select

        poller = select.poll()
        poller.register(fd, select.POLLIN)
        if not poller.poll(timeout * 1000):
            raise TimeoutError(f"the lxcone agent (pid {pid}) did not stop within {timeout:g} s")
    finally:
        os.close(fd)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, 0)  # when we started it (tests): no zombie left behind
    return True
