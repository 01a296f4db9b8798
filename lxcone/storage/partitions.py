"""MBR and GPT partition tables, parsed in Python: our kernels have no partition parsers
(CONFIG_MSDOS_PARTITION/EFI_PARTITION unset), so we read the table ourselves and hand the kernel
each partition with BLKPG, as ``partx -a`` does.

``read_table`` returns None when there is no table, a ``Table`` when there is one, and raises
``PartitionTableError`` (a ValueError) when a table is present but inconsistent. It never raises
anything else on garbage input (tests/unit/storage feed it random bytes with hypothesis).

Rules (the subset of libblkid's that matters for disk images):
- MBR: 0x55AA at 510; every used entry's boot flag is 0x00 or 0x80 (otherwise the sector is boot
  code or a filesystem's boot sector, not a table: None). Entries 1-4 are primaries; the first
  extended entry (0x05, 0x0F, 0x85) is followed through its EBR chain, whose logical partitions are
  numbered 5, 6, ... in chain order (at most 128, loops refused).
- GPT: an MBR with a protective 0xEE entry, then the header "EFI PART" at LBA 1 for 512-byte or
  4096-byte sectors. Header and entry-array CRC32s must match; when the primary is unusable the
  backup header in the last LBA is used. Partition N is entry N-1; all-zero type GUIDs are unused.
- Partitions must lie inside the disk; ``start`` and ``size`` are in bytes.
"""

from __future__ import annotations

import os
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass

Reader = Callable[[int, int], bytes]

MBR_EXTENDED = (0x05, 0x0F, 0x85)
MBR_PROTECTIVE = 0xEE
MAX_LOGICAL = 128
MAX_GPT_ENTRIES = 4096  # the spec minimum is 128; refuse absurd arrays rather than read them


class PartitionTableError(ValueError):
    """A partition table is present but inconsistent (bad CRC, entries outside the disk...)."""


@dataclass(frozen=True)
class Partition:
    number: int  # 1-based, as the kernel and partx name it (loopNp<number>)
    start: int  # bytes from the start of the disk
    size: int  # bytes
    type: str  # MBR: "0x83"; GPT: the type GUID


@dataclass(frozen=True)
class Table:
    kind: str  # "dos" or "gpt"
    sector_size: int
    partitions: tuple[Partition, ...]

    def get(self, number: int) -> Partition | None:
        for p in self.partitions:
            if p.number == number:
                return p
        return None


def _check_inside(number: int, start: int, size: int, disk_size: int) -> None:
    if size <= 0 or start <= 0 or start + size > disk_size:
        raise PartitionTableError(
            f"partition {number} ({start}+{size} bytes) lies outside the disk ({disk_size} bytes)")


def _mbr_entries(sector: bytes) -> list[tuple[int, int, int, int]] | None:
    """(boot flag, type, first LBA, sector count) x4, or None if this is not an MBR."""
    if len(sector) < 512 or sector[510:512] != b"\x55\xaa":
        return None
    entries = [struct.unpack_from("<B3xB3xII", sector, 446 + 16 * i) for i in range(4)]
    for flag, ptype, _lba, _count in entries:
        if ptype != 0 and flag not in (0x00, 0x80):
            return None
    return entries


def _logical(read: Reader, ext_start: int, ext_size: int, disk_size: int) -> list[Partition]:
    out: list[Partition] = []
    seen: set[int] = set()
    ebr = ext_start
    number = 5
    while True:
        if ebr in seen:
            raise PartitionTableError(f"extended partition chain loops at sector {ebr}")
        if len(seen) >= MAX_LOGICAL:
            raise PartitionTableError(f"more than {MAX_LOGICAL} logical partitions")
        seen.add(ebr)
        if ebr * 512 + 512 > disk_size:
            raise PartitionTableError(f"extended boot record at sector {ebr} is outside the disk")
        entries = _mbr_entries(read(ebr * 512, 512))
        if entries is None:
            raise PartitionTableError(f"no extended boot record at sector {ebr}")
        _flag, ptype, lba, count = entries[0]
        if ptype != 0 and count:
            start, size = (ebr + lba) * 512, count * 512
            _check_inside(number, start, size, disk_size)
            if not (ext_start * 512 <= start and start + size <= (ext_start + ext_size) * 512):
                raise PartitionTableError(f"logical partition {number} is outside its extended one")
            out.append(Partition(number, start, size, f"{ptype:#04x}"))
            number += 1
        _f, ntype, nlba, _n = entries[1]
        if ntype not in MBR_EXTENDED or nlba == 0:
            return out
        ebr = ext_start + nlba


def _parse_gpt_header(hdr: bytes, lba: int, sector_size: int) -> tuple[int, int, int, int] | None:
    """(entries LBA, count, entry size, entries CRC) if ``hdr`` is a valid header at ``lba``."""
    if len(hdr) < 92 or hdr[:8] != b"EFI PART":
        return None
    (hsize, hcrc) = struct.unpack_from("<II", hdr, 12)
    if not 92 <= hsize <= min(sector_size, len(hdr)):
        return None
    zeroed = hdr[:16] + b"\0\0\0\0" + hdr[20:hsize]
    if zlib.crc32(zeroed) & 0xFFFFFFFF != hcrc:
        return None
    my_lba, = struct.unpack_from("<Q", hdr, 24)
    if my_lba != lba:
        return None
    entries_lba, count, esize, ecrc = struct.unpack_from("<QIII", hdr, 72)
    if not 0 < count <= MAX_GPT_ENTRIES or esize < 128 or esize % 8 or esize > 4096:
        return None
    return entries_lba, count, esize, ecrc


def _gpt(read: Reader, disk_size: int) -> Table:
    import uuid  # 1.7 ms to import: only GPT disks pay it

    for ss in (512, 4096):
        last_lba = disk_size // ss - 1
        if last_lba < 2:
            continue
        for lba in (1, last_lba):
            hdr = _parse_gpt_header(read(lba * ss, ss), lba, ss)
            if hdr is None:
                continue
            entries_lba, count, esize, ecrc = hdr
            if entries_lba * ss + count * esize > disk_size:
                continue
            array = read(entries_lba * ss, count * esize)
            if len(array) != count * esize or zlib.crc32(array) & 0xFFFFFFFF != ecrc:
                continue
            parts = []
            for i in range(count):
                e = array[i * esize:(i + 1) * esize]
                if e[:16] == b"\0" * 16:
                    continue
                first, last = struct.unpack_from("<QQ", e, 32)
                if last < first:
                    raise PartitionTableError(f"GPT partition {i + 1} ends before it starts")
                start, size = first * ss, (last - first + 1) * ss
                _check_inside(i + 1, start, size, disk_size)
                parts.append(Partition(i + 1, start, size, str(uuid.UUID(bytes_le=e[:16]))))
            return Table("gpt", ss, tuple(parts))
    raise PartitionTableError("protective MBR but no valid GPT header (primary or backup)")


def read_table(read: Reader, disk_size: int) -> Table | None:
    """Parse the partition table of a disk of ``disk_size`` bytes read through ``read(off, n)``."""
    if disk_size < 1024:
        return None
    entries = _mbr_entries(read(0, 512))
    if entries is None:
        return None
    if any(ptype == MBR_PROTECTIVE for _f, ptype, _l, _c in entries):
        return _gpt(read, disk_size)
    parts: list[Partition] = []
    extended_done = False
    for i, (_flag, ptype, lba, count) in enumerate(entries):
        if ptype == 0 or count == 0:
            continue
        start, size = lba * 512, count * 512
        _check_inside(i + 1, start, size, disk_size)
        if ptype in MBR_EXTENDED:
            # Linux exposes the container itself as a 1 KiB stub; we only expose the logicals.
            if not extended_done:
                parts.extend(_logical(read, lba, count, disk_size))
                extended_done = True
            continue
        parts.append(Partition(i + 1, start, size, f"{ptype:#04x}"))
    parts.sort(key=lambda p: p.number)
    return Table("dos", 512, tuple(parts))


def file_reader(fd: int) -> Reader:
    """A ``Reader`` over an open file or block device (short reads at the end are returned)."""

    def read(offset: int, length: int) -> bytes:
        return os.pread(fd, length, offset)

    return read
