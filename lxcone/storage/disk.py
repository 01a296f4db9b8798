"""Mount a file-datastore disk on the host, and undo it, from this or any later process.

Paths per format (docs/storage.md has the long version):
  dir    bind mount of the directory (through an O_PATH fd), remounted read-only if asked
  raw    loop device (LOOP_CONFIGURE, autoclear, no direct I/O) [+ one BLKPG partition] + mount
  iso    as raw, always read-only, iso9660
  qcow2  qemu-storage-daemon FUSE export of the image as a raw file, then as raw

Partition rule when ``DiskSpec.partition`` is None: a filesystem superblock at the start of the
image wins (whole device; this also keeps FAT boot sectors and hybrid ISOs from being read as
MBRs); otherwise, if the image has an MBR or GPT, the lowest-numbered partition with a known
filesystem (swap skipped); otherwise an error, unless ``fs_type`` is given (then the whole device).

No subprocess on the raw/dir/iso path: mount(2), ioctls and /proc, /sys reads only.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lxcone import native
from lxcone.storage import detect, loop, records
from lxcone.storage.errors import DiskBusy, StorageError
from lxcone.storage.errors import step as _step
from lxcone.storage.partitions import Partition, PartitionTableError, file_reader, read_table
from lxcone.storage.sysinfo import MountEntry, dev_str, loops_backed_by, mount_at, mounts

LOOP_RELEASE_WAIT = 5.0  # seconds
if TYPE_CHECKING:
    from typing import Any

_FS_TYPE_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789._-")


@dataclass(frozen=True)
class DiskSpec:
    """One disk of a VM in a file datastore (``<DS_LOCATION>/<DS_ID>/<VMID>/disk.<N>``)."""

    disk_id: int
    source: str  # image file (raw/qcow2), directory, or ISO
    format: str = "auto"  # "raw" | "qcow2" | "dir" | "iso" | "auto" (see lxcone.storage.detect)
    readonly: bool = False
    fs_type: str | None = None  # None = from the superblock
    partition: int | None = None  # 1-based; None = the rule in this module's docstring

    def __post_init__(self) -> None:
        if isinstance(self.disk_id, bool) or not isinstance(self.disk_id, int) or \
                self.disk_id < 0:
            raise ValueError(f"disk_id must be a non-negative integer, not {self.disk_id!r}")
        if not isinstance(self.source, str) or not self.source or "\0" in self.source:
            raise ValueError(f"disk {self.disk_id}: source must be a non-empty path")
        if self.format not in detect.FORMATS:
            raise ValueError(f"disk {self.disk_id}: format must be one of "
                             f"{', '.join(detect.FORMATS)}, not {self.format!r}")
        if self.fs_type is not None and (not self.fs_type or
                                         not set(self.fs_type) <= _FS_TYPE_CHARS):
            raise ValueError(f"disk {self.disk_id}: invalid fs_type {self.fs_type!r}")
        if self.partition is not None and (isinstance(self.partition, bool) or
                                           not isinstance(self.partition, int) or
                                           not 1 <= self.partition <= 4096):
            raise ValueError(f"disk {self.disk_id}: partition must be 1..4096, "
                             f"not {self.partition!r}")


@dataclass(frozen=True)
class MountedDisk:
    """What mount_disk did for one disk, as recorded in ``<state_dir>/disk.<id>.json``."""

    disk_id: int
    source: str
    mountpoint: str
    format: str
    fs_type: str | None
    readonly: bool
    loop_device: str | None
    partition_device: str | None
    qsd_pid: int | None


class _Undo:
    """Steps to undo, run newest first; a failing step is noted and the others still run."""

    def __init__(self) -> None:
        self._steps: list[tuple[str, Callable[[], object]]] = []

    def push(self, what: str, fn: Callable[[], object]) -> None:
        self._steps.append((what, fn))

    def unwind(self, exc: BaseException) -> bool:
        clean = True
        while self._steps:
            what, fn = self._steps.pop()
            try:
                fn()
            except Exception as err:  # keep undoing the rest; report every failure
                clean = False
                exc.add_note(f"cleanup failed: {what}: {err}")
        return clean


def _to_mounted(rec: dict[str, Any]) -> MountedDisk:
    lp, part, q = rec.get("loop"), rec.get("partition"), rec.get("qsd")
    return MountedDisk(
        disk_id=rec["disk_id"], source=rec["source"], mountpoint=rec["mountpoint"],
        format=rec.get("format") or "auto", fs_type=rec.get("fs_type"),
        readonly=bool(rec.get("readonly")),
        loop_device=lp["device"] if lp else None,
        partition_device=part["device"] if part else None,
        qsd_pid=q.get("pid") if q else None)


def _choose(read: Callable[[int, int], bytes], size: int, disk: DiskSpec,
            path: str) -> tuple[Partition | None, str]:
    """Which partition (None = whole device) and which filesystem type to mount."""
    if disk.partition is None:
        whole = detect.detect_fs(read(0, detect.HEAD_SIZE))
        if whole == "swap" and disk.fs_type is None:
            raise StorageError(errno.EMEDIUMTYPE, "detect filesystem", path,
                               "this is a swap area, not a filesystem")
        if whole is not None:
            return None, disk.fs_type or whole
    try:
        table = read_table(read, size)
    except PartitionTableError as exc:
        raise StorageError(errno.EINVAL, "read partition table", path, str(exc)) from exc
    if disk.partition is not None:
        if table is None:
            raise StorageError(errno.ENXIO, "read partition table", path,
                               f"partition {disk.partition} asked for, but the image has no "
                               "partition table")
        part = table.get(disk.partition)
        if part is None:
            raise StorageError(errno.ENXIO, "read partition table", path,
                               f"no partition {disk.partition} in the {table.kind} table")
        fs = disk.fs_type or detect.detect_fs(read(part.start, detect.HEAD_SIZE))
        if fs is None or fs == "swap":
            raise StorageError(errno.EMEDIUMTYPE, "detect filesystem", path,
                               f"partition {part.number} has no known filesystem")
        return part, fs
    if table is not None:
        for part in table.partitions:
            fs = detect.detect_fs(read(part.start, detect.HEAD_SIZE))
            if fs is not None and fs != "swap":
                return part, disk.fs_type or fs
        if disk.fs_type is not None and table.partitions:
            return table.partitions[0], disk.fs_type
    if disk.fs_type is not None:
        return None, disk.fs_type
    raise StorageError(errno.EMEDIUMTYPE, "detect filesystem", path,
                       "no known filesystem superblock" +
                       (f" in any partition of the {table.kind} table" if table else
                        " and no partition table"))


@contextlib.contextmanager
def _target(mountpoint: str) -> Iterator[str]:
    """The mount point as ``/proc/self/fd/N`` of an O_PATH fd opened without following a final
    symlink: mount(2) then lands on exactly the directory we checked, whatever is renamed later."""
    fd = os.open(mountpoint, os.O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        yield f"/proc/self/fd/{fd}"
    finally:
        os.close(fd)


def _mount_fs(dev: str, mountpoint: str, fs: str, flags: int) -> None:
    types = detect.mount_types(fs)
    with _target(mountpoint) as target:
        for i, t in enumerate(types):
            try:
                native.mount(dev, target, t, flags)
                return
            except native.MountError as exc:
                if exc.errno != errno.ENODEV or i == len(types) - 1:
                    raise


def _rmtree_quiet(path: str) -> None:
    if os.path.isdir(path) and not os.path.islink(path):
        import shutil

        shutil.rmtree(path)


def _rmdir_quiet(path: str) -> None:
    with contextlib.suppress(FileNotFoundError, OSError):
        os.rmdir(path)


def _is_ours(e: MountEntry, m: dict[str, Any]) -> bool:
    """Whether mount ``e`` is the one recorded as ``m``: same device in mountinfo, or (btrfs shows
    an anonymous device there) the same source device path."""
    return e.dev == m.get("dev") or (bool(m.get("source")) and e.source == m.get("source"))


def _umount_ours(mountpoint: str, m: dict[str, Any], lazy: bool, disk_id: int) -> None:
    """Unmount the filesystem we mounted at ``mountpoint`` (identified by the record ``m``)."""
    entries = mounts()
    if not any(e.mountpoint == mountpoint and _is_ours(e, m) for e in entries):
        return
    top = mount_at(mountpoint, entries)
    if top is not None and not _is_ours(top, m):
        raise DiskBusy(errno.EBUSY, "umount2", mountpoint,
                       f"disk {disk_id}: another filesystem ({top.source}) is mounted over it")
    try:
        native.umount(mountpoint, native.UMOUNT_NOFOLLOW |
                      (native.MNT_DETACH if lazy else 0))
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise DiskBusy(errno.EBUSY, "umount2", mountpoint,
                           f"disk {disk_id}: the filesystem is in use "
                           "(retry later, or unmount lazily)") from exc
        if exc.errno != errno.EINVAL:  # EINVAL: no longer a mount point
            raise StorageError.from_oserror(exc, "umount2", mountpoint) from exc


def _still_mounted(rec: dict[str, Any], entries: list[MountEntry]) -> bool:
    m = rec.get("mount")
    if rec.get("state") != "mounted" or not m:
        return False
    top = mount_at(rec["mountpoint"], entries)
    if top is None or top.dev != m.get("dev") or top.mnt_id != m.get("mnt_id"):
        return False
    q = rec.get("qsd")
    if not q:
        return True
    from lxcone.storage import qsd  # its imports (signal, select...) only for qcow2

    return qsd.alive(q["pid"], q.get("starttime"), q["pidfile"])


def _teardown(rec: dict[str, Any], state_dir: str, lazy: bool) -> None:
    """Undo everything ``rec`` lists, in the safe order; remove the record at the end."""
    disk_id = rec["disk_id"]
    mountpoint = rec["mountpoint"]
    m = rec.get("mount")
    if m and (m.get("dev") or m.get("source")):
        _umount_ours(mountpoint, m, lazy, disk_id)
    lp = rec.get("loop")
    q = rec.get("qsd")
    if lp:
        with _step("detach loop", lp["device"]):
            # a qcow2 export can only go once the loop has let go of it: give other openers
            # (losetup/blkid of other tools) a moment; a raw loop may simply finish on its own
            released = loop.release(lp["number"], lp["backing_dev"], lp["backing_ino"],
                                    wait=LOOP_RELEASE_WAIT if q and not lazy else 0.0)
        if not released and q:
            # Busy files on a lazily detached fs still read through the loop and the export:
            # the daemon must outlive them. The record stays; a later unmount_disk finishes.
            if not lazy:
                raise DiskBusy(errno.EBUSY, "detach loop", lp["device"],
                               f"disk {disk_id}: the loop device is still open; the qcow2 "
                               "export cannot be stopped yet")
            rec["state"] = "detaching"
            with _step("write record", records.record_path(state_dir, disk_id)):
                records.write(state_dir, rec)
            return
        # raw: an unreleased loop is autoclear and goes away with its last opener
    if q:
        from lxcone.storage import qsd

        try:
            qsd.stop(q.get("pid"), q.get("starttime"), q["export"], q["pidfile"], q["qmp"])
        except OSError as exc:
            if exc.errno == errno.EBUSY:
                raise DiskBusy(errno.EBUSY, "umount2", q["export"],
                               f"disk {disk_id}: the qcow2 export is still in use") from exc
            raise StorageError.from_oserror(exc, "stop qemu-storage-daemon", q["export"]) from exc
    if rec.get("extract"):
        with _step("remove extracted image", rec["extract"]):
            _rmtree_quiet(rec["extract"])
    if rec.get("mountpoint_created"):
        _rmdir_quiet(mountpoint)
    with _step("remove record", records.record_path(state_dir, disk_id)):
        records.remove(state_dir, disk_id)


def _mount_image(disk: DiskSpec, rec: dict[str, Any], state_dir: str, undo: _Undo) -> None:
    source, mountpoint, ro = rec["source"], rec["mountpoint"], rec["readonly"]
    backing = source
    q = rec["qsd"]
    if q is not None:
        from lxcone.storage import qsd  # its imports (signal, select...) only for qcow2

        def stop_qsd() -> None:
            qsd.stop(q["pid"], q["starttime"], q["export"], q["pidfile"], q["qmp"])

        undo.push("stop qemu-storage-daemon", stop_qsd)
        with _step("qemu-storage-daemon", source):
            q["pid"], q["starttime"] = qsd.start(source, q["export"], q["pidfile"], q["qmp"], ro)
        backing = q["export"]
    loop_fd = -1
    try:
        with _step("open image", backing):
            img_fd = os.open(backing, (os.O_RDONLY if ro else os.O_RDWR) | os.O_CLOEXEC)
        try:
            with _step("stat image", backing):
                st = os.fstat(img_fd)
                size = st.st_size if stat.S_ISREG(st.st_mode) else native.blkgetsize64(img_fd)
                part, fs = _choose(file_reader(img_fd), size, disk, backing)
            rec["fs_type"] = fs
            if not _fs_available(fs):
                if fs == "iso9660" and part is None:
                    _mount_extracted(rec, img_fd, size, state_dir, undo)
                    return
                raise StorageError(errno.ENODEV, "check filesystem", backing,
                                   f"this kernel has no {fs} driver (not in /proc/filesystems)")
            if q is None:
                _refuse_double_attach(backing, ro)
            with _step("attach loop", backing):
                n, loop_fd = loop.attach(img_fd, readonly=ro, partscan=part is not None)
        finally:
            os.close(img_fd)
        dev = f"/dev/loop{n}"
        rec["loop"] = {"device": dev, "number": n, "backing": backing,
                       "backing_dev": st.st_dev, "backing_ino": st.st_ino}
        # runs after the finally below has closed loop_fd: the last close unbinds (autoclear)
        undo.push("detach loop", lambda: loop.release(n, st.st_dev, st.st_ino,
                                                      wait=LOOP_RELEASE_WAIT))
        if part is not None:
            with _step("add partition", dev):
                dev = loop.add_partition(loop_fd, n, part)
            rec["partition"] = {"number": part.number, "device": dev, "start": part.start,
                                "size": part.size}
        with _step("stat device", dev):
            mdev = dev_str(os.stat(dev).st_rdev)
        rec["mount"] = {"dev": mdev, "source": dev, "mnt_id": None}
        with _step("write record", records.record_path(state_dir, disk.disk_id)):
            records.write(state_dir, rec)
        with _step("mount", mountpoint):
            _mount_fs(dev, mountpoint, fs, native.MS_RDONLY if ro else 0)
        undo.push("umount", lambda: _umount_ours(mountpoint, rec["mount"], False, disk.disk_id))
    finally:
        if loop_fd >= 0:
            os.close(loop_fd)


def _bind(rec: dict[str, Any], source: str, undo: _Undo) -> None:
    """Bind ``source`` at the record's mount point (read-only if the record says so)."""
    mountpoint = rec["mountpoint"]
    with _step("open source", source):
        fd = os.open(source, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        # through fds: a symlink swapped in after the checks cannot redirect the bind
        with _step("mount (bind)", mountpoint), _target(mountpoint) as target:
            native.mount(f"/proc/self/fd/{fd}", target, None, native.MS_BIND)
    finally:
        os.close(fd)
    # mountinfo names the superblock's device, which is not always the directory's st_dev
    # (btrfs subvolumes): take it from the mount we just made, nothing else was mounted there.
    top = mount_at(mountpoint)
    if top is not None:
        rec["mount"]["dev"] = top.dev
    undo.push("umount", lambda: _umount_ours(mountpoint, rec["mount"], False, rec["disk_id"]))
    if rec["readonly"]:
        with _step("mount (remount bind read-only)", mountpoint), _target(mountpoint) as target:
            native.mount(None, target, None,
                         native.MS_BIND | native.MS_REMOUNT | native.MS_RDONLY)


def _mount_extracted(rec: dict[str, Any], img_fd: int, size: int, state_dir: str,
                     undo: _Undo) -> None:
    """iso9660 without a kernel driver: extract the (small, context) image into the state dir
    and bind it read-only. The guest sees the same files; the image is read-only anyway."""
    from lxcone.storage import iso9660

    dest = records.side_paths(state_dir, rec["disk_id"])["extract"]
    rec["extract"] = dest
    rec["mount"] = {"dev": dev_str(os.stat(state_dir).st_dev), "source": None, "mnt_id": None}
    with _step("write record", records.record_path(state_dir, rec["disk_id"])):
        records.write(state_dir, rec)
    undo.push("remove extracted image", lambda: _rmtree_quiet(dest))
    with _step("extract iso9660", rec["source"]):
        _rmtree_quiet(dest)  # a leftover of a killed process
        try:
            iso9660.extract(file_reader(img_fd), size, dest)
        except iso9660.IsoError as exc:
            raise StorageError(errno.EINVAL, "extract iso9660", rec["source"], str(exc)) from exc
    _bind(rec, dest, undo)


def _refuse_double_attach(path: str, readonly: bool) -> None:
    """Two loops on one image with a writer among them means two filesystem instances writing
    the same blocks: refuse (qemu-storage-daemon's image locks do the same for qcow2)."""
    for n, ro in loops_backed_by(os.path.realpath(path)):
        if not (ro and readonly):
            raise StorageError(errno.EBUSY, "check image", path,
                               f"already attached to /dev/loop{n} "
                               f"({'read-only' if ro else 'read-write'}); a second "
                               f"{'read-only' if readonly else 'read-write'} attachment "
                               "would corrupt it")


def _fs_available(fs: str) -> bool:
    """Whether mount(2) can serve ``fs``: listed in /proc/filesystems, or a modular kernel (which
    loads the driver on mount)."""
    try:
        with open("/proc/filesystems") as f:
            names = {line.split()[-1] for line in f if line.strip()}
    except OSError:
        return True
    return any(t in names for t in detect.mount_types(fs)) or os.path.exists("/proc/modules")


def _mount(disk: DiskSpec, source: str, mountpoint: str, state_dir: str) -> MountedDisk:
    undo = _Undo()
    rec: dict[str, Any] = {
        "version": records.VERSION, "disk_id": disk.disk_id, "source": source,
        "mountpoint": mountpoint, "state": "mounting", "format": None, "fs_type": None,
        "readonly": disk.readonly, "mountpoint_created": False, "loop": None,
        "partition": None, "qsd": None, "mount": None, "extract": None,
    }
    rpath = records.record_path(state_dir, disk.disk_id)
    try:
        with _step("stat source", source):
            st = os.stat(source)
        fmt = disk.format
        if fmt == "auto":
            with _step("detect format", source):
                fmt = detect.detect_format(source)
        if fmt == "dir" and not stat.S_ISDIR(st.st_mode):
            raise StorageError(errno.ENOTDIR, "check source", source,
                               "format dir needs a directory")
        if fmt != "dir" and not (stat.S_ISREG(st.st_mode) or stat.S_ISBLK(st.st_mode)):
            raise StorageError(errno.EINVAL, "check source", source,
                               f"format {fmt} needs an image file")
        rec["format"] = fmt
        rec["readonly"] = disk.readonly or fmt == "iso"
        if mount_at(mountpoint) is not None:
            raise StorageError(errno.EBUSY, "check mountpoint", mountpoint,
                               "something is already mounted there")
        if os.path.lexists(mountpoint) and not os.path.isdir(mountpoint):
            raise StorageError(errno.ENOTDIR, "check mountpoint", mountpoint)
        rec["mountpoint_created"] = not os.path.lexists(mountpoint)
        if fmt == "qcow2":
            rec["qsd"] = {**records.side_paths(state_dir, disk.disk_id), "pid": None,
                          "starttime": None}
        if fmt == "dir":
            rec["fs_type"] = None
            rec["mount"] = {"dev": dev_str(st.st_dev), "source": None, "mnt_id": None}
        with _step("write record", rpath):
            records.write(state_dir, rec)
        undo.push("remove record", lambda: records.remove(state_dir, disk.disk_id))
        if rec["mountpoint_created"]:
            with _step("mkdir", mountpoint):
                os.makedirs(mountpoint)
            undo.push("rmdir mountpoint", lambda: _rmdir_quiet(mountpoint))
        if fmt == "dir":
            _bind(rec, source, undo)
        else:
            _mount_image(disk, rec, state_dir, undo)
        entry = mount_at(mountpoint)
        if entry is None or not _is_ours(entry, rec["mount"]):
            raise StorageError(errno.EIO, "check mount", mountpoint,
                               "the new mount is not visible in /proc/self/mountinfo")
        rec["mount"]["dev"], rec["mount"]["mnt_id"] = entry.dev, entry.mnt_id
        if fmt == "dir":
            rec["fs_type"] = entry.fstype
        rec["state"] = "mounted"
        with _step("write record", rpath):
            records.write(state_dir, rec)
        return _to_mounted(rec)
    except BaseException as exc:
        if not undo.unwind(exc):
            exc.add_note(f"what is left is described in {rpath}: unmount_disk retries it")
        raise


def mount_disk(disk: DiskSpec, mountpoint: str, state_dir: str) -> MountedDisk:
    """Make ``disk``'s filesystem available at ``mountpoint`` (created if missing).

    Records every step in ``<state_dir>/disk.<disk_id>.json`` so ``unmount_disk`` works from
    another process. Idempotent: a disk already mounted as recorded is returned as is (a record
    of a half-done or broken mount is torn down first). On any failure everything done so far is
    undone and StorageError (errno, step, path) is raised; EBUSY if this disk id is mounted
    from another source or at another mount point.
    """
    if not isinstance(disk, DiskSpec):
        raise TypeError("mount_disk needs a DiskSpec")
    mountpoint = os.path.realpath(mountpoint)
    source = os.path.abspath(disk.source)
    state_dir = os.path.abspath(state_dir)
    with _step("create state dir", state_dir):
        os.makedirs(state_dir, exist_ok=True)
    with records.locked(state_dir):
        rec = records.read(state_dir, disk.disk_id)
        if rec is not None:
            if _still_mounted(rec, mounts()):
                same_ro = rec.get("format") == "iso" or bool(rec.get("readonly")) == disk.readonly
                if rec["source"] == source and rec["mountpoint"] == mountpoint and same_ro:
                    return _to_mounted(rec)
                raise StorageError(errno.EBUSY, "mount_disk", mountpoint,
                                   f"disk {disk.disk_id} is already mounted from {rec['source']}"
                                   f" at {rec['mountpoint']}"
                                   f"{' read-only' if rec.get('readonly') else ''}")
            _teardown(rec, state_dir, lazy=False)
        return _mount(disk, source, mountpoint, state_dir)


def unmount_disk(disk_id: int, state_dir: str, lazy: bool = False) -> None:
    """Undo mount_disk for ``disk_id`` from its record; no record (or nothing left) = done.

    Order: unmount the filesystem, release the loop (and with it the partition), unmount the
    qcow2 FUSE export, stop qemu-storage-daemon and wait for it, remove the mount point if
    mount_disk created it, remove the record. A busy filesystem raises DiskBusy and stays mounted,
    unless ``lazy`` (MNT_DETACH: it disappears now, the loop goes with the last open file; for
    qcow2 the daemon must outlive those files, so the record stays until a later call).
    """
    state_dir = os.path.abspath(state_dir)
    if not os.path.isdir(state_dir):
        return
    with records.locked(state_dir):
        rec = records.read(state_dir, disk_id)
        if rec is None:
            records.remove(state_dir, disk_id)  # an unparsable leftover, if any
            return
        _teardown(rec, state_dir, lazy)


def mounted_disks(state_dir: str) -> list[MountedDisk]:
    """Every disk with a record in ``state_dir`` (mounted, or left half-done by a killed process:
    unmount_disk cleans those up), by disk id."""
    out = []
    for disk_id in records.all_ids(state_dir):
        rec = records.read(state_dir, disk_id)
        if rec is not None:
            out.append(_to_mounted(rec))
    return out
