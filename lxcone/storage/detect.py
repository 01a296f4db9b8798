"""Image-format and filesystem detection from magic bytes: no blkid, no shell, pure functions.

Format of a disk file (``DiskSpec.format == "auto"``), first match wins:
  a directory                          -> "dir"
  b"QFI\\xfb" at 0                      -> "qcow2"
  b"CD001" at 0x8001 (ISO 9660 PVD)     -> "iso"
  anything else                        -> "raw"

Filesystem of a device or partition (``detect_fs``), in this order of priority (``mkfs`` wipes the
other signatures, so a real image matches one; the order only settles leftovers):
  xfs       b"XFSB" at 0
  btrfs     b"_BHRfS_M" at 0x10040 (primary superblock at 64 KiB, magic at +0x40)
  ext2/3/4  0xEF53 little-endian at 1080 (superblock at 1024, s_magic at +0x38), with a sane
            s_log_block_size; ext4 if any incompat/ro_compat feature beyond ext3's is set, ext3 if
            it has a journal, else ext2 (the same split libblkid makes)
  iso9660   b"CD001" at 0x8001
  squashfs  b"hsqs" at 0
  erofs     0xE0F5E1E2 little-endian at 1024
  vfat      0x55AA at 510, a power-of-two sector size (512..4096) and sectors per cluster, and
            b"FAT12   "/b"FAT16   "/b"FAT     " at 54 or b"FAT32   " at 82
  swap      b"SWAPSPACE2"/b"SWAP-SPACE" at 4086 (4 KiB pages): reported so callers can refuse it
"""

from __future__ import annotations

import os
import struct

QCOW2_MAGIC = b"QFI\xfb"
ISO_MAGIC_OFFSET = 0x8001
BTRFS_MAGIC_OFFSET = 0x10040
# Enough bytes from the start of a device/partition for every check below.
HEAD_SIZE = BTRFS_MAGIC_OFFSET + 64

FORMATS = ("raw", "qcow2", "dir", "iso", "auto")

# ext feature bits (include/linux/ext2_fs.h lineage; fs/ext4/ext4.h)
_EXT_COMPAT_HAS_JOURNAL = 0x0004
_EXT_INCOMPAT_JOURNAL_DEV = 0x0008
# ext3 knows FILETYPE, RECOVER, JOURNAL_DEV, META_BG; anything else in incompat means ext4.
_EXT3_INCOMPAT = 0x0002 | 0x0004 | 0x0008 | 0x0010
# ...and SPARSE_SUPER, LARGE_FILE, BTREE_DIR in ro_compat.
_EXT3_RO_COMPAT = 0x0001 | 0x0002 | 0x0004

_FAT_LABELS_16 = (b"FAT12   ", b"FAT16   ", b"FAT     ")


def detect_format_bytes(head: bytes) -> str:
    """``"qcow2"``, ``"iso"`` or ``"raw"`` from the first bytes of an image file."""
    if head[:4] == QCOW2_MAGIC:
        return "qcow2"
    if head[ISO_MAGIC_OFFSET:ISO_MAGIC_OFFSET + 5] == b"CD001":
        return "iso"
    return "raw"


def detect_format(path: str) -> str:
    """The format of the disk at ``path`` (see the module docstring); OSError if unreadable."""
    if os.path.isdir(path):
        return "dir"
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        return detect_format_bytes(os.pread(fd, ISO_MAGIC_OFFSET + 5, 0))
    finally:
        os.close(fd)


def _ext_kind(head: bytes) -> str | None:
    sb = head[1024:1024 + 0x68]
    if len(sb) < 0x68 or sb[0x38:0x3A] != b"\x53\xef":
        return None
    inodes, blocks, _r, _f, _first, log_block = struct.unpack_from("<6I", sb, 0)
    if inodes == 0 or blocks == 0 or log_block > 6:  # block size 1 KiB << 0..6
        return None
    compat, incompat, ro_compat = struct.unpack_from("<3I", sb, 0x5C)
    if incompat & _EXT_INCOMPAT_JOURNAL_DEV:
        return None  # an external journal, not a mountable filesystem
    if incompat & ~_EXT3_INCOMPAT or ro_compat & ~_EXT3_RO_COMPAT:
        return "ext4"
    if compat & _EXT_COMPAT_HAS_JOURNAL:
        return "ext3"
    return "ext2"


def _is_vfat(head: bytes) -> bool:
    if len(head) < 512 or head[510:512] != b"\x55\xaa":
        return False
    sector_size = int.from_bytes(head[11:13], "little")
    per_cluster = head[13]
    if sector_size not in (512, 1024, 2048, 4096):
        return False
    if per_cluster == 0 or per_cluster & (per_cluster - 1):
        return False
    return head[54:62] in _FAT_LABELS_16 or head[82:90] == b"FAT32   "


def detect_fs(head: bytes) -> str | None:
    """The filesystem type (a ``mount -t`` name) whose superblock starts ``head``, else None.

    ``head`` should hold ``HEAD_SIZE`` bytes from the start of the device or partition; shorter
    input only skips the checks it cannot reach. Never raises on garbage.
    """
    if head[:4] == b"XFSB":
        return "xfs"
    if head[BTRFS_MAGIC_OFFSET:BTRFS_MAGIC_OFFSET + 8] == b"_BHRfS_M":
        return "btrfs"
    ext = _ext_kind(head)
    if ext:
        return ext
    if head[ISO_MAGIC_OFFSET:ISO_MAGIC_OFFSET + 5] == b"CD001":
        return "iso9660"
    if head[:4] == b"hsqs":
        return "squashfs"
    if head[1024:1028] == b"\xe2\xe1\xf5\xe0":
        return "erofs"
    if _is_vfat(head):
        return "vfat"
    if head[4086:4096] in (b"SWAPSPACE2", b"SWAP-SPACE"):
        return "swap"
    return None


def mount_types(fs_type: str) -> tuple[str, ...]:
    """Types to try with mount(2), in order: ext2/ext3 fall back to the ext4 driver, which mounts
    them too when the kernel has no separate ext2/ext3 driver (CONFIG_EXT4_USE_FOR_EXT2)."""
    if fs_type in ("ext2", "ext3"):
        return (fs_type, "ext4")
    return (fs_type,)
