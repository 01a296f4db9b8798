"""Image-format and superblock detection on synthetic bytes (no root, no images)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lxcone.storage import detect


def blank(size: int = detect.HEAD_SIZE) -> bytearray:
    return bytearray(size)


def ext_sb(compat: int = 0, incompat: int = 0, ro_compat: int = 0, log_block: int = 2) -> bytes:
    head = blank()
    sb = 1024
    struct.pack_into("<6I", head, sb, 1000, 4000, 0, 100, 0, log_block)
    head[sb + 0x38:sb + 0x3A] = b"\x53\xef"
    struct.pack_into("<3I", head, sb + 0x5C, compat, incompat, ro_compat)
    return bytes(head)


def vfat_boot(kind: str = "FAT32", sector: int = 512, per_cluster: int = 8) -> bytes:
    head = blank()
    head[0:3] = b"\xeb\x58\x90"
    struct.pack_into("<H", head, 11, sector)
    head[13] = per_cluster
    if kind == "FAT32":
        head[82:90] = b"FAT32   "
    else:
        head[54:62] = f"{kind:<8}".encode()
    head[510:512] = b"\x55\xaa"
    return bytes(head)


def test_format_qcow2_iso_raw() -> None:
    assert detect.detect_format_bytes(b"QFI\xfb\x00\x00\x00\x03" + bytes(100)) == "qcow2"
    iso = blank(0x9000)
    iso[0x8001:0x8006] = b"CD001"
    assert detect.detect_format_bytes(bytes(iso)) == "iso"
    assert detect.detect_format_bytes(bytes(4096)) == "raw"
    assert detect.detect_format_bytes(b"") == "raw"


def test_format_of_paths(tmp_path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "q").write_bytes(b"QFI\xfb" + bytes(512))
    (tmp_path / "r").write_bytes(bytes(512))
    assert detect.detect_format(str(tmp_path / "d")) == "dir"
    assert detect.detect_format(str(tmp_path / "q")) == "qcow2"
    assert detect.detect_format(str(tmp_path / "r")) == "raw"
    with pytest.raises(FileNotFoundError):
        detect.detect_format(str(tmp_path / "missing"))


def test_xfs_btrfs_iso_squashfs_erofs() -> None:
    assert detect.detect_fs(b"XFSB" + bytes(detect.HEAD_SIZE)) == "xfs"
    b = blank()
    b[0x10040:0x10048] = b"_BHRfS_M"
    assert detect.detect_fs(bytes(b)) == "btrfs"
    i = blank()
    i[0x8001:0x8006] = b"CD001"
    assert detect.detect_fs(bytes(i)) == "iso9660"
    assert detect.detect_fs(b"hsqs" + bytes(2000)) == "squashfs"
    e = blank(2048)
    e[1024:1028] = struct.pack("<I", 0xE0F5E1E2)
    assert detect.detect_fs(bytes(e)) == "erofs"


@pytest.mark.parametrize(("compat", "incompat", "ro_compat", "expected"), [
    (0, 0x2, 0x1, "ext2"),  # filetype, sparse_super
    (0x4, 0x2, 0x3, "ext3"),  # + has_journal
    (0x4, 0x2 | 0x40, 0x3, "ext4"),  # + extents
    (0x4, 0x2, 0x3 | 0x8, "ext4"),  # + huge_file (ro_compat beyond ext3)
    (0, 0x2 | 0x200, 0, "ext4"),  # flex_bg without a journal is still ext4
])
def test_ext_generations(compat: int, incompat: int, ro_compat: int, expected: str) -> None:
    assert detect.detect_fs(ext_sb(compat, incompat, ro_compat)) == expected


def test_ext_insane_or_journal_device_is_not_a_filesystem() -> None:
    assert detect.detect_fs(ext_sb(log_block=20)) is None
    assert detect.detect_fs(ext_sb(incompat=0x8)) is None  # external journal device
    head = bytearray(ext_sb())
    struct.pack_into("<I", head, 1024, 0)  # no inodes
    assert detect.detect_fs(bytes(head)) is None


def test_vfat_variants_and_lookalikes() -> None:
    assert detect.detect_fs(vfat_boot("FAT32")) == "vfat"
    assert detect.detect_fs(vfat_boot("FAT16")) == "vfat"
    assert detect.detect_fs(vfat_boot("FAT12")) == "vfat"
    assert detect.detect_fs(vfat_boot(sector=513)) is None
    assert detect.detect_fs(vfat_boot(per_cluster=3)) is None
    # an MBR: 0x55AA but no FAT label
    mbr = blank(512)
    mbr[510:512] = b"\x55\xaa"
    assert detect.detect_fs(bytes(mbr)) is None


def test_swap_is_reported() -> None:
    s = blank(4096)
    s[4086:4096] = b"SWAPSPACE2"
    assert detect.detect_fs(bytes(s)) == "swap"


def test_priority_xfs_over_leftover_ext_magic() -> None:
    head = bytearray(ext_sb())
    head[0:4] = b"XFSB"
    assert detect.detect_fs(bytes(head)) == "xfs"


def test_mount_types_fall_back_to_ext4() -> None:
    assert detect.mount_types("ext3") == ("ext3", "ext4")
    assert detect.mount_types("xfs") == ("xfs",)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=detect.HEAD_SIZE + 16))
def test_garbage_never_raises(data: bytes) -> None:
    assert detect.detect_fs(data) in (None, "xfs", "btrfs", "ext2", "ext3", "ext4", "iso9660",
                                      "squashfs", "erofs", "vfat", "swap")
    assert detect.detect_format_bytes(data) in ("raw", "qcow2", "iso")
