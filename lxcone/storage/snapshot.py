"""Snapshots of a VM's disks on a file datastore: whole-disk copies, CoW where the filesystem can.

``<snap_dir>/<snap_id>/``: ``disk.<id>`` per disk (an image file, or a directory tree for dir
disks) and ``manifest.json`` (disk id, format, copy method, size). A snapshot is built in
``<snap_dir>/.<snap_id>.tmp-<pid>`` and renamed into place, so it exists complete or not at all.

Copy of one file, first that works:
  reflink     FICLONE: the copy shares every extent (xfs with reflink=1, btrfs): O(ms), no space
  sparse copy SEEK_DATA/SEEK_HOLE walk, copy_file_range per data extent (the kernel copies, and
              may still share blocks where it can), holes kept, then ftruncate to the exact size
qcow2 images are copied the same way (not ``qemu-img snapshot``): that needs the image offline,
while a copy works on a mounted-and-frozen disk too, and revert is the same rename for every format.
Directories are copied file by file like ``cp -a --reflink=auto`` (owners, modes, times, xattrs,
hard links, symlinks and device nodes, never following a symlink).

Consistency is the caller's job (freeze the container); we flush: ``syncfs`` on every mount point
given, which also pushes a qcow2 disk's writes through the loop and the FUSE export to
qemu-storage-daemon (loop turns the flush into an fsync of its backing file).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import stat
import time
from collections.abc import Mapping, Sequence
from typing import Any

from lxcone import native
from lxcone.storage import detect
from lxcone.storage.disk import DiskSpec
from lxcone.storage.errors import StorageError
from lxcone.storage.errors import step as _step
from lxcone.storage.sysinfo import dev_str, holders_of, mounts

MANIFEST = "manifest.json"
_SNAP_ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-")
_NO_REFLINK = (errno.EOPNOTSUPP, errno.ENOTTY, errno.EXDEV, errno.EINVAL, errno.ENOSYS,
               errno.EPERM)
_NO_COPY_RANGE = (errno.EXDEV, errno.ENOSYS, errno.EOPNOTSUPP, errno.EINVAL)
_CHUNK = 1 << 26


class InvalidSnapshotId(ValueError):
    """A snapshot id that could escape the snapshot dir or is not a plain name."""


def validate_snap_id(snap_id: object) -> str:
    """``snap_id`` if it is 1-128 of [A-Za-z0-9._-], not starting with '.', without '..'."""
    if not isinstance(snap_id, str) or not 1 <= len(snap_id) <= 128:
        raise InvalidSnapshotId(f"snapshot id must be a string of 1-128 characters: {snap_id!r}")
    if not set(snap_id) <= _SNAP_ID_CHARS:
        raise InvalidSnapshotId(f"snapshot id may only contain letters, digits, '.', '_' and '-'"
                                f" (no '/'): {snap_id!r}")
    if snap_id.startswith(".") or ".." in snap_id:
        raise InvalidSnapshotId(f"snapshot id must not start with '.' or contain '..': "
                                f"{snap_id!r}")
    return snap_id


# --- copies -----------------------------------------------------------------------------------

def _sparse_copy(sfd: int, dfd: int, size: int) -> None:
    try:
        off = os.lseek(sfd, 0, os.SEEK_DATA)
    except OSError as exc:
        if exc.errno == errno.ENXIO:  # no data at all: all hole
            os.ftruncate(dfd, size)
            return
        off = -1  # SEEK_DATA unsupported: copy everything
    if off < 0:
        _copy_range(sfd, dfd, 0, size)
    else:
        while off < size:
            end = os.lseek(sfd, off, os.SEEK_HOLE)
            _copy_range(sfd, dfd, off, end - off)
            try:
                off = os.lseek(sfd, end, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno != errno.ENXIO:
                    raise
                break
    os.ftruncate(dfd, size)


def _copy_range(sfd: int, dfd: int, off: int, length: int) -> None:
    use_cfr = True
    while length > 0:
        n = 0
        if use_cfr:
            try:
                n = os.copy_file_range(sfd, dfd, min(length, _CHUNK), off, off)
            except OSError as exc:
                if exc.errno not in _NO_COPY_RANGE:
                    raise
                use_cfr = False
                continue
        else:
            buf = os.pread(sfd, min(length, 1 << 20), off)
            n = len(buf)
            view = memoryview(buf)
            pos = off
            while view:
                w = os.pwrite(dfd, view, pos)
                view, pos = view[w:], pos + w
        if n == 0:
            return  # the source shrank under us
        off += n
        length -= n


def copy_file(src: str, dst: str) -> str:
    """Copy regular file ``src`` to new file ``dst`` (mode, owner, times kept): the method used,
    ``"reflink"`` or ``"sparse-copy"``."""
    sfd = os.open(src, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    try:
        st = os.fstat(sfd)
        dfd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                      0o600)
        try:
            try:
                native.ficlone(dfd, sfd, path=dst)
                method = "reflink"
            except OSError as exc:
                if exc.errno not in _NO_REFLINK:
                    raise
                _sparse_copy(sfd, dfd, st.st_size)
                method = "sparse-copy"
            os.fchown(dfd, st.st_uid, st.st_gid)
            os.fchmod(dfd, stat.S_IMODE(st.st_mode))
            os.utime(dfd, ns=(st.st_atime_ns, st.st_mtime_ns))
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        os.close(sfd)
    return method


def _copy_meta(src: str, dst: str, st: os.stat_result) -> None:
    os.chown(dst, st.st_uid, st.st_gid, follow_symlinks=False)
    if not stat.S_ISLNK(st.st_mode):
        os.chmod(dst, stat.S_IMODE(st.st_mode))  # after chown, which clears set-id bits
    try:
        names = os.listxattr(src, follow_symlinks=False)
    except OSError as exc:
        if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
            raise
        names = []
    for name in names:
        try:
            os.setxattr(dst, name, os.getxattr(src, name, follow_symlinks=False),
                        follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in (errno.ENOTSUP, errno.EOPNOTSUPP):
                raise
    os.utime(dst, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)


def copy_tree(src: str, dst: str) -> str:
    """``cp -a --reflink=auto src dst`` in Python (dst must not exist): ``"tree-copy"``."""
    links: dict[tuple[int, int], str] = {}

    def walk(s: str, d: str, st: os.stat_result) -> None:
        os.mkdir(d, 0o700)
        with os.scandir(s) as it:
            entries = list(it)
        for e in entries:
            sp, dp = e.path, os.path.join(d, e.name)
            est = e.stat(follow_symlinks=False)
            mode = est.st_mode
            if stat.S_ISDIR(mode):
                walk(sp, dp, est)
                continue
            if est.st_nlink > 1 and not stat.S_ISDIR(mode):
                first = links.get((est.st_dev, est.st_ino))
                if first is not None:
                    os.link(first, dp, follow_symlinks=False)
                    continue
                links[(est.st_dev, est.st_ino)] = dp
            if stat.S_ISLNK(mode):
                os.symlink(os.readlink(sp), dp)
            elif stat.S_ISREG(mode):
                copy_file(sp, dp)
                _copy_meta(sp, dp, est)  # xattrs; copy_file did the rest
                continue
            else:  # device nodes, fifos, sockets
                os.mknod(dp, mode, est.st_rdev)
            _copy_meta(sp, dp, est)
        _copy_meta(s, d, st)  # last: the times of a directory change while it is filled

    walk(src, dst, os.stat(src, follow_symlinks=False))
    return "tree-copy"


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path)
    else:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)


# --- in-use checks ----------------------------------------------------------------------------

def _in_use(source: str, fmt: str) -> str | None:
    """Why ``source`` cannot be reverted now (a loop, a bind mount, a process), or None."""
    real = os.path.realpath(source)
    if fmt == "dir":
        st = os.stat(real)
        dev = dev_str(st.st_dev)
        for e in mounts():
            if e.dev != dev:
                continue
            with contextlib.suppress(OSError):
                mst = os.stat(e.mountpoint)
                if (mst.st_dev, mst.st_ino) == (st.st_dev, st.st_ino):
                    return f"bind-mounted at {e.mountpoint}"
        return None
    with contextlib.suppress(FileNotFoundError):
        for name in os.listdir("/sys/block"):
            if not name.startswith("loop"):
                continue
            try:
                with open(f"/sys/block/{name}/loop/backing_file") as f:
                    backing = f.read().rstrip("\n")
            except OSError:
                continue
            if backing == real:
                return f"attached to /dev/{name}"
    pids = holders_of(real)
    if pids:
        return f"open in process {', '.join(map(str, pids))}"
    return None


# --- the API ----------------------------------------------------------------------------------

def _format_of(disk: DiskSpec) -> str:
    return disk.format if disk.format != "auto" else detect.detect_format(disk.source)


def _check_disks(disks: Sequence[DiskSpec]) -> None:
    ids = [d.disk_id for d in disks]
    if len(set(ids)) != len(ids):
        raise ValueError(f"disk ids must be unique: {ids}")


def snapshot_create(disks: Sequence[DiskSpec], snap_id: str, snap_dir: str,
                    mountpoints: Mapping[int, str] | None = None) -> None:
    """Snapshot ``disks`` as ``<snap_dir>/<snap_id>``: flush (syncfs on each mount point given,
    disk id -> mount point), then copy each disk (reflink, else sparse copy).

    The disks must be unmounted or frozen by the caller. Raises InvalidSnapshotId (ValueError),
    StorageError EEXIST if the snapshot exists, StorageError for any failed step (nothing left).
    """
    validate_snap_id(snap_id)
    _check_disks(disks)
    dest = os.path.join(snap_dir, snap_id)
    with _step("create snapshot dir", snap_dir):
        os.makedirs(snap_dir, exist_ok=True)
    if os.path.lexists(dest):
        raise StorageError(errno.EEXIST, "snapshot_create", dest, "snapshot exists")
    for disk_id, mp in (mountpoints or {}).items():
        with _step(f"syncfs (disk {disk_id})", mp):
            fd = os.open(mp, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                native.syncfs(fd, path=mp)
            finally:
                os.close(fd)
    tmp = os.path.join(snap_dir, f".{snap_id}.tmp-{os.getpid()}")
    try:
        with _step("mkdir", tmp):
            os.mkdir(tmp, 0o700)
        entries: list[dict[str, Any]] = []
        for disk in disks:
            with _step("detect format", disk.source):
                fmt = _format_of(disk)
            name = f"disk.{disk.disk_id}"
            with _step(f"copy disk {disk.disk_id}", disk.source):
                if fmt == "dir":
                    method = copy_tree(disk.source, os.path.join(tmp, name))
                    size = None
                else:
                    method = copy_file(disk.source, os.path.join(tmp, name))
                    size = os.stat(os.path.join(tmp, name)).st_size
            entries.append({"disk_id": disk.disk_id, "format": fmt, "file": name,
                            "method": method, "size": size, "source": disk.source})
        manifest = {"version": 1, "snap_id": snap_id, "created": time.time(), "disks": entries}
        mpath = os.path.join(tmp, MANIFEST)
        with _step("write manifest", mpath):
            with open(mpath, "w") as f:
                json.dump(manifest, f, indent=1, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            _fsync_dir(tmp)
            os.rename(tmp, dest)
            _fsync_dir(snap_dir)
    except BaseException:
        with contextlib.suppress(OSError):
            _remove(tmp)
        raise


def read_manifest(snap_id: str, snap_dir: str) -> dict[str, Any]:
    """The manifest of snapshot ``snap_id``; StorageError ENOENT if there is no such snapshot."""
    validate_snap_id(snap_id)
    path = os.path.join(snap_dir, snap_id, MANIFEST)
    try:
        with open(path) as f:
            manifest = json.load(f)
    except FileNotFoundError as exc:
        raise StorageError(errno.ENOENT, "snapshot_revert", os.path.join(snap_dir, snap_id),
                           "no such snapshot") from exc
    except (OSError, ValueError) as exc:
        raise StorageError(getattr(exc, "errno", None) or errno.EINVAL, "read manifest", path,
                           str(exc)) from exc
    return manifest


def snapshot_revert(disks: Sequence[DiskSpec], snap_id: str, snap_dir: str) -> None:
    """Put each disk back as it was in snapshot ``snap_id`` (the snapshot itself is kept).

    Every disk must be unmounted: StorageError EBUSY (before anything changes) if one is attached
    to a loop, bind-mounted or open in a process (e.g. qemu-storage-daemon). Each disk is copied
    next to its source and renamed over it, so a failure leaves the old disk in place.
    """
    validate_snap_id(snap_id)
    _check_disks(disks)
    manifest = read_manifest(snap_id, snap_dir)
    by_id = {e["disk_id"]: e for e in manifest.get("disks", [])}
    plan = []
    for disk in disks:
        entry = by_id.get(disk.disk_id)
        if entry is None:
            raise StorageError(errno.ENOENT, "snapshot_revert", os.path.join(snap_dir, snap_id),
                               f"disk {disk.disk_id} is not in this snapshot")
        fmt = entry["format"]
        src = os.path.join(snap_dir, snap_id, entry["file"])
        if os.path.lexists(disk.source):
            with _step("check disk", disk.source):
                why = _in_use(disk.source, "dir" if os.path.isdir(disk.source) else fmt)
            if why:
                raise StorageError(errno.EBUSY, "snapshot_revert", disk.source,
                                   f"disk {disk.disk_id} is in use ({why}): unmount it first")
            if (fmt == "dir") != os.path.isdir(disk.source):
                raise StorageError(errno.EINVAL, "snapshot_revert", disk.source,
                                   f"disk {disk.disk_id} was a {fmt} disk in the snapshot")
        plan.append((disk, fmt, src))
    for disk, fmt, src in plan:
        target = os.path.abspath(disk.source)
        parent, base = os.path.split(target)
        tmp = os.path.join(parent, f".{base}.revert-{os.getpid()}")
        try:
            with _step(f"copy disk {disk.disk_id} from snapshot", src):
                if fmt == "dir":
                    copy_tree(src, tmp)
                else:
                    copy_file(src, tmp)
            with _step(f"replace disk {disk.disk_id}", target):
                if fmt == "dir" and os.path.lexists(target):
                    old = os.path.join(parent, f".{base}.old-{os.getpid()}")
                    os.rename(target, old)
                    os.rename(tmp, target)
                    shutil.rmtree(old)
                else:
                    os.rename(tmp, target)
                _fsync_dir(parent)
        except BaseException:
            with contextlib.suppress(OSError):
                _remove(tmp)
            raise


def snapshot_delete(snap_id: str, snap_dir: str) -> None:
    """Remove snapshot ``snap_id`` (and any half-built copy of it); no such snapshot = done."""
    validate_snap_id(snap_id)
    try:
        names = os.listdir(snap_dir)
    except FileNotFoundError:
        return
    for name in names:
        tmp_prefix = f".{snap_id}.tmp-"
        if name == snap_id or (name.startswith(tmp_prefix) and
                               name[len(tmp_prefix):].isdigit()):
            path = os.path.join(snap_dir, name)
            with _step("snapshot_delete", path):
                _remove(path)
