"""Disk images for tests (storage, driver contract), made with the ordinary tools (mkfs.*,
genisoimage): tests may shell out, the code under test may not."""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

MiB = 1 << 20
# mkfs minimums: xfs (v5) refuses < 300 MiB, btrfs < ~114 MiB; images are sparse anyway
SIZES_MIB = {"ext2": 64, "ext3": 64, "ext4": 64, "vfat": 64, "xfs": 320, "btrfs": 160}
MKFS_TOOL = {"ext2": "mkfs.ext2", "ext3": "mkfs.ext3", "ext4": "mkfs.ext4", "xfs": "mkfs.xfs",
             "btrfs": "mkfs.btrfs", "vfat": "mkfs.vfat"}


def need(*tools: str) -> None:
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {', '.join(missing)} (scripts/setup.sh installs them)")


def run(*argv: str) -> str:
    return subprocess.run(argv, check=True, capture_output=True, text=True).stdout


def sparse_file(path: str, size: int) -> str:
    with open(path, "wb") as f:
        f.truncate(size)
    return path


def fs_image(path: str, fs: str, size_mib: int | None = None,
             populate: str | None = None) -> str:
    """A sparse image holding a fresh ``fs`` (populated from ``populate`` where mkfs can)."""
    need(MKFS_TOOL[fs])
    sparse_file(path, (size_mib or SIZES_MIB[fs]) * MiB)
    if fs in ("ext2", "ext3", "ext4"):
        run(MKFS_TOOL[fs], "-q", "-F", *(["-d", populate] if populate else []), path)
    elif fs == "xfs":
        run("mkfs.xfs", "-q", "-f", path)
    elif fs == "btrfs":
        run("mkfs.btrfs", "-q", "-f", *(["--rootdir", populate] if populate else []), path)
    elif fs == "vfat":
        run("mkfs.vfat", path)
    return path


def copy_into(disk: str, offset: int, image: str) -> None:
    """Write ``image`` into ``disk`` at ``offset`` bytes, skipping zero blocks (keeps it sparse)."""
    block = 1 << 16
    zero = bytes(block)
    with open(image, "rb") as src, open(disk, "r+b") as dst:
        pos = 0
        while True:
            buf = src.read(block)
            if not buf:
                break
            if buf != zero[:len(buf)]:
                dst.seek(offset + pos)
                dst.write(buf)
            pos += len(buf)


def partitioned(path: str, label: str, parts: list[tuple[int, str | None, str]],
                total_mib: int = 128) -> list[dict]:
    """A ``label`` ("dos"/"gpt") disk with partitions (size MiB, fs image or None, sfdisk type);
    returns sfdisk's view of the partitions."""
    need("sfdisk")
    sparse_file(path, total_mib * MiB)
    script = f"label: {label}\n" + "".join(f",{size}M,{ptype}\n" for size, _img, ptype in parts)
    subprocess.run(["sfdisk", "-q", path], input=script, text=True, check=True,
                   capture_output=True)
    table = json.loads(run("sfdisk", "-J", path))["partitiontable"]["partitions"]
    for (_size, img, _t), p in zip(parts, table, strict=True):
        if img:
            copy_into(path, p["start"] * 512, img)
    return table


def qcow2(raw: str | None, path: str, backing: str | None = None, size_mib: int = 64,
          unsafe: bool = False) -> str:
    need("qemu-img")
    if raw is not None:
        run("qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, path)
    else:
        run("qemu-img", "create", "-q", "-f", "qcow2", *(["-u"] if unsafe else []),
            *(["-b", backing, "-F", "qcow2"] if backing else []), path, f"{size_mib}M")
    return path


def iso(src_dir: str, path: str, label: str = "CONTEXT") -> str:
    tool = shutil.which("genisoimage") or shutil.which("xorrisofs")
    if tool is None:
        pytest.skip("needs genisoimage or xorriso")
    run(tool, "-quiet", "-V", label, "-J", "-R", "-o", path, src_dir)
    return path


def write_file(path: str, data: str) -> None:
    with open(path, "w") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
