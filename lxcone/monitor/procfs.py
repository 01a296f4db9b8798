"""Lean readers of /proc, /sys and cgroupfs files for the probes: os-level calls, no imports
beyond ``os`` and ``errno``, bytes in, ints out.

Every probe run is a fresh interpreter (onemonitord forks one per probe and period), so what
it imports is paid on every run; this module, ``rundir`` and ``cgroupfs`` are what the VM probes
need for the whole run dir. See docs/monitoring.md ("Why the probes are lean").
"""

from __future__ import annotations

import errno
import os

# typing alone costs a probe run ~5 ms to import: annotations only.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import TypeVar

    T = TypeVar("T")

_O_READ = os.O_RDONLY | os.O_CLOEXEC
_CHUNK = 65536
# Errors that mean "this process / cgroup / file is gone" (not a failure of the probe): a
# container that stops or is deleted while we read it. ENODEV: reading a file of a cgroup
# that was removed after we opened it; EINVAL/ESRCH: /proc/<pid>/... of an exiting process.
_VANISHED = frozenset({errno.ENOENT, errno.ENOTDIR, errno.ESRCH, errno.ENODEV, errno.EINVAL})


def read(path: str) -> bytes | None:
    """The whole content of ``path``, or None if it does not exist (any more).

    One ``read`` is enough for /proc and cgroupfs files (the kernel generates them whole on the
    first read); larger files are read to the end. Raises OSError for anything else (EACCES, ...).
    """
    return _with_fd(path, _read_all)


def read_ino(path: str) -> tuple[bytes, int] | None:
    """(content, inode number) of a small pseudo file, or None if it does not exist (any more).

    The inode tells one cgroup's counter file from the next one created under the same path.
    """
    return _with_fd(path, lambda fd: (os.read(fd, _CHUNK), os.fstat(fd).st_ino))


def _read_all(fd: int) -> bytes:
    data = os.read(fd, _CHUNK)
    if len(data) < _CHUNK:
        return data
    chunks = [data]
    while more := os.read(fd, _CHUNK):
        chunks.append(more)
    return b"".join(chunks)


def _with_fd(path: str, use: Callable[[int], T]) -> T | None:
    """``use(fd)`` on ``path`` opened read-only; None if the file is gone, before or during."""
    try:
        fd = os.open(path, _O_READ)
    except OSError as e:
        if e.errno in _VANISHED:
            return None
        raise
    try:
        return use(fd)
    except OSError as e:
        if e.errno in _VANISHED:
            return None
        raise
    finally:
        os.close(fd)


def read_keyed(data: bytes, key: bytes) -> int | None:
    """The value of ``key`` in a flat keyed file (``key value`` lines: memory.stat, cpu.stat),
    without parsing the other lines; None if absent or not an integer."""
    k = key + b" "
    if data.startswith(k):
        start = len(k)
    else:
        i = data.find(b"\n" + k)
        if i < 0:
            return None
        start = i + 1 + len(k)
    end = data.find(b"\n", start)
    try:
        return int(data[start:end] if end >= 0 else data[start:])
    except ValueError:
        return None


# -- processes ---------------------------------------------------------------------------------

# -- network -----------------------------------------------------------------------------------

def net_dev_fields(text: str) -> dict[str, list[str]]:
    """/proc/net/dev as {interface: its 16 counters, unparsed}: two header lines, then
    ``name: rx_bytes rx_packets rx_errs rx_drop ... tx_bytes(8) tx_packets ...``. Shared by
    lxcone.monitor.netdev (which builds NetCounters) and the probes (which only sum bytes)."""
    out = {}
    for line in text.splitlines()[2:]:
        name, sep, rest = line.partition(":")
        if not sep:
            continue
        v = rest.split()
        if len(v) < 16:
            continue
        out[name.strip()] = v
    return out


def guest_net_bytes(pid: int) -> tuple[int, int] | None:
    """(received, sent) bytes summed over the interfaces of the network namespace of ``pid``,
    loopback excluded: the guest's own view, from /proc/<pid>/net/dev. None if gone."""
    data = read(f"/proc/{pid}/net/dev")
    if data is None:
        return None
    rx = tx = 0
    for name, v in net_dev_fields(data.decode("ascii", "replace")).items():
        if name != "lo":
            rx += int(v[0])
            tx += int(v[8])
    return rx, tx


# -- host --------------------------------------------------------------------------------------

def cpu_times() -> tuple[int, int] | None:
    """(idle, total) jiffies of all CPUs from the first line of /proc/stat.

    total = user+nice+system+idle+iowait+irq+softirq+steal (guest time is already inside
    user/nice); idle is the ``idle`` column only, so iowait counts as used, as in ``vmstat``'s
    ``id`` column that OpenNebula's linux_usage.rb reads.
    """
    data = read("/proc/stat")
    if not data:
        return None
    first = data[:data.find(b"\n")].split()
    if not first or first[0] != b"cpu" or len(first) < 5:
        return None
    values = [int(x) for x in first[1:9]]
    return values[3], sum(values)


def meminfo() -> dict[str, int]:
    """/proc/meminfo as {key: KiB}."""
    out = {}
    data = read("/proc/meminfo") or b""
    for line in data.decode("ascii", "replace").splitlines():
        key, sep, rest = line.partition(":")
        if sep:
            v = rest.split()
            if v and v[0].isdigit():
                out[key] = int(v[0])
    return out
