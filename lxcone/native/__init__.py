"""Thin, typed wrappers over the cffi module ``lxcone.native._native``.

Every failing call raises ``OSError(errno, strerror, path)`` (so ``FileNotFoundError``,
``PermissionError``... come for free) with the call name in the message; mounts raise
``MountError`` with the flags spelled out. Nothing here changes the caller's namespaces except
``setns``, which callers use only for CLONE_NEWNET (per-thread, allowed in threaded processes);
``attach``, ``hot_mount`` and ``hot_umount`` join a container's namespaces in a cloned C child.
"""

from __future__ import annotations

import contextlib
import errno
import os
from collections.abc import Sequence
from pathlib import Path

from lxcone import __version__

try:
    from lxcone.native._native import ffi, lib
except ImportError as exc:  # pragma: no cover - only on a broken install
    raise ImportError(
        "lxcone.native._native is not built: install the package (pip install -e .) "
        "so the cffi extension and lxcone-monitor are compiled"
    ) from exc

_built = ffi.string(lib.LXCONE_NATIVE_VERSION).decode()
if _built != __version__:
    raise ImportError(
        f"lxcone.native._native was built for lxcone {_built}, this is {__version__}: reinstall"
    )

CLONE_NEWNS: int = lib.CLONE_NEWNS
CLONE_NEWUTS: int = lib.CLONE_NEWUTS
CLONE_NEWIPC: int = lib.CLONE_NEWIPC
CLONE_NEWUSER: int = lib.CLONE_NEWUSER
CLONE_NEWPID: int = lib.CLONE_NEWPID
CLONE_NEWNET: int = lib.CLONE_NEWNET
CLONE_NEWCGROUP: int = lib.CLONE_NEWCGROUP
MNT_DETACH: int = lib.MNT_DETACH
MS_RDONLY: int = lib.MS_RDONLY
MS_NOSUID: int = lib.MS_NOSUID
MS_NODEV: int = lib.MS_NODEV
MS_NOEXEC: int = lib.MS_NOEXEC
MS_REMOUNT: int = lib.MS_REMOUNT
MS_BIND: int = lib.MS_BIND
MS_MOVE: int = lib.MS_MOVE
MS_REC: int = lib.MS_REC
MS_PRIVATE: int = lib.MS_PRIVATE
MS_SLAVE: int = lib.MS_SLAVE
MS_SHARED: int = lib.MS_SHARED

MONITOR = str(Path(__file__).resolve().parent / "lxcone-monitor")
#: The action shim's client of the resident agent (csrc/client.c), run by path: $LXCONE_CLIENT
#: or the etc/vmm/lxcone/client file that `python -m lxcone.install remotes` writes.
CLIENT = str(Path(__file__).resolve().parent / "lxcone-client")

_MOUNT_FLAGS = {
    "MS_RDONLY": MS_RDONLY, "MS_NOSUID": MS_NOSUID, "MS_NODEV": MS_NODEV, "MS_NOEXEC": MS_NOEXEC,
    "MS_REMOUNT": MS_REMOUNT, "MS_BIND": MS_BIND, "MS_MOVE": MS_MOVE, "MS_REC": MS_REC,
    "MS_PRIVATE": MS_PRIVATE, "MS_SLAVE": MS_SLAVE, "MS_SHARED": MS_SHARED,
}


def _raise(call: str, path: str | None = None, path2: str | None = None) -> None:
    err = ffi.errno
    raise OSError(err, f"{os.strerror(err)} [{call}]", path, None, path2)


def mount_flags_str(flags: int) -> str:
    """Render mount flags as ``MS_BIND|MS_REC|0x...`` for error messages."""
    names = [n for n, v in _MOUNT_FLAGS.items() if flags & v]
    rest = flags & ~sum(v for n, v in _MOUNT_FLAGS.items() if flags & v)
    if rest:
        names.append(hex(rest))
    return "|".join(names) or "0"


class MountError(OSError):
    """A failed mount(2), with everything needed to see why."""

    def __init__(self, err: int, source: str | None, target: str, fstype: str | None,
                 flags: int, data: str | None) -> None:
        super().__init__(err, os.strerror(err), target)
        self.source, self.target, self.fstype, self.flags, self.data = (
            source, target, fstype, flags, data)

    def __str__(self) -> str:
        return (f"[Errno {self.errno}] {self.strerror}: mount src={self.source} dst={self.target}"
                f" type={self.fstype} flags={mount_flags_str(self.flags)} data={self.data}")


def setns(fd: int, nstype: int) -> None:
    """Join the namespace open on ``fd``; ``nstype`` must name its type (never 0)."""
    if lib.setns(fd, nstype) < 0:
        _raise(f"setns({nstype:#x})", f"fd {fd}")


def unshare(flags: int) -> None:
    """unshare(2) in the calling process (only safe in a single-threaded child)."""
    if lib.unshare(flags) < 0:
        _raise(f"unshare({flags:#x})")


def mount(source: str | None, target: str, fstype: str | None = None, flags: int = 0,
          data: str | None = None) -> None:
    """mount(2); raises MountError."""
    c = ffi.NULL
    src = source.encode() if source is not None else c
    typ = fstype.encode() if fstype is not None else c
    dat = data.encode() if data is not None else c
    if lib.mount(src, target.encode(), typ, flags, dat) < 0:
        raise MountError(ffi.errno, source, target, fstype, flags, data)


def umount(target: str, flags: int = 0) -> None:
    """umount2(2)."""
    if lib.umount2(target.encode(), flags) < 0:
        _raise("umount2", target)


def sethostname(name: str) -> None:
    """sethostname(2) in the caller's UTS namespace (only in a child that unshared it)."""
    raw = name.encode()
    if lib.sethostname(raw, len(raw)) < 0:
        _raise("sethostname", name)


def pivot_root(new_root: str, put_old: str) -> None:
    """pivot_root(2); ``pivot_root(".", ".")`` after chdir stacks the old root on the new."""
    if lib.lxcone_pivot_root(new_root.encode(), put_old.encode()) < 0:
        _raise("pivot_root", new_root, put_old)


def open_tree(path: str, *, clone: bool = True, recursive: bool = True, dirfd: int = -100) -> int:
    """A detached copy of the mount tree at ``path`` (OPEN_TREE_CLONE), as a CLOEXEC fd to be
    attached elsewhere with move_mount (e.g. into a running container's mount namespace)."""
    flags = lib.OPEN_TREE_CLOEXEC
    if clone:
        flags |= lib.OPEN_TREE_CLONE
    if recursive:
        flags |= lib.AT_RECURSIVE
    fd = lib.lxcone_open_tree(dirfd, path.encode(), flags)
    if fd < 0:
        _raise("open_tree", path)
    return fd


def move_mount(tree_fd: int, target: str) -> None:
    """Attach the detached tree ``tree_fd`` (from open_tree) at ``target``."""
    if lib.lxcone_move_mount(tree_fd, b"", -100, target.encode(),
                             lib.MOVE_MOUNT_F_EMPTY_PATH) < 0:
        _raise("move_mount", target)


def idmap_tree(tree_fd: int, userns_fd: int) -> None:
    """Make a detached tree idmapped to a user namespace (mount_setattr MOUNT_ATTR_IDMAP)."""
    if lib.lxcone_mount_setattr_idmap(tree_fd, b"", lib.AT_EMPTY_PATH | lib.AT_RECURSIVE,
                                      userns_fd) < 0:
        _raise("mount_setattr(MOUNT_ATTR_IDMAP)", f"fd {tree_fd}")


MOUNT_ATTR_RDONLY: int = lib.MOUNT_ATTR_RDONLY
MOUNT_ATTR_NOSUID: int = lib.MOUNT_ATTR_NOSUID
MOUNT_ATTR_NODEV: int = lib.MOUNT_ATTR_NODEV
MOUNT_ATTR_NOEXEC: int = lib.MOUNT_ATTR_NOEXEC
MOUNT_ATTR_IDMAP: int = lib.MOUNT_ATTR_IDMAP


def mount_setattr(tree_fd: int, attr_set: int, attr_clr: int = 0, *, userns_fd: int = -1,
                  recursive: bool = True) -> None:
    """mount_setattr(2) on the mount (tree, with ``recursive``) open on ``tree_fd``:
    ``MOUNT_ATTR_*`` flags; ``MOUNT_ATTR_IDMAP`` needs ``userns_fd`` and a detached tree."""
    flags = lib.AT_EMPTY_PATH | (lib.AT_RECURSIVE if recursive else 0)
    if lib.lxcone_mount_setattr(tree_fd, b"", flags, attr_set, attr_clr, userns_fd) < 0:
        _raise(f"mount_setattr({attr_set:#x}, clear {attr_clr:#x})", f"fd {tree_fd}")


class HotMountError(OSError):
    """A hot mount step failed inside the container: ``errno``, the ``call`` and the ``filename``
    (a path inside the container) it failed on."""

    def __init__(self, err: int, call: str, path: str) -> None:
        super().__init__(err, f"{os.strerror(err)} [{call}]", path)
        self.call = call


def _hot_error(ret: int, err: object, target: str) -> HotMountError:
    call, _, path = ffi.string(err).decode(errors="replace").partition("\t")
    return HotMountError(-ret, call or "hot mount", path if path and path != "-" else target)


def hot_mount(pidfd: int, tree_fd: int, target: str, *, join_userns: bool) -> str | None:
    """Attach the detached tree ``tree_fd`` at ``target`` (absolute, inside the container
    whose init ``pidfd`` refers to), creating the missing directories (mkdir -p, resolved inside
    the container root) as the container's root: ``join_userns`` for an unprivileged container.

    Returns the shallowest directory it created (e.g. ``/media`` for ``/media/3``), or None when
    it created none or the same tree was mounted there already. Raises HotMountError: EEXIST when
    another mount occupies ``target``. The work runs in a cloned single-threaded child (setns is
    refused to a threaded process); the caller's namespaces never change.
    """
    created = ffi.new("char[]", 4096)
    err = ffi.new("char[]", 4352)
    ret = lib.lxcone_hotmount_attach(pidfd, int(join_userns), tree_fd, target.encode(),
                                     created, 4096, err, 4352)
    if ret < 0:
        raise _hot_error(ret, err, target)
    return ffi.string(created).decode() or None


def hot_umount(pidfd: int, target: str, *, join_userns: bool,
               rmdir_upto: str | None = None) -> bool:
    """Unmount ``target`` inside the container (no MNT_DETACH: a busy mount raises
    HotMountError with EBUSY). With ``rmdir_upto`` (``target`` or one of its parents, e.g. what
    ``hot_mount`` returned) remove the then empty directories from ``target`` up to it.

    Returns True if something was unmounted, False if nothing was mounted at ``target``.
    """
    err = ffi.new("char[]", 4352)
    upto = rmdir_upto.encode() if rmdir_upto else ffi.NULL
    ret = lib.lxcone_hotmount_detach(pidfd, int(join_userns), target.encode(), upto, err, 4352)
    if ret < 0:
        raise _hot_error(ret, err, target)
    return ret == 0


def pidfd_open(pid: int) -> int:
    """A pidfd for ``pid`` (close it with os.close); ProcessLookupError if it is gone."""
    fd = lib.lxcone_pidfd_open(pid, 0)
    if fd < 0:
        _raise("pidfd_open", f"pid {pid}")
    return fd


def pidfd_send_signal(pidfd: int, sig: int) -> None:
    """Signal the process behind ``pidfd``: never a recycled pid."""
    if lib.lxcone_pidfd_send_signal(pidfd, sig, 0) < 0:
        _raise(f"pidfd_send_signal({sig})", f"pidfd {pidfd}")


def current_cpu() -> int:
    """The CPU the calling thread is running on (sched_getcpu(3): the vDSO, no syscall)."""
    cpu = lib.sched_getcpu()
    if cpu < 0:
        _raise("sched_getcpu")
    return cpu


def attach(pid: int, argv: Sequence[str], env: Sequence[str], *, cgroup_dir: str | None = None,
           join: Sequence[str] = (), cwd: str = "/", uid: int = 0, gid: int = 0, stdin: int = -1,
           stdout: int = -1, stderr: int = -1) -> int:
    """Start ``argv`` inside every namespace and cgroup of the container whose init is ``pid``:
    born in the v2 ``cgroup_dir`` (clone3(CLONE_INTO_CGROUP)), joining the v1 ``tasks`` files
    ``join`` (CgroupManager.join_files). stdin/stdout/stderr: fds for the command, -1 keeps ours.

    The work runs in ``lxcone-monitor --attach`` (csrc/attach.c says why not in a fork of this
    process). Returns the command's pid, a child of the caller: reap it with ``os.waitpid``.
    Raises OSError with the failing step (``setns mnt``, ``execve``...) and errno.
    """
    if not argv:
        raise ValueError("attach needs a command")
    r, w = os.pipe2(os.O_CLOEXEC)
    actions = [(os.POSIX_SPAWN_DUP2, fd, target)
               for target, fd in enumerate((stdin, stdout, stderr)) if fd >= 0]
    actions.append((os.POSIX_SPAWN_DUP2, w, 3))
    try:
        helper = os.posix_spawn(
            MONITOR, ["lxcone-monitor", "--attach", str(pid), cgroup_dir or "", cwd, str(uid),
                      str(gid), str(len(join)), *join, str(len(env)), *env, *argv],
            {}, file_actions=actions)
    except BaseException:
        os.close(r)
        raise
    finally:
        os.close(w)
    try:
        with open(r, "rb", closefd=False) as f:
            report = f.read().decode(errors="replace")
    finally:
        os.close(r)
        _reap(helper)
    fields = report.split(" ", 3)
    if len(fields) != 4:
        raise OSError(errno.ECHILD, f"{os.strerror(errno.ECHILD)} [attach: helper exited "
                                    f"without a report]", argv[0])
    ret, mid, cmd, step = int(fields[0]), int(fields[1]), int(fields[2]), fields[3].strip()
    if mid > 0:
        _reap(mid)
    if ret < 0:
        if cmd > 0:
            _reap(cmd)
        raise OSError(-ret, f"{os.strerror(-ret)} [attach: {step}]", argv[0])
    return cmd


def _reap(pid: int) -> None:
    with contextlib.suppress(ChildProcessError):  # EINTR is retried by Python (PEP 475)
        os.waitpid(pid, 0)


# --- storage: loop devices, BLKPG partitions, reflinks (csrc/storage.h) -------------------------

LO_FLAGS_READ_ONLY: int = lib.LO_FLAGS_READ_ONLY
LO_FLAGS_AUTOCLEAR: int = lib.LO_FLAGS_AUTOCLEAR
LO_FLAGS_PARTSCAN: int = lib.LO_FLAGS_PARTSCAN
LO_FLAGS_DIRECT_IO: int = lib.LO_FLAGS_DIRECT_IO
UMOUNT_NOFOLLOW: int = lib.UMOUNT_NOFOLLOW


def loop_ctl_get_free(ctl_fd: int) -> int:
    """LOOP_CTL_GET_FREE on an open /dev/loop-control: the number N of a free /dev/loopN.

    The kernel creates the device if needed; another process may still bind it before us, so
    callers retry ``loop_configure`` on EBUSY.
    """
    n = lib.lxcone_loop_ctl_get_free(ctl_fd)
    if n < 0:
        _raise("ioctl(LOOP_CTL_GET_FREE)", "/dev/loop-control")
    return n


def loop_configure(loop_fd: int, backing_fd: int, flags: int = 0, offset: int = 0,
                   sizelimit: int = 0, block_size: int = 0, path: str | None = None) -> None:
    """Bind ``backing_fd`` to the loop device open on ``loop_fd`` (LOOP_CONFIGURE, atomic).

    ``flags`` are ``LO_FLAGS_*``; offset/sizelimit in bytes (0 = whole file). EBUSY when the device
    is already bound. ``path`` only names the device in errors.
    """
    if lib.lxcone_loop_configure(loop_fd, backing_fd, flags, offset, sizelimit, block_size) < 0:
        _raise("ioctl(LOOP_CONFIGURE)", path or f"fd {loop_fd}")


def loop_clr_fd(loop_fd: int, path: str | None = None) -> None:
    """LOOP_CLR_FD: detach now, or (still open elsewhere) set autoclear and detach on last close."""
    if lib.lxcone_loop_clr_fd(loop_fd) < 0:
        _raise("ioctl(LOOP_CLR_FD)", path or f"fd {loop_fd}")


def loop_get_status(loop_fd: int, path: str | None = None) -> tuple[int, int, int, int, int]:
    """LOOP_GET_STATUS64: ``(backing st_dev, backing st_ino, lo_flags, offset, sizelimit)``.

    Raises ENXIO when the device is not bound to anything.
    """
    out = ffi.new("uint64_t[4]")
    flags = ffi.new("uint32_t *")
    if lib.lxcone_loop_get_status(loop_fd, out, out + 1, flags, out + 2, out + 3) < 0:
        _raise("ioctl(LOOP_GET_STATUS64)", path or f"fd {loop_fd}")
    return int(out[0]), int(out[1]), int(flags[0]), int(out[2]), int(out[3])


def blkpg_add_partition(disk_fd: int, pno: int, start: int, length: int,
                        path: str | None = None) -> None:
    """BLKPG_ADD_PARTITION (what ``partx -a`` does): partition ``pno`` at ``start`` for
    ``length`` bytes; EBUSY if that number exists or the range overlaps another partition."""
    if lib.lxcone_blkpg_partition(disk_fd, lib.BLKPG_ADD_PARTITION, pno, start, length) < 0:
        _raise(f"ioctl(BLKPG_ADD_PARTITION {pno})", path or f"fd {disk_fd}")


def blkpg_del_partition(disk_fd: int, pno: int, path: str | None = None) -> None:
    """BLKPG_DEL_PARTITION; ENXIO if there is no such partition, EBUSY if it is open."""
    if lib.lxcone_blkpg_partition(disk_fd, lib.BLKPG_DEL_PARTITION, pno, 0, 0) < 0:
        _raise(f"ioctl(BLKPG_DEL_PARTITION {pno})", path or f"fd {disk_fd}")


def blkgetsize64(fd: int, path: str | None = None) -> int:
    """Size of the block device open on ``fd``, in bytes."""
    size = ffi.new("uint64_t *")
    if lib.lxcone_blkgetsize64(fd, size) < 0:
        _raise("ioctl(BLKGETSIZE64)", path or f"fd {fd}")
    return int(size[0])


def ficlone(dst_fd: int, src_fd: int, path: str | None = None) -> None:
    """FICLONE: make ``dst_fd`` share all of ``src_fd``'s extents (a reflink copy).

    EOPNOTSUPP/EINVAL when the filesystem cannot, EXDEV across filesystems.
    """
    if lib.lxcone_ficlone(dst_fd, src_fd) < 0:
        _raise("ioctl(FICLONE)", path or f"fd {dst_fd}")


def syncfs(fd: int, path: str | None = None) -> None:
    """syncfs(2): write back the whole filesystem that ``fd`` lives on."""
    if lib.syncfs(fd) < 0:
        _raise("syncfs", path or f"fd {fd}")
