"""qcow2 images as a raw file: a qemu-storage-daemon FUSE export (our kernels have no nbd).

One daemon per disk, started with ``--daemonize`` (the parent returns once the export is mounted)
and every path absolute. Its pidfile and QMP socket live in the state dir, so another process can
stop it later. Teardown order matters (reference/storage-notes.md §1.2): qemu-storage-daemon 7.2
does not unmount its FUSE export on SIGTERM or QMP ``quit``, and leaves a dead mount behind
("Transport endpoint is not connected"). So: unmount the filesystem, let the loop go, unmount the
export ourselves, and only then SIGTERM the daemon. In that order it exits in ~2 ms (measured),
instead of 1.4-1.9 s with the export still mounted.

Growing (lxcone.storage.grow): the daemon holds the image open and write-locked, so the image
grows through its QMP socket (``block_resize`` on the exported qcow2 node), and the export's
size is re-read with statx(AT_STATX_FORCE_SYNC): the kernel caches FUSE attributes for the
1 s qsd asks for, and a loop device takes its size from that cache.
"""

from __future__ import annotations

import errno
import json
import os
import select
import shutil
import signal
from typing import Any

from lxcone import native
from lxcone.procstat import live_starttime
from lxcone.storage.sysinfo import mount_at, proc_cmdline

QSD = "qemu-storage-daemon"
SUN_PATH_MAX = 107
STOP_TIMEOUT = 10.0
QMP_TIMEOUT = 30.0  # seconds for a whole QMP exchange (block_resize of a qcow2 is fast)
# node names in the daemon's block graph: the image file, and the qcow2 node that is exported
FILE_NODE = "file0"
FORMAT_NODE = "fmt0"
EXPORT_SIZE_WAIT = 3.0  # the FUSE attribute timeout of qsd's export is 1 s

# qsd prints one "qemu-storage-daemon: <reason>" line; the OSError text in it gives the errno.
_ERRNO_HINTS = (
    ("No such file or directory", errno.ENOENT),
    ("Permission denied", errno.EACCES),
    ("No space left on device", errno.ENOSPC),
    ("Read-only file system", errno.EROFS),
    ("Is another process using the image", errno.EBUSY),  # 'Failed to get [shared] "x" lock'
    ("is not a directory", errno.ENOTDIR),
    ("Image is not in qcow2 format", errno.EINVAL),
)


def binary() -> str:
    path = shutil.which(QSD)
    if path is None:
        raise OSError(errno.ENOENT,
                      f"{QSD} is not installed (Debian: apt-get install qemu-system-common)", QSD)
    return path


def start(image: str, export: str, pidfile: str, qmp: str, readonly: bool) -> tuple[int, int]:
    """Export qcow2 ``image`` as a raw FUSE file at ``export``: ``(pid, starttime)``.

    Raises OSError with qsd's own message (bad backing file, locked image...) on failure; the
    caller owns the cleanup (``stop``) of whatever exists by then.
    """
    import subprocess  # ~5 ms to import: only qcow2 disks pay it

    exe = binary()
    if len(qmp.encode()) > SUN_PATH_MAX:
        raise OSError(errno.ENAMETOOLONG, "QMP socket path longer than sun_path", qmp)
    fd = os.open(export, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    os.close(fd)
    ro = bool(readonly)
    argv = [
        exe,
        "--blockdev", json.dumps({"driver": "file", "node-name": FILE_NODE, "filename": image,
                                  "read-only": ro}),
        "--blockdev", json.dumps({"driver": "qcow2", "node-name": FORMAT_NODE, "file": FILE_NODE,
                                  "read-only": ro}),
        "--export", json.dumps({"type": "fuse", "id": "export0", "node-name": FORMAT_NODE,
                                "mountpoint": export, "writable": not ro}),
        # --chardev has no JSON form in 7.2: a comma in the path is written ",,"
        "--chardev", f"socket,id=qmp0,path={qmp.replace(',', ',,')},server=on,wait=off",
        "--monitor", "chardev=qmp0",
        "--pidfile", pidfile,
        "--daemonize",
    ]
    try:
        res = subprocess.run(argv, check=False, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, timeout=60, close_fds=True)
    except subprocess.TimeoutExpired as exc:
        raise OSError(errno.ETIMEDOUT, f"{QSD} did not start within 60 s", image) from exc
    if res.returncode != 0:
        msg = res.stderr.decode(errors="replace").strip().replace("\n", " | ") or \
            f"exit status {res.returncode}"
        err = next((e for hint, e in _ERRNO_HINTS if hint in msg), errno.EIO)
        raise OSError(err, f"{QSD}: {msg}", image)
    pid = read_pid(pidfile)
    start_time = live_starttime(pid) if pid else None
    if pid is None or start_time is None:
        raise OSError(errno.ESRCH, f"{QSD} exited right after starting", image)
    entry = mount_at(export)
    if entry is None or not entry.fstype.startswith("fuse"):
        raise OSError(errno.EIO, f"{QSD} started but its FUSE export is not mounted", export)
    return pid, start_time


def read_pid(pidfile: str) -> int | None:
    try:
        with open(pidfile) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return None


def alive(pid: int, start_time: int | None, pidfile: str) -> bool:
    """The daemon ``pid`` is still the one we started (same start time, our pidfile in argv)."""
    st = live_starttime(pid)
    if st is None or (start_time is not None and st != start_time):
        return False
    return pidfile.encode() in proc_cmdline(pid)


def unmount_export(export: str, lazy: bool = False) -> None:
    """Unmount the FUSE export if it is mounted (EBUSY while a loop still uses the file)."""
    entry = mount_at(export)
    if entry is None or not entry.fstype.startswith("fuse"):
        return
    try:
        native.umount(export, native.UMOUNT_NOFOLLOW | (native.MNT_DETACH if lazy else 0))
    except OSError as exc:
        if exc.errno != errno.EINVAL:  # EINVAL: not a mount point any more
            raise


def _wait_exit(pidfd: int, timeout: float) -> bool:
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(int(timeout * 1000)))


def stop(pid: int | None, start_time: int | None, export: str, pidfile: str, qmp: str,
         timeout: float = STOP_TIMEOUT) -> None:
    """Unmount the export, SIGTERM the daemon (SIGKILL after ``timeout`` s), wait, remove files.

    The daemon is reparented to pid 1 by --daemonize, so we wait on a pidfd (readable at exit)
    rather than waitpid. Raises OSError (EBUSY) if the export is still in use.
    """
    unmount_export(export)
    if pid is None:
        pid = read_pid(pidfile)
    if pid is not None and alive(pid, start_time, pidfile):
        try:
            pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            pidfd = -1
        if pidfd >= 0:
            try:
                if alive(pid, start_time, pidfile):  # the pidfd now pins this very process
                    signal.pidfd_send_signal(pidfd, signal.SIGTERM)
                    if not _wait_exit(pidfd, timeout):
                        signal.pidfd_send_signal(pidfd, signal.SIGKILL)
                        _wait_exit(pidfd, timeout)
            except ProcessLookupError:
                pass
            finally:
                os.close(pidfd)
    for path in (export, pidfile, qmp):
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            if exc.errno != errno.EBUSY:
                raise
            # still a mount point (a stale export mount): detach it, then the file can go
            native.umount(path, native.MNT_DETACH)
            os.unlink(path)


# --- QMP: growing the exported image while it is mounted ----------------------------------------

def qmp(path: str, command: str, arguments: dict[str, Any] | None = None,
        timeout: float = QMP_TIMEOUT) -> Any:
    """Run one QMP ``command`` on the daemon's monitor socket ``path``; its ``return`` value.

    Handshake: the greeting, ``qmp_capabilities``, then the command; events in between are
    skipped. The monitor serves one client at a time (callers hold the state dir lock). A QMP
    error raises OSError (EIO, or EINVAL for a GenericError about the arguments) with qsd's text.
    """
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(path)
            stream = sock.makefile("rwb")
            greeting = _qmp_read(stream, path)
            if "QMP" not in greeting:
                raise OSError(errno.EPROTO, f"QMP: unexpected greeting {greeting!r}", path)
            _qmp_call(stream, path, "qmp_capabilities", None)
            return _qmp_call(stream, path, command, arguments)
        except TimeoutError as exc:
            raise OSError(errno.ETIMEDOUT, f"QMP {command}: no answer within {timeout:g} s",
                          path) from exc


def _qmp_read(stream: Any, path: str) -> dict[str, Any]:
    line = stream.readline()
    if not line:
        raise OSError(errno.ECONNRESET, "QMP: the daemon closed the connection", path)
    try:
        msg = json.loads(line)
    except ValueError as exc:
        raise OSError(errno.EPROTO, f"QMP: not JSON: {line[:200]!r}", path) from exc
    if not isinstance(msg, dict):
        raise OSError(errno.EPROTO, f"QMP: not an object: {line[:200]!r}", path)
    return msg


def _qmp_call(stream: Any, path: str, command: str, arguments: dict[str, Any] | None) -> Any:
    req: dict[str, Any] = {"execute": command}
    if arguments:
        req["arguments"] = arguments
    stream.write(json.dumps(req).encode() + b"\n")
    stream.flush()
    while True:
        msg = _qmp_read(stream, path)
        if "return" in msg:
            return msg["return"]
        if "error" in msg:
            err = msg["error"] if isinstance(msg["error"], dict) else {}
            desc = str(err.get("desc") or msg["error"])
            raise OSError(errno.EIO, f"QMP {command}: {err.get('class', 'error')}: {desc}", path)
        # {"event": ...}: not ours, keep reading


def virtual_size(qmp_path: str, node: str = FORMAT_NODE) -> int:
    """The exported image's virtual size in bytes, as the daemon has it."""
    for entry in qmp(qmp_path, "query-named-block-nodes", {"flat": True}):
        if entry.get("node-name") == node:
            return int(entry["image"]["virtual-size"])
    raise OSError(errno.ENOENT, f"QMP: no block node {node!r} in the daemon", qmp_path)


def block_resize(qmp_path: str, size: int, node: str = FORMAT_NODE) -> None:
    """Grow the image under ``node`` to ``size`` bytes (QMP ``block_resize``): the daemon holds
    the image open and locked, so this is the way to grow it (``qemu-img resize`` is refused)."""
    qmp(qmp_path, "block_resize", {"node-name": node, "size": size})


_AT_FDCWD = -100
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_STATX_FORCE_SYNC = 0x2000
_STATX_SIZE = 0x200
_STATX_SIZE_OFFSET = 40  # struct statx: mask, blksize, attributes, nlink, uid, gid, mode, ino, size


def _statx_size_sync(path: str) -> int | None:
    """The file size with AT_STATX_FORCE_SYNC (FUSE then asks the daemon instead of its attribute
    cache); None when libc has no statx."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    fn = getattr(libc, "statx", None)
    if fn is None:
        return None
    buf = ctypes.create_string_buffer(256)
    if fn(_AT_FDCWD, os.fsencode(path), _AT_SYMLINK_NOFOLLOW | _AT_STATX_FORCE_SYNC,
          _STATX_SIZE, buf) != 0:
        err = ctypes.get_errno()
        if err == errno.ENOSYS:
            return None
        raise OSError(err, f"{os.strerror(err)} [statx]", path)
    return int.from_bytes(buf.raw[_STATX_SIZE_OFFSET:_STATX_SIZE_OFFSET + 8], "little")


def export_size(export: str, expect: int, wait: float = EXPORT_SIZE_WAIT) -> int:
    """The FUSE export's size as the kernel sees it, refreshed from the daemon.

    The kernel caches the export's attributes for 1 s (qsd's attribute timeout), and a loop
    device reads the size from that cache: statx(AT_STATX_FORCE_SYNC) refreshes it at once; if
    the size is still not ``expect``, plain stats until ``wait`` seconds have passed. Returns the
    last size seen (the caller checks it).
    """
    import time

    size = _statx_size_sync(export)
    deadline = time.monotonic() + wait
    while size != expect and time.monotonic() < deadline:
        time.sleep(0.05)
        size = os.stat(export).st_size
    return size if size is not None else os.stat(export).st_size
