"""The few cgroup counters the probes need, read straight from a container's saved cgroup paths
(``state.json`` ``cgroup_paths``, the same dict lxcone.cgroups.from_paths takes).

Same files and the same arithmetic as lxcone.cgroups (v1.Cpuacct/Memory/Blkio, v2.stat_*,
collect.working_set, the managers' freezer_state), so the probes and ``lxcone stats`` agree;
tests/unit/monitor checks that on fake v1, hybrid and v2 trees. It exists because importing
lxcone.cgroups costs ~20 ms of interpreter time per probe run (dataclasses, typing, the managers),
more than reading every container of a 100-container host.

Layout rule (lxcone.cgroups.stats.is_unified_only): paths with only the "unified" key are a
pure v2 cgroup; anything else is v1, hybrid included (the unified directory of a hybrid host
has no cpu, memory or io controller; it is only the freezer of last resort).
"""

from __future__ import annotations

from lxcone.monitor.procfs import read, read_ino, read_keyed


def is_v2(paths: dict[str, str]) -> bool:
    return len(paths) == 1 and "unified" in paths


def frozen(paths: dict[str, str]) -> bool | None:
    """True when frozen or freezing, False when thawed, None when the freezer file is gone.

    v1: freezer.state != THAWED. Pure v2, or a hybrid host without a v1 freezer hierarchy:
    cgroup.freeze != 0 (the request; FREEZING counts as frozen, as in Runtime.state()).
    """
    d = paths.get("freezer")
    if d is not None:
        data = read(d + "/freezer.state")
        return None if data is None else data.strip() != b"THAWED"
    d = paths.get("unified")
    if d is None:
        return None
    data = read(d + "/cgroup.freeze")
    return None if data is None else data.strip() != b"0"


class Sample:
    """One reading of a container cgroup. Fields are None when unavailable."""

    __slots__ = ("cpu_key", "cpu_ns", "io_read_bytes", "io_read_ops", "io_write_bytes",
                 "io_write_ops", "memory_bytes", "memory_usage_bytes")

    def __init__(self) -> None:
        self.cpu_ns: int | None = None
        # Identity of the CPU counter (inode of the file): a new cgroup under the same name
        # (container deleted and created again) restarts the counter from 0.
        self.cpu_key: int | None = None
        self.memory_usage_bytes: int | None = None
        self.memory_bytes: int | None = None  # working set: usage - inactive_file, floored at 0
        self.io_read_bytes: int | None = None
        self.io_write_bytes: int | None = None
        self.io_read_ops: int | None = None
        self.io_write_ops: int | None = None


def _working_set(usage: int | None, stat: bytes | None, key: bytes) -> int | None:
    if usage is None:
        return None
    inactive = None if stat is None else read_keyed(stat, key)
    return usage if inactive is None else max(0, usage - inactive)


def _int(data: bytes | None) -> int | None:
    if data is None:
        return None
    try:
        return int(data)
    except ValueError:
        return None


def _blkio_rw(data: bytes | None) -> tuple[int, int] | None:
    """(Read, Write) summed over devices from a v1 rwstat file (``MAJ:MIN Op value`` lines and
    a final ``Total value``), as lxcone.cgroups.fs.parse_blkio_rwstat does."""
    if data is None:
        return None
    r = w = 0
    for line in data.split(b"\n"):
        f = line.split()
        if len(f) == 3:
            if f[1] == b"Read":
                r += int(f[2])
            elif f[1] == b"Write":
                w += int(f[2])
    return r, w


def sample(paths: dict[str, str], io: bool = True) -> Sample:
    """CPU time, memory (usage and working set) and, if ``io``, block I/O counters.

    A file that vanished mid-read leaves its fields None; never raises for a gone cgroup.
    ValueError for garbage in a file is left to the caller (it is not a gone container).
    """
    s = Sample()
    if is_v2(paths):
        d = paths["unified"]
        got = read_ino(d + "/cpu.stat")
        if got is not None:
            usec = read_keyed(got[0], b"usage_usec")
            if usec is not None:
                s.cpu_ns, s.cpu_key = usec * 1000, got[1]
        s.memory_usage_bytes = _int(read(d + "/memory.current"))
        if s.memory_usage_bytes is not None:
            s.memory_bytes = _working_set(s.memory_usage_bytes, read(d + "/memory.stat"),
                                          b"inactive_file")
        if io:
            data = read(d + "/io.stat")
            if data is not None:
                totals = {b"rbytes": 0, b"wbytes": 0, b"rios": 0, b"wios": 0}
                for line in data.split(b"\n"):
                    for field in line.split()[1:]:
                        k, _, v = field.partition(b"=")
                        if k in totals:
                            totals[k] += int(v)
                s.io_read_bytes, s.io_write_bytes = totals[b"rbytes"], totals[b"wbytes"]
                s.io_read_ops, s.io_write_ops = totals[b"rios"], totals[b"wios"]
        return s
    d = paths.get("cpuacct")
    if d is not None:
        got = read_ino(d + "/cpuacct.usage")
        if got is not None:
            s.cpu_ns, s.cpu_key = _int(got[0]), got[1]
    d = paths.get("memory")
    if d is not None:
        s.memory_usage_bytes = _int(read(d + "/memory.usage_in_bytes"))
        if s.memory_usage_bytes is not None:
            s.memory_bytes = _working_set(s.memory_usage_bytes, read(d + "/memory.stat"),
                                          b"total_inactive_file")
    d = paths.get("blkio")
    if io and d is not None:
        # The throttle files count every bio the cgroup submits (measured on 6.18 without any
        # throttle rule: O_DIRECT, page-cache misses, fsync'ed writes); background writeback
        # of dirty pages is charged to the root cgroup on v1. See docs/monitoring.md.
        b = _blkio_rw(read(d + "/blkio.throttle.io_service_bytes_recursive"))
        if b is None:
            b = _blkio_rw(read(d + "/blkio.throttle.io_service_bytes"))
        n = _blkio_rw(read(d + "/blkio.throttle.io_serviced_recursive"))
        if n is None:
            n = _blkio_rw(read(d + "/blkio.throttle.io_serviced"))
        if b is not None:
            s.io_read_bytes, s.io_write_bytes = b
        if n is not None:
            s.io_read_ops, s.io_write_ops = n
    return s
