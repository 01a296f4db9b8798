"""Independent oracle for the storage kernel tests: what exists under a directory, read straight
from the kernel. MUST NOT import lxcone.

- loop devices whose backing file lies under the directory (/sys/block/loop*/loop/backing_file)
- loop partitions (loopNpM) that appeared during the test (stale BLKPG partitions)
- mounts whose mount point lies under it (/proc/self/mountinfo)
- live (non-zombie) qemu-storage-daemon processes whose argv names a path under it

``cleanup`` removes whatever is found, with the ordinary tools, so one failing test does not leak
into the next; the fixture then fails the test.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field


def _unescape(s: str) -> str:
    return s.replace("\\040", " ").replace("\\011", "\t").replace("\\012", "\n") \
        .replace("\\134", "\\")


def mountinfo() -> list[tuple[str, str, str]]:
    """(mount point, fstype, source) per line of /proc/self/mountinfo."""
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            sep = fields.index("-")
            out.append((_unescape(fields[4]), fields[sep + 1], fields[sep + 2]))
    return out


def mounts_under(root: str) -> list[str]:
    return [mp for mp, _t, _s in mountinfo() if mp == root or mp.startswith(root + "/")]


def fstype_at(path: str) -> str | None:
    found = None
    for mp, fstype, _src in mountinfo():
        if mp == path:
            found = fstype
    return found


def mount_options_at(path: str) -> list[str]:
    found: list[str] = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            fields = line.split()
            if _unescape(fields[4]) == path:
                found = fields[5].split(",")
    return found


def loops() -> dict[str, str]:
    """loopN -> backing file, for every bound loop device."""
    out = {}
    for name in os.listdir("/sys/block"):
        if not name.startswith("loop"):
            continue
        try:
            with open(f"/sys/block/{name}/loop/backing_file") as f:
                out[name] = f.read().rstrip("\n")
        except OSError:
            continue
    return out


def loops_under(root: str) -> dict[str, str]:
    return {n: b for n, b in loops().items() if b == root or b.startswith(root + "/")}


def loop_partitions() -> set[str]:
    out = set()
    for name in os.listdir("/sys/block"):
        if name.startswith("loop"):
            with contextlib.suppress(OSError):
                out |= {p for p in os.listdir(f"/sys/block/{name}") if p.startswith(name + "p")}
    return out


def loop_readonly(dev: str) -> bool:
    with open(f"/sys/block/{os.path.basename(dev)}/ro") as f:
        return f.read().strip() == "1"


def qsd_under(root: str) -> list[int]:
    pids = []
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
            with open(f"/proc/{pid}/stat", "rb") as f:
                stat = f.read()
        except OSError:
            continue
        if stat[stat.rfind(b")") + 2:].startswith(b"Z"):
            continue
        if argv and os.path.basename(argv[0]) == b"qemu-storage-daemon" and \
                any(root.encode() in a for a in argv):
            pids.append(int(pid))
    return pids


def process_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
    except OSError:
        return False
    return not stat[stat.rfind(b")") + 2:].startswith(b"Z")


@dataclass
class Leaks:
    mounts: list[str] = field(default_factory=list)
    loops: dict[str, str] = field(default_factory=dict)
    partitions: set[str] = field(default_factory=set)
    qsd: list[int] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.mounts or self.loops or self.partitions or self.qsd)


def leaks(root: str, partitions_before: set[str]) -> Leaks:
    return Leaks(mounts_under(root), loops_under(root),
                 loop_partitions() - partitions_before, qsd_under(root))


def cleanup(root: str, found: Leaks) -> None:
    for mp in sorted(found.mounts, key=len, reverse=True):
        subprocess.run(["umount", "-l", mp], check=False, capture_output=True)
    for pid in found.qsd:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    for name in found.loops:
        subprocess.run(["losetup", "-d", f"/dev/{name}"], check=False, capture_output=True)
    for part in found.partitions:
        disk = part.rsplit("p", 1)[0]
        subprocess.run(["partx", "-d", f"/dev/{disk}"], check=False, capture_output=True)
    time.sleep(0.1)
