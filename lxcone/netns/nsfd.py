"""Network namespace file descriptors, and joining one for the duration of a socket() call.

Stdlib + lxcone.native only (no pyroute2). Nothing here forks: a netlink socket belongs to the
network namespace its creating thread was in at socket() time, and setns(CLONE_NEWNET) only moves
the calling thread (it is allowed in a multithreaded process, unlike joining a mount or user
namespace). So we join the target, create the socket, and return, in a try/finally.
"""

from __future__ import annotations

import errno
import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager

from lxcone import native
from lxcone.netns.errors import NetnsError

# linux/nsfs.h: NS_GET_NSTYPE = _IO(0xb7, 0x3), since Linux 4.11. It returns the CLONE_NEW*
# type of a namespace fd, so a wrong path fails here rather than as EINVAL from setns() later.
NS_GET_NSTYPE = 0xB703
NETNS_RUN_DIR = "/run/netns"

_OPEN_FLAGS = os.O_RDONLY | os.O_CLOEXEC


def netns_path(target: int | str | os.PathLike[str]) -> str:
    """The path to open for ``target``: a pid, a path, or a bare name under /run/netns.

    Raises ``ValueError`` for a bool, a non-positive pid, an empty string, ``.`` or ``..``.
    """
    if isinstance(target, bool):
        raise ValueError("netns target must be a pid or a path, not a bool")
    if isinstance(target, int):
        if target <= 0:
            raise ValueError(f"netns target pid {target} is not a process id")
        return f"/proc/{target}/ns/net"
    if not isinstance(target, (str, os.PathLike)):
        raise ValueError(f"netns target must be a pid or a path, not {type(target).__name__}")
    path = os.fspath(target)
    if not path or path in (".", ".."):
        raise ValueError(f"netns target {path!r} is not a namespace path")
    # A bare name means what `ip netns` and pyroute2 mean by it: a bind mount in /run/netns.
    return path if "/" in path else f"{NETNS_RUN_DIR}/{path}"


def open_netns(target: int | str | os.PathLike[str]) -> int:
    """Open a network namespace and return an ``O_RDONLY|O_CLOEXEC`` fd the caller must close.

    ``target`` is a pid (``/proc/<pid>/ns/net``), a path (e.g. ``/run/netns/x``) or a bare name
    (``x`` = ``/run/netns/x``). Never creates a namespace. Raises ``ValueError`` for a malformed
    target and ``NetnsError`` (ENOENT, EACCES, ... or EINVAL if the file is not a network
    namespace).
    """
    path = netns_path(target)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as exc:
        raise NetnsError(exc.errno or errno.EIO, f"open netns {path}") from None
    try:
        nstype = fcntl.ioctl(fd, NS_GET_NSTYPE)
    except OSError as exc:
        os.close(fd)
        # ENOTTY: an ordinary file or another filesystem's inode, not an nsfs one.
        raise NetnsError(errno.EINVAL, f"open netns {path}",
                         detail=f"not a namespace file: {os.strerror(exc.errno or 0)}") from None
    if nstype != native.CLONE_NEWNET:
        os.close(fd)
        raise NetnsError(errno.EINVAL, f"open netns {path}",
                         detail=f"namespace type {nstype:#x} is not a network namespace")
    return fd


def _setns(fd: int, what: str) -> None:
    try:
        native.setns(fd, native.CLONE_NEWNET)
    except OSError as exc:
        raise NetnsError(exc.errno or errno.EIO, f"setns(CLONE_NEWNET) into {what}") from None


@contextmanager
def in_netns(fd: int) -> Iterator[None]:
    """Run the body with the *calling thread* in the network namespace open on ``fd``.

    Meant to wrap socket creation only: sockets created inside stay bound to that namespace
    after the thread returns. Other threads are unaffected. Raises ``NetnsError`` if joining
    fails; if returning fails (never seen: it needs CAP_SYS_ADMIN, which joining needed too) the
    thread is left in the target namespace and a ``NetnsError`` saying so is raised.
    """
    # thread-self, not self: setns moved this thread only, and the main thread may be elsewhere.
    try:
        saved = os.open("/proc/thread-self/ns/net", _OPEN_FLAGS)
    except OSError as exc:
        raise NetnsError(exc.errno or errno.EIO, "open netns /proc/thread-self/ns/net") from None
    try:
        _setns(fd, f"fd {fd}")
        try:
            yield
        finally:
            try:
                _setns(saved, "the thread's own netns")
            except NetnsError as exc:
                exc.detail = "this thread is now stranded in another network namespace"
                raise
    finally:
        os.close(saved)
