"""Read-only views of kernel state the storage layer checks before it acts: mounts
(/proc/self/mountinfo), loop devices (/sys/block/loopN/loop), processes (/proc/<pid>)."""

from __future__ import annotations

import os

from lxcone import mountinfo

# One parser for the whole project (lxcone.mountinfo); the storage layer's names for it:
MountEntry = mountinfo.Mount
parse_mountinfo = mountinfo.parse


def mounts() -> list[MountEntry]:
    with open("/proc/self/mountinfo") as f:
        return parse_mountinfo(f.read())


def mount_at(path: str, entries: list[MountEntry] | None = None) -> MountEntry | None:
    """The topmost mount whose mount point is exactly ``path`` (absolute, normalised)."""
    found = None
    for e in entries if entries is not None else mounts():
        if e.mountpoint == path:
            found = e
    return found


def dev_str(rdev: int) -> str:
    return f"{os.major(rdev)}:{os.minor(rdev)}"


def loop_backing(number: int) -> str | None:
    """The backing file of /dev/loop<number> as sysfs shows it, None when unbound."""
    try:
        with open(f"/sys/block/loop{number}/loop/backing_file") as f:
            return f.read().rstrip("\n")
    except (FileNotFoundError, ProcessLookupError, OSError):
        return None


def loops_backed_by(path: str) -> list[tuple[int, bool]]:
    """(N, read-only) of every /dev/loopN bound to the file at ``path`` (real path)."""
    out = []
    try:
        names = os.listdir("/sys/block")
    except OSError:
        return out
    for name in names:
        if not name.startswith("loop") or not name[4:].isdigit():
            continue
        n = int(name[4:])
        if loop_backing(n) == path:
            try:
                with open(f"/sys/block/{name}/ro") as f:
                    ro = f.read().strip() == "1"
            except OSError:
                ro = False
            out.append((n, ro))
    return out


def loop_partitions(number: int) -> list[str]:
    """Partition names (``loop3p1``...) the kernel currently has for /dev/loop<number>."""
    try:
        names = os.listdir(f"/sys/block/loop{number}")
    except FileNotFoundError:
        return []
    prefix = f"loop{number}p"
    return sorted(n for n in names if n.startswith(prefix) and n[len(prefix):].isdigit())


def proc_cmdline(pid: int) -> list[bytes]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")
    except OSError:
        return []


def holders_of(path: str) -> list[int]:
    """Pids with an open fd on ``path`` (compared by the fd's link text, so no FUSE file is ever
    stat'ed): e.g. a qemu-storage-daemon still serving the image."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        fd_dir = f"/proc/{entry}/fd"
        try:
            fds = os.listdir(fd_dir)
        except OSError:
            continue
        for fd in fds:
            try:
                if os.readlink(f"{fd_dir}/{fd}") == path:
                    pids.append(int(entry))
                    break
            except OSError:
                continue
    return pids
