"""A small ISO 9660 reader that extracts an image into a directory: the fallback for context
disks on kernels without the iso9660 driver (CONFIG_ISO9660_FS unset on the project's machines).

OpenNebula builds context ISOs with ``genisoimage -J -R``: a handful of small files. We read,
in order of preference, the Rock Ridge tree (real names, modes, symlinks: SUSP ``SP``/``NM``/
``PX``/``SL``/``CE``), else the Joliet tree (UCS-2 names), else plain ISO 9660 names (lower-cased,
``;1`` and a bare trailing ``.`` dropped, as the kernel's ``map=normal`` shows them).

Hostile images are bounded: names are single path components (no ``/``, ``.``, ``..``, NUL),
extents must lie inside the image, at most ``MAX_ENTRIES`` entries, depth ``MAX_DEPTH``,
``MAX_BYTES`` of file data, no directory visited twice. Multi-extent and interleaved files are
refused. Anything malformed raises ``IsoError`` (a ValueError), never anything else.
"""

from __future__ import annotations

import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass

from lxcone.atomicfile import write_all

SECTOR = 2048
MAX_ENTRIES = 10000
MAX_DEPTH = 32
MAX_BYTES = 256 << 20
_JOLIET_ESCAPES = (b"%/@", b"%/C", b"%/E")

Reader = Callable[[int, int], bytes]


class IsoError(ValueError):
    """The ISO image is malformed or uses a feature this reader refuses."""


@dataclass
class Entry:
    name: str
    is_dir: bool
    extent: int
    size: int
    mode: int | None = None  # Rock Ridge PX
    symlink: str | None = None  # Rock Ridge SL


def _u32(b: bytes, off: int) -> int:
    return struct.unpack_from("<I", b, off)[0]


class _Image:
    def __init__(self, read: Reader, size: int) -> None:
        self.read_raw, self.size = read, size

    def read(self, offset: int, length: int) -> bytes:
        if offset < 0 or length < 0 or offset + length > self.size:
            raise IsoError(f"extent {offset}+{length} lies outside the image ({self.size} bytes)")
        data = self.read_raw(offset, length)
        if len(data) != length:
            raise IsoError(f"short read at {offset}")
        return data


def _susp_entries(img: _Image, area: bytes, depth: int = 0) -> list[tuple[bytes, bytes]]:
    """(signature, data) for each SUSP entry in ``area``, following CE continuations."""
    out: list[tuple[bytes, bytes]] = []
    pos = 0
    while pos + 4 <= len(area):
        sig, length = area[pos:pos + 2], area[pos + 2]
        if length < 4 or pos + length > len(area):
            break
        data = area[pos + 4:pos + length]
        if sig == b"ST":
            break
        if sig == b"CE" and len(data) >= 24:
            if depth > 8:
                raise IsoError("too many SUSP continuation areas")
            block, offset, clen = _u32(data, 0), _u32(data, 8), _u32(data, 16)
            out += _susp_entries(img, img.read(block * SECTOR + offset, clen), depth + 1)
        else:
            out.append((sig, data))
        pos += length
    return out


def _symlink_target(parts: list[bytes]) -> str:
    target = ""
    pending = ""
    for data in parts:
        pos = 1  # SL flags byte
        while pos + 2 <= len(data):
            cflags, clen = data[pos], data[pos + 1]
            comp = data[pos + 2:pos + 2 + clen]
            pos += 2 + clen
            if cflags & 0x02:
                piece = "."
            elif cflags & 0x04:
                piece = ".."
            elif cflags & 0x08:
                target, pending = "/", ""
                continue
            else:
                piece = comp.decode("utf-8", "replace")
            pending += piece
            if not cflags & 0x01:  # component complete
                target += ("" if target.endswith("/") or not target else "/") + pending
                pending = ""
    return target


def _records(img: _Image, extent: int, size: int) -> list[tuple[bytes, bytes]]:
    """(directory record, its system use area) for each record of a directory, minus . and .."""
    data = img.read(extent * SECTOR, size)
    out = []
    pos = 0
    while pos < len(data):
        length = data[pos]
        if length == 0:  # records never straddle sectors: skip to the next one
            pos = (pos // SECTOR + 1) * SECTOR
            continue
        rec = data[pos:pos + length]
        if length < 34 or len(rec) < length:
            raise IsoError(f"truncated directory record at {extent * SECTOR + pos}")
        name_len = rec[32]
        if 33 + name_len > length:
            raise IsoError("directory record name overflows the record")
        name = rec[33:33 + name_len]
        su_start = 33 + name_len + (1 - name_len % 2)
        if name not in (b"\x00", b"\x01"):
            out.append((rec, rec[su_start:length]))
        pos += length
    return out


def _check_name(name: str) -> str:
    if not name or name in (".", "..") or "/" in name or "\0" in name or len(name) > 255:
        raise IsoError(f"unsafe file name in the image: {name!r}")
    return name


def _entries(img: _Image, extent: int, size: int, tree: str, susp_skip: int) -> list[Entry]:
    out = []
    for rec, su in _records(img, extent, size):
        flags = rec[25]
        if flags & 0x80 or rec[26] or rec[27]:
            raise IsoError("multi-extent or interleaved files are not supported")
        raw = rec[33:33 + rec[32]]
        name: str | None = None
        mode = None
        link_parts: list[bytes] = []
        if tree == "rr":
            nm = b""
            for sig, data in _susp_entries(img, su[susp_skip:]):
                if sig == b"NM" and data:
                    nm += data[1:]
                elif sig == b"PX" and len(data) >= 4:
                    mode = _u32(data, 0)
                elif sig == b"SL" and data:
                    link_parts.append(data)
            if nm:
                name = nm.decode("utf-8", "replace")
        if name is None:
            if tree == "joliet":
                name = raw.decode("utf-16-be", "replace")
            else:
                name = raw.decode("ascii", "replace")
            name = name.split(";", 1)[0]
            if tree != "joliet":  # as the kernel's default map=normal shows them
                name = name[:-1].lower() if name.endswith(".") else name.lower()
        entry = Entry(_check_name(name), bool(flags & 0x02), _u32(rec, 2), _u32(rec, 10), mode)
        if link_parts or (mode is not None and stat.S_ISLNK(mode)):
            entry.symlink = _symlink_target(link_parts)
            if not entry.symlink or "\0" in entry.symlink:
                raise IsoError(f"bad symlink target for {name!r}")
        out.append(entry)
    return out


def _volume(img: _Image) -> tuple[str, bytes, int]:
    """(tree kind, root directory record, SUSP skip) of the best tree the image offers."""
    pvd = joliet = None
    for i in range(16, 16 + 64):
        vd = img.read(i * SECTOR, SECTOR)
        if vd[1:6] != b"CD001":
            raise IsoError(f"no volume descriptor at sector {i}")
        if vd[0] == 1 and pvd is None:
            pvd = vd
        elif vd[0] == 2 and vd[88:91] in _JOLIET_ESCAPES and joliet is None:
            joliet = vd
        elif vd[0] == 255:
            break
    else:
        raise IsoError("no volume descriptor set terminator")
    if pvd is None:
        raise IsoError("no primary volume descriptor")
    root = pvd[156:190]
    # Rock Ridge: the root's "." record starts its system use area with SUSP "SP" (BE EF)
    first = img.read(_u32(root, 2) * SECTOR, min(SECTOR, max(_u32(root, 10), 34)))
    if first[0] >= 34:
        su = first[34:first[0]]
        if su[:2] == b"SP" and len(su) >= 7 and su[4:6] == b"\xbe\xef":
            return "rr", root, su[6]
    if joliet is not None:
        return "joliet", joliet[156:190], 0
    return "iso", root, 0


def extract(read: Reader, size: int, dest: str) -> int:
    """Extract the image (``size`` bytes, read through ``read(offset, n)``) into the new
    directory ``dest``; returns the number of entries written. Raises IsoError on a bad image,
    OSError on a write failure (the caller removes ``dest``)."""
    img = _Image(read, size)
    tree, root, skip = _volume(img)
    count = 0
    total = 0
    seen: set[int] = set()

    def walk(extent: int, length: int, path: str, depth: int) -> None:
        nonlocal count, total
        if depth > MAX_DEPTH:
            raise IsoError(f"directories nested deeper than {MAX_DEPTH}")
        if extent in seen:
            raise IsoError("directory loop in the image")
        seen.add(extent)
        for e in _entries(img, extent, length, tree, skip):
            count += 1
            if count > MAX_ENTRIES:
                raise IsoError(f"more than {MAX_ENTRIES} entries")
            target = os.path.join(path, e.name)
            if e.symlink is not None:
                os.symlink(e.symlink, target)
            elif e.is_dir:
                os.mkdir(target, 0o755)
                walk(e.extent, e.size, target, depth + 1)
                os.chmod(target, stat.S_IMODE(e.mode) if e.mode is not None else 0o555)
            else:
                total += e.size
                if total > MAX_BYTES:
                    raise IsoError(f"more than {MAX_BYTES} bytes of files")
                data = img.read(e.extent * SECTOR, e.size)
                perm = stat.S_IMODE(e.mode) if e.mode is not None else 0o444
                fd = os.open(target, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW |
                             os.O_CLOEXEC, 0o600)
                try:
                    write_all(fd, data)
                    os.fchmod(fd, perm)
                finally:
                    os.close(fd)

    os.mkdir(dest, 0o755)
    walk(_u32(root, 2), _u32(root, 10), dest, 0)
    return count
