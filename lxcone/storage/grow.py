"""Grow a mounted disk online: OpenNebula's ``resize_disk`` (docs/storage.md, "Growing a disk
online").

oned's TM ``resize`` has grown the image in the datastore first (a truncate for raw; for qcow2
``qemu-img resize``, which fails while our qemu-storage-daemon holds the image locked), then the
VMM ``resize_disk`` asks for the new size while the VM runs. ``grow_disk`` makes every layer
between the image and the container catch up, each step only when it is behind, so a second call
with the same size does nothing:

  image       raw: ftruncate (sparse) when smaller; qcow2: QMP ``block_resize`` on the daemon
  export      qcow2: the FUSE export file must show the new size (refreshed and checked)
  loop        LOOP_SET_CAPACITY when the loop device is smaller than its backing file
  partition   only the last one of a 512-byte-sector MBR/GPT table: ``sfdisk -N <n>`` with
              ``, +`` on the backing file (also moves the GPT backup to the new end), the table
              re-read and checked, then BLKPG_RESIZE_PARTITION
  filesystem  ext3/ext4 ``resize2fs <device>``, xfs ``xfs_growfs -d <mountpoint>``, btrfs
              ``btrfs filesystem resize <devid>:max <mountpoint>``, all online

Never shrinks. Everything that can refuse is checked before the first change, and every change
only grows, so a failure halfway leaves the disk mounted, consistent and growable by a retry.
"""

from __future__ import annotations

import errno
import fcntl
import os
import shutil
import stat
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING

from lxcone import native
from lxcone.storage import loop, records
from lxcone.storage.errors import StorageError, ToolError
from lxcone.storage.errors import step as _step
from lxcone.storage.partitions import (
    MBR_EXTENDED,
    Partition,
    PartitionTableError,
    Table,
    file_reader,
    read_table,
)

if TYPE_CHECKING:
    from typing import Any

SECTOR = 512
TOOL_TIMEOUT = 600.0  # seconds; online growth of a big ext4 can take a while

# fs -> (tool, Debian package); fs types that exist but cannot grow online -> why
GROW_TOOLS = {"ext3": ("resize2fs", "e2fsprogs"), "ext4": ("resize2fs", "e2fsprogs"),
              "xfs": ("xfs_growfs", "xfsprogs"), "btrfs": ("btrfs", "btrfs-progs")}
NO_ONLINE_GROW = {
    "ext2": "ext2 cannot grow while mounted (online resizing needs ext3/ext4); grow it with the "
            "VM stopped, or convert it to ext4",
    "squashfs": "squashfs is a read-only image format and cannot grow",
    "erofs": "erofs is a read-only image format and cannot grow",
    "iso9660": "an ISO 9660 filesystem cannot grow",
    "vfat": "vfat cannot grow online",
}
MEASURABLE = ("ext2", "ext3", "ext4", "xfs", "btrfs")  # grow_disk can read their size
# a partition is grown when it can gain at least this much (OpenNebula sizes are whole MiB; a
# table made with 1 MiB alignment may leave up to ~1 MiB unused at the end, which stays so)
PARTITION_MIN_GAIN = 1 << 20
PARTITION_ONLY_LAST = "partitioned images: only the filesystem of the last partition can grow"

# XFS_IOC_FSGEOMETRY_V1 = _IOR('X', 100, struct xfs_fsop_geom_v1) (112 bytes): blocksize at 0,
# datablocks (u64) at 32. Every XFS kernel answers the v1 call.
XFS_IOC_FSGEOMETRY_V1 = 0x80705864
XFS_GEOM_V1_SIZE = 112
# BTRFS_IOC_FS_INFO = _IOR(0x94, 31, 1024 bytes): max_id, num_devices (u64), fsid[16],
# nodesize, sectorsize (u32). BTRFS_IOC_DEV_INFO = _IOWR(0x94, 30, 4096 bytes): devid (in),
# uuid[16] (zero: match by devid), bytes_used, total_bytes (u64, out).
BTRFS_IOC_FS_INFO = 0x8400941F
BTRFS_FS_INFO_SIZE = 1024
BTRFS_IOC_DEV_INFO = 0xD000941E
BTRFS_DEV_INFO_SIZE = 4096

_EXT_INCOMPAT_64BIT = 0x80
# ext4's online resize (EXT4_IOC_RESIZE_FS, and the older GROUP_ADD/EXTEND) checks
# capable(CAP_SYS_RESOURCE); xfs and btrfs growth need CAP_SYS_ADMIN, as mounting does.
CAP_SYS_RESOURCE = 24
BTRFS_MIN_RESIZE = 256 << 20  # btrfs refuses to resize a device to less (EINVAL)


@dataclass(frozen=True)
class GrowResult:
    """What ``grow_disk`` found and did. Sizes in bytes; ``None`` where the disk has none
    (directories). ``actions`` lists each change made, in order, as one human-readable line
    each; empty when everything already had the size (a repeated call)."""

    disk_id: int
    format: str
    fs_type: str | None
    old_image_size: int | None
    new_image_size: int | None
    old_fs_size: int | None
    new_fs_size: int | None
    actions: tuple[str, ...] = ()
    note: str | None = None

    @property
    def changed(self) -> bool:
        return bool(self.actions)


# --- pure parts (tests/unit/storage/test_grow.py) -------------------------------------------

def fmt_size(n: int) -> str:
    """``64 MiB`` when whole MiB, else ``305118720 bytes (291.0 MiB)``: for messages/actions."""
    if n % (1 << 20) == 0:
        return f"{n >> 20} MiB"
    return f"{n} bytes ({n / (1 << 20):.1f} MiB)"


def check_size_arg(size_bytes: object) -> int:
    """The requested size: a positive multiple of 512 bytes (ValueError/TypeError otherwise)."""
    if isinstance(size_bytes, bool) or not isinstance(size_bytes, int):
        raise TypeError(f"size_bytes must be an int, not {type(size_bytes).__name__}")
    if size_bytes <= 0 or size_bytes % SECTOR:
        raise ValueError(f"size_bytes must be a positive multiple of {SECTOR}, not {size_bytes}")
    return size_bytes


def refuse_shrink(disk_id: int, path: str, size_bytes: int, what: str, current: int) -> None:
    """StorageError EINVAL when ``size_bytes`` is below ``current`` (the ``what`` of the disk)."""
    if size_bytes < current:
        raise StorageError(errno.EINVAL, "grow disk", path,
                           f"disk {disk_id}: {fmt_size(size_bytes)} asked for, but its {what} is "
                           f"already {fmt_size(current)}: shrinking is not supported")


def grow_tool(fs_type: str | None) -> tuple[str, str]:
    """(tool, Debian package) that grows ``fs_type`` online; ValueError with the reason if none."""
    if fs_type in GROW_TOOLS:
        return GROW_TOOLS[fs_type]
    if fs_type in NO_ONLINE_GROW:
        raise ValueError(NO_ONLINE_GROW[fs_type])
    raise ValueError(f"no online grow for filesystem type {fs_type or 'unknown'}")


def grow_argv(fs_type: str, device: str, mountpoint: str, btrfs_devid: int = 1) -> list[str]:
    """The command line that grows the mounted ``fs_type`` to fill its device."""
    if fs_type in ("ext3", "ext4"):
        return ["resize2fs", device]  # on a mounted fs: the kernel's online resize
    if fs_type == "xfs":
        return ["xfs_growfs", "-d", mountpoint]
    if fs_type == "btrfs":
        return ["btrfs", "filesystem", "resize", f"{btrfs_devid}:max", mountpoint]
    raise ValueError(f"no online grow for filesystem type {fs_type}")


def ext_size(sb: bytes) -> tuple[int, int]:
    """(filesystem size, block size) in bytes from an ext2/3/4 superblock (the 1024 bytes at
    offset 1024 of the device). ValueError if it is not one."""
    if len(sb) < 0x158 or sb[0x38:0x3A] != b"\x53\xef":
        raise ValueError("no ext2/3/4 superblock")
    lo, = struct.unpack_from("<I", sb, 0x04)
    log_block, = struct.unpack_from("<I", sb, 0x18)
    incompat, = struct.unpack_from("<I", sb, 0x60)
    hi = struct.unpack_from("<I", sb, 0x150)[0] if incompat & _EXT_INCOMPAT_64BIT else 0
    if log_block > 6:
        raise ValueError(f"bad ext block size exponent {log_block}")
    block = 1024 << log_block
    return ((hi << 32) | lo) * block, block


def xfs_size(geom: bytes) -> tuple[int, int]:
    """(data section size, block size) from XFS_IOC_FSGEOMETRY_V1's answer."""
    blocksize, = struct.unpack_from("=I", geom, 0)
    datablocks, = struct.unpack_from("=Q", geom, 32)
    return datablocks * blocksize, blocksize


def btrfs_fs_info(info: bytes) -> tuple[int, int, int]:
    """(max device id, number of devices, sector size) from BTRFS_IOC_FS_INFO's answer."""
    max_id, num_devices = struct.unpack_from("=QQ", info, 0)
    sectorsize, = struct.unpack_from("=I", info, 36)
    return max_id, num_devices, sectorsize


def btrfs_dev_total(dev_info: bytes) -> int:
    """total_bytes of one device from BTRFS_IOC_DEV_INFO's answer."""
    return struct.unpack_from("=Q", dev_info, 32)[0]


def gpt_entry_bytes(lba1: bytes) -> int:
    """Bytes of the partition-entry array a GPT header (read at LBA 1) describes; the 128 x 128
    bytes every tool writes when the header is unreadable (sfdisk rewrites it anyway)."""
    if len(lba1) >= 92 and lba1[:8] == b"EFI PART":
        count, esize = struct.unpack_from("<II", lba1, 80)
        if 0 < count <= 4096 and 128 <= esize <= 4096:
            return count * esize
    return 128 * 128


def partition_max_end(table: Table, disk_size: int, entry_bytes: int = 128 * 128) -> int:
    """Where (exclusive, bytes) the last partition can end on a disk of ``disk_size`` bytes:
    GPT keeps the backup entries and header in the last sectors; an MBR entry counts 2^32 - 1
    sectors at most (so with the start, < 2 TiB past the start), and the disk's last sector is
    usable."""
    ss = table.sector_size
    sectors = disk_size // ss
    if table.kind == "gpt":
        return (sectors - 1 - -(-entry_bytes // ss)) * ss
    return sectors * ss


def mbr_max_end(start: int, disk_size: int) -> int:
    """An MBR partition starting at ``start`` ends at most here (32-bit sector count)."""
    return min(disk_size // SECTOR * SECTOR, start + 0xFFFFFFFF * SECTOR)


def last_partition_blocker(table: Table, number: int, mbr: bytes = b"") -> str | None:
    """Why partition ``number`` of ``table`` cannot grow in place (None if it can): it must be a
    primary partition (MBR logical ones live in an extended one) that no other partition
    follows, including an MBR extended partition without logical ones (``mbr``: sector 0)."""
    part = table.get(number)
    if part is None:
        return f"there is no partition {number} in the {table.kind} table"
    if table.kind == "dos" and number > 4:
        return f"partition {number} is a logical partition inside an extended one"
    end = part.start + part.size
    after = [p for p in table.partitions if p.number != number and p.start + p.size > end]
    if after:
        return f"partition {after[0].number} lies after partition {number}"
    if table.kind == "dos" and len(mbr) >= 512:
        for i in range(4):
            ptype, lba, count = struct.unpack_from("<4xB3xII", mbr, 446 + 16 * i)
            if ptype in MBR_EXTENDED and count and (lba + count) * SECTOR > end:
                return f"the extended partition {i + 1} lies after partition {number}"
    if table.sector_size != SECTOR:
        return (f"the table uses {table.sector_size}-byte sectors, which sfdisk cannot edit on an "
                "image file")
    return None


def has_capability(cap: int, status: str | None = None) -> bool:
    """Whether ``cap`` is in this process's effective set (``CapEff`` of /proc/self/status)."""
    if status is None:
        try:
            with open("/proc/self/status") as f:
                status = f.read()
        except OSError:
            return True  # cannot tell: let the kernel decide
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            return bool(int(line.split()[1], 16) >> cap & 1)
    return True


# --- kernel and tools ----------------------------------------------------------------------

def _run(argv: list[str], step: str, path: str, stdin: str | None = None) -> str:
    """Run a tool (LC_ALL=C, no stdin unless given); its stdout. ToolError with its stderr."""
    import subprocess

    env = {**os.environ, "LC_ALL": "C"}
    try:
        res = subprocess.run(argv, input=stdin, stdin=None if stdin is not None else
                             subprocess.DEVNULL, capture_output=True, text=True, env=env,
                             timeout=TOOL_TIMEOUT, check=False, close_fds=True)
    except subprocess.TimeoutExpired as exc:
        out = exc.stderr or b""
        raise ToolError(errno.ETIMEDOUT, step, path, argv, None,
                        out.decode(errors="replace") if isinstance(out, bytes) else out) from exc
    except OSError as exc:
        raise StorageError.from_oserror(exc, step, argv[0]) from exc
    if res.returncode != 0:
        output = res.stderr.strip() or res.stdout.strip()
        err = errno.ENOSPC if "No space left" in output else errno.EIO
        raise ToolError(err, step, path, argv, res.returncode, output)
    return res.stdout


def _ext_fs_size(device: str) -> tuple[int, int]:
    # The mounted ext4 keeps its superblock in the device's page cache: a pread through the same
    # device sees the live values (what dumpe2fs -h does on a mounted fs).
    fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return ext_size(os.pread(fd, 1024, 1024))
    finally:
        os.close(fd)


def _device_size(device: str) -> int:
    with _step("stat device", device):
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return native.blkgetsize64(fd, path=device)
        finally:
            os.close(fd)


def _open_root(mountpoint: str) -> int:
    return os.open(mountpoint, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)


def _xfs_fs_size(mountpoint: str) -> tuple[int, int]:
    fd = _open_root(mountpoint)
    try:
        buf = bytearray(XFS_GEOM_V1_SIZE)
        fcntl.ioctl(fd, XFS_IOC_FSGEOMETRY_V1, buf)
        return xfs_size(bytes(buf))
    finally:
        os.close(fd)


def _btrfs_device(mountpoint: str) -> tuple[int, int, int]:
    """(devid, total_bytes, sectorsize) of a single-device btrfs mounted at ``mountpoint``."""
    fd = _open_root(mountpoint)
    try:
        info = bytearray(BTRFS_FS_INFO_SIZE)
        fcntl.ioctl(fd, BTRFS_IOC_FS_INFO, info)
        max_id, num_devices, sectorsize = btrfs_fs_info(bytes(info))
        if num_devices != 1:
            raise OSError(errno.EOPNOTSUPP, f"btrfs with {num_devices} devices: only a "
                          "single-device btrfs is grown", mountpoint)
        for devid in range(1, max_id + 1):
            dev = bytearray(BTRFS_DEV_INFO_SIZE)
            struct.pack_into("=Q", dev, 0, devid)
            try:
                fcntl.ioctl(fd, BTRFS_IOC_DEV_INFO, dev)
            except OSError as exc:
                if exc.errno == errno.ENODEV:
                    continue
                raise
            return devid, btrfs_dev_total(bytes(dev)), sectorsize
        raise OSError(errno.ENODEV, "btrfs reports no device", mountpoint)
    finally:
        os.close(fd)


class _Fs:
    """The mounted filesystem: its size and how to grow it."""

    def __init__(self, fs_type: str | None, device: str, mountpoint: str) -> None:
        self.fs_type, self.device, self.mountpoint = fs_type, device, mountpoint
        self.btrfs_devid = 1

    def size(self) -> tuple[int, int]:
        """(size, block size) in bytes."""
        with _step(f"measure {self.fs_type}", self.mountpoint):
            if self.fs_type == "xfs":
                return _xfs_fs_size(self.mountpoint)
            if self.fs_type == "btrfs":
                self.btrfs_devid, total, sectorsize = _btrfs_device(self.mountpoint)
                return total, sectorsize
            try:
                return _ext_fs_size(self.device)
            except ValueError as exc:
                raise OSError(errno.EMEDIUMTYPE, str(exc), self.device) from exc

    def grow(self) -> None:
        argv = grow_argv(self.fs_type, self.device, self.mountpoint, self.btrfs_devid)
        _run(argv, argv[0], self.device if argv[0] == "resize2fs" else self.mountpoint)


def _detect_fs(device: str) -> str | None:
    """The filesystem type from the device's superblock (records written by mount_disk always
    name it; this is for older or hand-made ones)."""
    from lxcone.storage import detect

    with _step("detect filesystem", device):
        fd = os.open(device, os.O_RDONLY | os.O_CLOEXEC)
        try:
            return detect.detect_fs(os.pread(fd, detect.HEAD_SIZE, 0))
        finally:
            os.close(fd)


def _still_mounted(rec: dict[str, Any]) -> bool:
    from lxcone.storage import disk  # one definition of "still mounted as recorded"
    from lxcone.storage.sysinfo import mounts

    return disk._still_mounted(rec, mounts())


def _read_table(path: str) -> tuple[Table | None, bytes, bytes]:
    """The partition table of the backing file (never through the loop: its page cache would
    not see sfdisk's writes to the file), and its first two sectors (MBR, GPT header)."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        size = os.fstat(fd).st_size
        try:
            table = read_table(file_reader(fd), size)
        except PartitionTableError as exc:
            raise OSError(errno.EINVAL, f"bad partition table: {exc}", path) from exc
        head = os.pread(fd, 2 * SECTOR, 0)
        return table, head[:SECTOR], head[SECTOR:]
    finally:
        os.close(fd)


class _Grower:
    def __init__(self, rec: dict[str, Any], state_dir: str, size: int) -> None:
        self.rec, self.state_dir, self.size = rec, state_dir, size
        self.disk_id: int = rec["disk_id"]
        self.source: str = rec["source"]
        self.mountpoint: str = rec["mountpoint"]
        self.actions: list[str] = []
        self.dirty = False  # the record changed

    def refuse(self, err: int, path: str, why: str) -> StorageError:
        return StorageError(err, "grow disk", path, f"disk {self.disk_id}: {why}")

    def run(self) -> GrowResult:
        rec = self.rec
        lp, part, q = rec.get("loop"), rec.get("partition"), rec.get("qsd")
        if not lp or not rec.get("mount") or not rec["mount"].get("source"):
            raise self.refuse(errno.EINVAL, self.source, "the record has no loop device to grow")
        device: str = rec["mount"]["source"]  # what the filesystem is mounted from
        fs_type = rec.get("fs_type") or _detect_fs(device)
        n: int = lp["number"]
        backing: str = lp["backing"]  # the image (raw) or the FUSE export (qcow2)
        fs = _Fs(fs_type, device, self.mountpoint)
        with _step("open loop", lp["device"]):
            loop_fd = os.open(lp["device"], os.O_RDONLY | os.O_CLOEXEC)
        try:
            with _step("check loop", lp["device"]):
                dev, ino, *_ = native.loop_get_status(loop_fd, path=lp["device"])
                if (dev, ino) != (lp["backing_dev"], lp["backing_ino"]):
                    raise self.refuse(errno.ESTALE, lp["device"],
                                      "the loop device is no longer bound to the recorded image")
                loop_before = native.blkgetsize64(loop_fd, path=lp["device"])
            fs_before, fs_block = fs.size() if fs_type in MEASURABLE else (None, SECTOR)
            image_before = self._image_size(q, lp)
            start = part["start"] if part else 0
            # everything that can refuse, before the first change
            refuse_shrink(self.disk_id, self.source, self.size, "image", image_before)
            refuse_shrink(self.disk_id, self.source, self.size, "loop device", loop_before)
            if fs_before is not None:
                refuse_shrink(self.disk_id, self.source, self.size,
                              "filesystem (with what precedes it)" if part else "filesystem",
                              start + fs_before)
            part_room = part is not None and self._check_partition(backing, part, loop_before)
            if self.size > loop_before or part_room or (fs_before is not None and self._fs_behind(
                    _device_size(device), fs_before, fs_block)):
                self._check_fs_can_grow(fs_type, device, fs_before, start)
            try:
                self._grow_image(q, lp, image_before)
                loop_after = self._grow_loop(loop_fd, n, q, backing, loop_before)
                if part:
                    self._grow_partition(loop_fd, n, backing, part, loop_after)
                fs_after = fs_before
                if fs_before is not None:
                    fs_after = self._grow_fs(fs, device, fs_before, fs_block)
            except BaseException as exc:
                if self.dirty:  # keep what did change (a partition's new size) on record
                    try:
                        self._write_record()
                    except OSError as err:
                        exc.add_note(f"could not record the new sizes: {err}")
                raise
            image_after = max(image_before, self.size)
            if self.actions or self.dirty:
                rec["image_size"] = image_after
                self._write_record()
        finally:
            os.close(loop_fd)
        return GrowResult(self.disk_id, rec["format"], fs_type, image_before, image_after,
                          fs_before, fs_after, tuple(self.actions))

    def _check_fs_can_grow(self, fs_type: str | None, device: str, fs_before: int | None,
                           start: int) -> None:
        """Refuse (nothing changed yet) when the filesystem will have to grow but cannot."""
        try:
            tool, package = grow_tool(fs_type)
        except ValueError as exc:
            raise self.refuse(errno.EOPNOTSUPP, self.source, str(exc)) from None
        if shutil.which(tool) is None:
            raise StorageError(errno.ENOENT, "grow disk", tool,
                               f"{tool} is not installed (Debian: apt-get install {package})")
        if tool == "resize2fs" and not has_capability(CAP_SYS_RESOURCE):
            raise self.refuse(errno.EPERM, device,
                              f"growing a mounted {fs_type} needs CAP_SYS_RESOURCE (the "
                              "kernel's online resize checks it), which this process lacks")
        if self.rec.get("partition") and shutil.which("sfdisk") is None:
            raise StorageError(errno.ENOENT, "grow disk", "sfdisk",
                               "sfdisk is not installed (Debian: apt-get install fdisk)")
        if fs_type == "btrfs" and fs_before is not None and \
                fs_before < self.size - start < BTRFS_MIN_RESIZE:
            raise self.refuse(errno.EINVAL, device,
                              f"btrfs cannot be resized to less than {fmt_size(BTRFS_MIN_RESIZE)}"
                              f" (asked: {fmt_size(self.size - start)} for the filesystem)")

    def _fs_behind(self, device_size: int, fs_size: int, block: int) -> bool:
        """Whether the filesystem should grow into its device: at least one block behind, and
        not already grown by its tool at exactly these sizes (ext4 and xfs may leave a tail that
        is too small for a block group or allocation group: the tool is not run again)."""
        grown = self.rec.get("grown") or {}
        memo = (grown.get("device_size"), grown.get("fs_size"))
        return device_size - fs_size >= block and memo != (device_size, fs_size)

    # -- image ------------------------------------------------------------------------------

    def _image_size(self, q: dict[str, Any] | None, lp: dict[str, Any]) -> int:
        if q:
            from lxcone.storage import qsd

            with _step("QMP query-named-block-nodes", q["qmp"]):
                return qsd.virtual_size(q["qmp"])
        with _step("stat image", self.source):
            st = os.stat(self.source)
        if (st.st_dev, st.st_ino) != (lp["backing_dev"], lp["backing_ino"]):
            raise self.refuse(errno.ESTALE, self.source,
                              f"the file at this path is no longer the image attached to "
                              f"{lp['device']} (replaced?)")
        if stat.S_ISBLK(st.st_mode):
            with _step("stat image", self.source):
                fd = os.open(self.source, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    return native.blkgetsize64(fd, path=self.source)
                finally:
                    os.close(fd)
        return st.st_size

    def _grow_image(self, q: dict[str, Any] | None, lp: dict[str, Any], before: int) -> None:
        if self.size <= before:
            return
        if q:
            from lxcone.storage import qsd

            with _step("QMP block_resize", self.source):
                qsd.block_resize(q["qmp"], self.size)
            self.actions.append(f"image: {fmt_size(before)} -> {fmt_size(self.size)} "
                                "(qemu-storage-daemon block_resize)")
            return
        with _step("open image", self.source):
            fd = os.open(self.source, os.O_RDWR | os.O_CLOEXEC)
        try:
            with _step("ftruncate", self.source):
                st = os.fstat(fd)
                if (st.st_dev, st.st_ino) != (lp["backing_dev"], lp["backing_ino"]):
                    raise self.refuse(errno.ESTALE, self.source,
                                      "the image was replaced while being grown")
                if not stat.S_ISREG(st.st_mode):
                    raise self.refuse(errno.EOPNOTSUPP, self.source,
                                      f"a block device ({fmt_size(before)}) cannot be grown "
                                      "here: grow it first, then call again")
                if st.st_size < self.size:  # re-checked: never shrink a file grown meanwhile
                    os.ftruncate(fd, self.size)
        finally:
            os.close(fd)
        self.actions.append(f"image: {fmt_size(before)} -> {fmt_size(self.size)} (sparse)")

    def _grow_loop(self, loop_fd: int, n: int, q: dict[str, Any] | None, backing: str,
                   before: int) -> int:
        if q:
            from lxcone.storage import qsd

            with _step("stat export", backing):
                seen = qsd.export_size(backing, self.size)
            if seen < self.size:
                raise self.refuse(errno.EIO, backing,
                                  f"the FUSE export shows {fmt_size(seen)} after the image grew "
                                  f"to {fmt_size(self.size)}")
            backing_size = seen
        else:
            with _step("stat image", backing):
                backing_size = os.stat(backing).st_size
        target = backing_size // SECTOR * SECTOR
        if before >= target:
            return before
        with _step("ioctl(LOOP_SET_CAPACITY)", f"/dev/loop{n}"):
            after = loop.set_capacity(loop_fd, n)
        if after < target:
            raise self.refuse(errno.EIO, f"/dev/loop{n}",
                              f"the loop device shows {fmt_size(after)} after LOOP_SET_CAPACITY, "
                              f"its backing file {fmt_size(backing_size)}")
        self.actions.append(f"/dev/loop{n}: {fmt_size(before)} -> {fmt_size(after)} "
                            "(LOOP_SET_CAPACITY)")
        return after

    # -- partition --------------------------------------------------------------------------

    def _check_partition(self, backing: str, part: dict[str, Any], loop_size: int) -> bool:
        """Refuse, before any change, a partition that would have to grow but cannot; whether
        the partition can gain room already (a table left short of the disk's end)."""
        number = part["number"]
        table, _p, room, mbr = self._partition_room(backing, part, loop_size)
        blocker = last_partition_blocker(table, number, mbr)
        # the disk grows beyond what the loop has now: only a last partition can follow it
        if blocker is not None and self.size > loop_size:
            raise self.refuse(errno.EOPNOTSUPP, backing, f"{blocker}: {PARTITION_ONLY_LAST}")
        return blocker is None and room >= PARTITION_MIN_GAIN

    def _partition_room(self, backing: str, part: dict[str, Any],
                        disk_size: int) -> tuple[Table, Partition, int, bytes]:
        """(table, the partition, bytes it could grow by on a disk of ``disk_size`` bytes,
        sector 0)."""
        number = part["number"]
        with _step("read partition table", backing):
            table, mbr, lba1 = _read_table(backing)
        p = table.get(number) if table else None
        if table is None or p is None or p.start != part["start"]:
            raise self.refuse(errno.EINVAL, backing,
                              f"the partition table no longer has partition {number} at byte "
                              f"{part['start']}")
        max_end = partition_max_end(table, disk_size, gpt_entry_bytes(lba1))
        if table.kind == "dos":
            max_end = min(max_end, mbr_max_end(p.start, disk_size))
        return table, p, max_end - (p.start + p.size), mbr

    def _grow_partition(self, loop_fd: int, n: int, backing: str, part: dict[str, Any],
                        disk_size: int) -> None:
        number = part["number"]
        table, p, room, mbr = self._partition_room(backing, part, disk_size)
        if room >= PARTITION_MIN_GAIN and last_partition_blocker(table, number, mbr) is None:
            old = p.size
            out = _run(["sfdisk", "--no-reread", "--no-tell-kernel", "--wipe", "never",
                        "--wipe-partitions", "never", "-q", "-N", str(number), backing],
                       "sfdisk", backing, stdin=", +\n")
            table, p, room, _mbr = self._partition_room(backing, part, disk_size)
            if p.size <= old:
                said = " | ".join(line.strip() for line in out.splitlines() if line.strip())
                raise StorageError(errno.EIO, "sfdisk", backing,
                                   f"disk {self.disk_id}: sfdisk left partition {number} at "
                                   f"{fmt_size(old)} although {fmt_size(room)} more fit "
                                   f"(something after it?){': ' + said if said else ''}")
            self.actions.append(f"partition {number} in the {table.kind} table: "
                                f"{fmt_size(old)} -> {fmt_size(p.size)} (sfdisk)")
        kernel = loop.partition_extent(n, number)
        if kernel is None or kernel[0] != p.start:
            raise self.refuse(errno.ENXIO, f"/dev/loop{n}p{number}",
                              f"the kernel shows partition {number} as {kernel}, not starting at "
                              f"byte {p.start}")
        if kernel[1] < p.size:
            with _step(f"ioctl(BLKPG_RESIZE_PARTITION {number})", f"/dev/loop{n}"):
                loop.resize_partition(loop_fd, n, number, p.start, p.size)
            self.actions.append(f"/dev/loop{n}p{number}: {fmt_size(kernel[1])} -> "
                                f"{fmt_size(p.size)} (BLKPG_RESIZE_PARTITION)")
        if part.get("size") != p.size:
            part["size"] = p.size
            self.dirty = True

    # -- filesystem -------------------------------------------------------------------------

    def _grow_fs(self, fs: _Fs, device: str, before: int, block: int) -> int:
        dev_size = _device_size(device)
        if not self._fs_behind(dev_size, before, block):
            return before
        fs.grow()
        after, _block = fs.size()
        if after > before:
            self.actions.append(f"{fs.fs_type} filesystem: {fmt_size(before)} -> "
                                f"{fmt_size(after)} ({GROW_TOOLS[fs.fs_type][0]})")
        self.rec["grown"] = {"size": self.size, "device_size": dev_size, "fs_size": after}
        self.dirty = True
        return after

    def _write_record(self) -> None:
        with _step("write record", records.record_path(self.state_dir, self.disk_id)):
            records.write(self.state_dir, self.rec)


def grow_disk(disk_id: int, size_bytes: int, state_dir: str) -> GrowResult:
    """Grow mounted disk ``disk_id`` (recorded in ``state_dir`` by mount_disk) to ``size_bytes``
    and its filesystem to fill it, online: the container sees the bigger filesystem at once.

    Idempotent (each layer only grows when it is behind); never shrinks (StorageError EINVAL,
    "shrinking is not supported"). Directory disks have nothing to grow: a result with a note.
    Refused (StorageError, nothing changed): not mounted (ENOENT/ENXIO), read-only or ISO
    (EROFS), a filesystem that cannot grow online such as ext2, or a partition that is not the
    last one (EOPNOTSUPP), a missing tool (ENOENT). A failing tool raises ToolError with its
    stderr; the disk then stays mounted and consistent, and a retry finishes the job.
    """
    if isinstance(disk_id, bool) or not isinstance(disk_id, int) or disk_id < 0:
        raise ValueError(f"disk_id must be a non-negative integer, not {disk_id!r}")
    size_bytes = check_size_arg(size_bytes)
    state_dir = os.path.abspath(state_dir)
    rpath = records.record_path(state_dir, disk_id)
    if not os.path.isdir(state_dir):
        raise StorageError(errno.ENOENT, "grow disk", state_dir,
                           f"disk {disk_id} is not mounted (no state dir)")
    with records.locked(state_dir):
        rec = records.read(state_dir, disk_id)
        if rec is None:
            raise StorageError(errno.ENOENT, "grow disk", rpath,
                               f"disk {disk_id} is not mounted (no record)")
        if not _still_mounted(rec):
            raise StorageError(errno.ENXIO, "grow disk", rec.get("mountpoint"),
                               f"disk {disk_id} is not mounted as recorded (state "
                               f"{rec.get('state')}): mount it again first")
        fmt = rec.get("format") or "auto"
        if fmt == "dir":
            return GrowResult(disk_id, fmt, rec.get("fs_type"), None, None, None, None, (),
                              "a directory disk has no size of its own: nothing to grow")
        if fmt == "iso" or rec.get("extract"):
            raise StorageError(errno.EROFS, "grow disk", rec["source"],
                               f"disk {disk_id} is an ISO image (read-only): it cannot grow")
        if rec.get("readonly"):
            raise StorageError(errno.EROFS, "grow disk", rec["source"],
                               f"disk {disk_id} is mounted read-only: it cannot grow")
        return _Grower(rec, state_dir, size_bytes).run()
