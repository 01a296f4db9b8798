"""MBR/GPT parsing: synthetic tables, tables written by sfdisk, and garbage (hypothesis)."""

from __future__ import annotations

import contextlib
import json
import shutil
import struct
import subprocess
import uuid
import zlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lxcone.storage.partitions import (
    PartitionTableError,
    Table,
    file_reader,
    read_table,
)

MiB = 1 << 20
LINUX_GUID = uuid.UUID("0fc63daf-8483-4772-8e79-3d69d8477de4")


def reader(buf: bytes | bytearray):
    def read(off: int, n: int) -> bytes:
        return bytes(buf[off:off + n])
    return read


def mbr(entries: list[tuple[int, int, int, int]], disk: bytearray | None = None,
        at: int = 0) -> bytearray:
    """entries: (boot flag, type, first LBA, sectors); written into ``disk`` at sector ``at``."""
    disk = disk if disk is not None else bytearray(64 * MiB)
    base = at * 512
    for i, (flag, ptype, lba, count) in enumerate(entries):
        struct.pack_into("<B3xB3xII", disk, base + 446 + 16 * i, flag, ptype, lba, count)
    disk[base + 510:base + 512] = b"\x55\xaa"
    return disk


def gpt(parts: list[tuple[int, int, int]], size: int = 64 * MiB, ss: int = 512,
        corrupt_primary: bool = False) -> bytearray:
    """parts: (entry index, first LBA, last LBA)."""
    disk = bytearray(size)
    last = size // ss - 1
    mbr([(0, 0xEE, 1, min(last, 0xFFFFFFFF))], disk)
    count, esize = 128, 128
    array = bytearray(count * esize)
    for idx, first, lastp in parts:
        e = idx * esize
        array[e:e + 16] = LINUX_GUID.bytes_le
        array[e + 16:e + 32] = uuid.uuid4().bytes_le
        struct.pack_into("<QQ", array, e + 32, first, lastp)
    ecrc = zlib.crc32(array)
    array_sectors = len(array) // ss

    def header(my: int, alt: int, entries_lba: int) -> bytes:
        h = bytearray(92)
        h[:8] = b"EFI PART"
        struct.pack_into("<II", h, 8, 0x00010000, 92)
        struct.pack_into("<QQQQ", h, 24, my, alt, 34, last - 33)
        h[56:72] = uuid.uuid4().bytes_le
        struct.pack_into("<QIII", h, 72, entries_lba, count, esize, ecrc)
        struct.pack_into("<I", h, 16, zlib.crc32(bytes(h)))
        return bytes(h)

    disk[ss * 2:ss * 2 + len(array)] = array
    back_entries = last - array_sectors
    disk[back_entries * ss:back_entries * ss + len(array)] = array
    disk[last * ss:last * ss + 92] = header(last, 1, back_entries)
    primary = header(1, last, 2)
    if corrupt_primary:
        primary = primary[:40] + b"\xff" + primary[41:]
    disk[ss:ss + 92] = primary
    return disk


def test_no_signature_is_no_table() -> None:
    assert read_table(reader(bytes(4 * MiB)), 4 * MiB) is None
    assert read_table(reader(b""), 0) is None


def test_mbr_primaries() -> None:
    disk = mbr([(0x80, 0x83, 2048, 4096), (0, 0, 0, 0), (0, 0x82, 8192, 2048)])
    t = read_table(reader(disk), len(disk))
    assert isinstance(t, Table) and t.kind == "dos"
    assert [(p.number, p.start, p.size, p.type) for p in t.partitions] == [
        (1, 2048 * 512, 4096 * 512, "0x83"), (3, 8192 * 512, 2048 * 512, "0x82")]


def test_mbr_bad_boot_flag_is_boot_code_not_a_table() -> None:
    disk = mbr([(0x13, 0x83, 2048, 4096)])
    assert read_table(reader(disk), len(disk)) is None


def test_mbr_partition_outside_disk() -> None:
    disk = mbr([(0, 0x83, 2048, 10**9)])
    with pytest.raises(PartitionTableError, match="outside the disk"):
        read_table(reader(disk), len(disk))


def test_mbr_extended_chain() -> None:
    disk = mbr([(0, 0x83, 2048, 2048), (0, 0x05, 8192, 40960)])
    # EBR 1 at 8192: logical at +2048, next EBR at ext+16384
    mbr([(0, 0x83, 2048, 4096), (0, 0x05, 16384, 8192)], disk, at=8192)
    mbr([(0, 0x83, 2048, 2048)], disk, at=8192 + 16384)
    t = read_table(reader(disk), len(disk))
    assert [(p.number, p.start // 512) for p in t.partitions] == [
        (1, 2048), (5, 8192 + 2048), (6, 8192 + 16384 + 2048)]


def test_mbr_extended_loop_is_refused() -> None:
    disk = mbr([(0, 0x05, 8192, 40960)])
    mbr([(0, 0x83, 2048, 1024), (0, 0x05, 1, 8)], disk, at=8192)
    # the second EBR (extended start + 1) names itself as the next one
    mbr([(0, 0x83, 2, 8), (0, 0x05, 1, 8)], disk, at=8193)
    with pytest.raises(PartitionTableError, match="loops"):
        read_table(reader(disk), len(disk))


def test_gpt_entries_and_numbers() -> None:
    disk = gpt([(0, 2048, 4095), (2, 8192, 16383)])
    t = read_table(reader(disk), len(disk))
    assert t.kind == "gpt" and t.sector_size == 512
    assert [(p.number, p.start, p.size) for p in t.partitions] == [
        (1, 2048 * 512, 2048 * 512), (3, 8192 * 512, 8192 * 512)]
    assert t.partitions[0].type == str(LINUX_GUID)
    assert t.get(3) is t.partitions[1] and t.get(2) is None


def test_gpt_falls_back_to_backup_header() -> None:
    disk = gpt([(0, 2048, 4095)], corrupt_primary=True)
    t = read_table(reader(disk), len(disk))
    assert [p.number for p in t.partitions] == [1]


def test_gpt_4k_sectors() -> None:
    disk = gpt([(0, 256, 511)], ss=4096)
    t = read_table(reader(disk), len(disk))
    assert t.sector_size == 4096 and t.partitions[0].start == 256 * 4096


def test_gpt_both_headers_bad() -> None:
    disk = gpt([(0, 2048, 4095)], corrupt_primary=True)
    disk[-512:] = bytes(512)
    with pytest.raises(PartitionTableError, match="no valid GPT header"):
        read_table(reader(disk), len(disk))


def test_gpt_end_before_start() -> None:
    disk = gpt([(0, 4095, 2048)])
    with pytest.raises(PartitionTableError, match="ends before it starts"):
        read_table(reader(disk), len(disk))


@pytest.mark.skipif(shutil.which("sfdisk") is None, reason="needs sfdisk (fdisk package)")
@pytest.mark.parametrize(("label", "script", "expected"), [
    ("dos", ",16M,L\n,8M,S\n", [(1, 2048, 32768), (2, 34816, 16384)]),
    ("gpt", ",16M,L\n,8M,S\n", [(1, 2048, 32768), (2, 34816, 16384)]),
    ("dos", ",8M,L\ntype=E\n,4M,L\n,4M,L\n", [(1, 2048, 16384), (5, 20480, 8192),
                                              (6, 30720, 8192)]),
])
def test_tables_written_by_sfdisk(tmp_path, label: str, script: str,
                                  expected: list[tuple[int, int, int]]) -> None:
    img = tmp_path / "disk.img"
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run(["sfdisk", "-q", str(img)], input=f"label: {label}\n{script}", text=True,
                   check=True, capture_output=True)
    dump = subprocess.run(["sfdisk", "-J", str(img)], check=True, capture_output=True, text=True)
    ref = [(int(p["node"].rsplit("img", 1)[1]), p["start"], p["size"])
           for p in json.loads(dump.stdout)["partitiontable"]["partitions"]
           if p.get("type") not in ("5", "f", "85")]
    with open(img, "rb") as f:
        t = read_table(file_reader(f.fileno()), 64 * MiB)
    got = [(p.number, p.start // 512, p.size // 512) for p in t.partitions]
    assert got == expected == ref


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(sector0=st.binary(min_size=446, max_size=446),
       entries=st.lists(st.tuples(st.sampled_from([0, 0x80, 0x13]),
                                  st.sampled_from([0, 0x83, 0x05, 0x0F, 0x85, 0xEE, 0x07]),
                                  st.integers(0, 2**32 - 1), st.integers(0, 2**32 - 1)),
                        min_size=4, max_size=4),
       tail=st.binary(max_size=4096), size=st.integers(0, 1 << 40))
def test_random_tables_never_crash(sector0: bytes, entries, tail: bytes, size: int) -> None:
    disk = bytearray(sector0) + bytearray(66)
    for i, e in enumerate(entries):
        struct.pack_into("<B3xB3xII", disk, 446 + 16 * i, *e)
    disk[510:512] = b"\x55\xaa"
    disk += tail
    try:
        t = read_table(reader(disk), size)
    except PartitionTableError:
        return
    if t is not None:
        for p in t.partitions:
            assert p.start > 0 and p.size > 0 and p.start + p.size <= size


@settings(max_examples=300, deadline=None)
@given(data=st.binary(min_size=0, max_size=40000), size=st.integers(0, 1 << 36))
def test_garbage_never_crashes(data: bytes, size: int) -> None:
    # only PartitionTableError (a ValueError) may escape
    with contextlib.suppress(PartitionTableError):
        read_table(reader(data), size)


@settings(max_examples=200, deadline=None)
@given(corrupt=st.lists(st.tuples(st.integers(0, 34 * 512 - 1), st.integers(0, 255)),
                        max_size=8))
def test_corrupted_gpt_never_crashes(corrupt) -> None:
    disk = gpt([(0, 2048, 4095), (1, 4096, 8191)], size=8 * MiB)
    for off, val in corrupt:
        disk[off] = val
    try:
        t = read_table(reader(disk), len(disk))
    except PartitionTableError:
        return
    assert t is None or all(p.start + p.size <= len(disk) for p in t.partitions)
