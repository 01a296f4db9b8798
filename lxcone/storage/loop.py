"""Loop devices and their partitions through ioctls alone (no losetup, no partx).

Every loop is bound with LOOP_CONFIGURE and LO_FLAGS_AUTOCLEAR: the kernel unbinds it when its
last opener goes away (our fd until the mount holds it, then the mount). So a process killed before
mount(2) leaks nothing, a lazy unmount finishes by itself when the last busy file is closed, and
teardown never races another process for a device number.

Partitioned images also get LO_FLAGS_PARTSCAN. Our kernels have no partition parsers, so the scan
finds nothing and we add the partition with BLKPG; but the flag makes the kernel drop every
partition when the loop is cleared. Without it, BLKPG partitions outlive the binding (measured:
``losetup -d`` leaves ``loop0p1`` behind on a zero-sized ``loop0``) and the next user of that
number inherits stale partitions. On a kernel that does parse tables, the scan creates the
partition itself and BLKPG's EBUSY is accepted once sysfs shows the same start and size.

Growing a mounted disk (lxcone.storage.grow): LOOP_SET_CAPACITY makes a bound loop re-read its
backing file's size, BLKPG_RESIZE_PARTITION moves the end of a (mounted) partition; neither
rescans anything. Both through fcntl.ioctl.
"""

from __future__ import annotations

import array
import errno
import fcntl
import os
import struct
import time

from lxcone import native
from lxcone.storage.partitions import Partition

LOOP_CONTROL = "/dev/loop-control"
_ATTEMPTS = 64

# Growing a bound loop and its partition (linux/loop.h, linux/blkpg.h, linux/fs.h): plain ioctls
# through fcntl, so lxcone.native needs nothing new.
LOOP_SET_CAPACITY = 0x4C07
BLKPG = 0x1269  # _IO(0x12, 105)
BLKPG_RESIZE_PARTITION = 3
# struct blkpg_partition: long long start, length (bytes); int pno; char devname[64], volname[64];
# padded to 8 bytes (152): the kernel copies sizeof(struct blkpg_partition) from our pointer
_BLKPG_PARTITION = struct.Struct("=qqi64s64s4x")
# struct blkpg_ioctl_arg: int op, flags, datalen; void *data (native alignment: 24 bytes on LP64)
_BLKPG_ARG = struct.Struct("iiiP")


def attach(backing_fd: int, *, readonly: bool, partscan: bool) -> tuple[int, int]:
    """Bind ``backing_fd`` to a free loop device: ``(N, fd of /dev/loopN)``.

    Keep the fd open until something else (the mount) holds the device: closing the last opener
    unbinds it (autoclear). Direct I/O stays off (page-cache coherent with the image file).
    """
    flags = native.LO_FLAGS_AUTOCLEAR
    if readonly:
        flags |= native.LO_FLAGS_READ_ONLY
    if partscan:
        flags |= native.LO_FLAGS_PARTSCAN
    ctl = os.open(LOOP_CONTROL, os.O_RDWR | os.O_CLOEXEC)
    try:
        for _ in range(_ATTEMPTS):
            n = native.loop_ctl_get_free(ctl)
            dev = f"/dev/loop{n}"
            fd = os.open(dev, os.O_RDWR | os.O_CLOEXEC)
            try:
                native.loop_configure(fd, backing_fd, flags, path=dev)
            except OSError as exc:
                os.close(fd)
                if exc.errno == errno.EBUSY:  # another process bound it between the two calls
                    continue
                raise
            return n, fd
    finally:
        os.close(ctl)
    raise OSError(errno.EBUSY, f"no free loop device after {_ATTEMPTS} attempts", LOOP_CONTROL)


def _sysfs_partition(n: int, number: int) -> tuple[int, int] | None:
    base = f"/sys/block/loop{n}/loop{n}p{number}"
    try:
        with open(f"{base}/start") as f1, open(f"{base}/size") as f2:
            return int(f1.read()) * 512, int(f2.read()) * 512
    except (OSError, ValueError):
        return None


def add_partition(loop_fd: int, n: int, part: Partition) -> str:
    """Expose ``part`` of /dev/loopN as /dev/loopNp<number> (BLKPG_ADD_PARTITION); its path."""
    disk = f"/dev/loop{n}"
    dev = f"{disk}p{part.number}"
    try:
        native.blkpg_add_partition(loop_fd, part.number, part.start, part.size, path=disk)
    except OSError as exc:
        if exc.errno != errno.EBUSY or _sysfs_partition(n, part.number) != (part.start, part.size):
            raise
    if not os.path.exists(dev):
        # devtmpfs creates the node synchronously; without devtmpfs there is nothing to mount
        raise OSError(errno.ENOENT, "partition device node did not appear (no devtmpfs?)", dev)
    return dev


def bound_to(n: int, backing_dev: int, backing_ino: int) -> bool:
    """Whether /dev/loopN is still bound to the file (backing_dev, backing_ino).

    Asks sysfs first (no open: opening the device would itself hold it), the ioctl only when
    sysfs says it is bound to something.
    """
    if not os.path.exists(f"/sys/block/loop{n}/loop"):
        return False
    try:
        fd = os.open(f"/dev/loop{n}", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        dev, ino, _flags, _off, _size = native.loop_get_status(fd)
    except OSError:
        return False  # ENXIO: not bound
    finally:
        os.close(fd)
    return (dev, ino) == (backing_dev, backing_ino)


def release(n: int, backing_dev: int, backing_ino: int, wait: float = 0.0) -> bool:
    """Unbind /dev/loopN if it is still bound to our file; True if it is unbound now.

    False means another opener (a lazily detached mount with busy files, a process reading the
    device) still holds it after ``wait`` seconds: autoclear unbinds it when that opener closes.
    On a shared host short-lived openers are common (``losetup``, ``blkid`` and ``mount -o loop``
    of other tools open bound loop devices), hence the wait. A device since rebound to another
    file is never touched.
    """
    if not os.path.exists(f"/sys/block/loop{n}/loop"):
        return True
    try:
        fd = os.open(f"/dev/loop{n}", os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    try:
        try:
            dev, ino, *_ = native.loop_get_status(fd)
        except OSError as exc:
            if exc.errno == errno.ENXIO:
                return True
            raise
        if (dev, ino) != (backing_dev, backing_ino):
            return True  # autocleared and reused by someone else: not ours any more
        try:
            native.loop_clr_fd(fd, path=f"/dev/loop{n}")
        except OSError as exc:
            if exc.errno not in (errno.ENXIO, errno.EBUSY):  # already running down
                raise
    finally:
        os.close(fd)  # our close is the last one unless someone else holds it: clears now
    deadline = time.monotonic() + wait
    delay = 0.0005
    while bound_to(n, backing_dev, backing_ino):
        if time.monotonic() >= deadline:
            return False
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
    return True


def _ioctl_error(exc: OSError, call: str, path: str) -> OSError:
    err = exc.errno or errno.EIO
    return OSError(err, f"{os.strerror(err)} [ioctl({call})]", path)


def set_capacity(loop_fd: int, n: int) -> int:
    """LOOP_SET_CAPACITY: /dev/loopN re-reads its backing file's size (grown in place); the new
    size in bytes. Mounted filesystems and partitions are left alone (no rescan)."""
    dev = f"/dev/loop{n}"
    try:
        fcntl.ioctl(loop_fd, LOOP_SET_CAPACITY, 0)
    except OSError as exc:
        raise _ioctl_error(exc, "LOOP_SET_CAPACITY", dev) from None
    return native.blkgetsize64(loop_fd, path=dev)


def resize_partition(loop_fd: int, n: int, number: int, start: int, size: int) -> None:
    """BLKPG_RESIZE_PARTITION: /dev/loopNp<number> (which starts at ``start`` bytes) now spans
    ``size`` bytes; works while it is mounted. EINVAL if ``start`` is not the partition's start,
    EBUSY if the new range overlaps another partition, ENXIO if there is no such partition."""
    # ``part`` owns the memory ``arg`` points to; it lives until this function returns
    part = array.array("B", _BLKPG_PARTITION.pack(start, size, number, b"", b""))
    address, length = part.buffer_info()
    arg = _BLKPG_ARG.pack(BLKPG_RESIZE_PARTITION, 0, length, address)
    try:
        fcntl.ioctl(loop_fd, BLKPG, arg)
    except OSError as exc:
        raise _ioctl_error(exc, f"BLKPG_RESIZE_PARTITION {number}", f"/dev/loop{n}") from None


def partition_extent(n: int, number: int) -> tuple[int, int] | None:
    """(start, size) in bytes of /dev/loopNp<number> as the kernel has it (sysfs), None if none."""
    return _sysfs_partition(n, number)
