"""Host facts for SYSTEM_HOST and MONITOR_HOST, with the units and formulas of OpenNebula's own
Linux probes (ONE src/im_mad/remotes/lib/linux.rb, node-probes.d/*.sh, monitor_ds.rb), read
from /proc, /sys and statvfs instead of lscpu, vmstat, mount and df.
"""

from __future__ import annotations

import math
import os

from lxcone.monitor.procfs import read

MIB = 1 << 20


def ncpus() -> int:
    """Online CPUs (``nproc`` without an affinity mask; lscpu's "CPU(s)" on a host with no
    offline CPU)."""
    return os.cpu_count() or 1


def cpuinfo_text() -> str:
    data = read("/proc/cpuinfo") or b""
    return data.decode("utf-8", "replace")


def _cpuinfo_value(text: str, key: str) -> str | None:
    """The value of the first ``key<blanks>: value`` line (the ``grep -m1 "^key[[:space:]]*:"``
    of ONE's cpu.sh)."""
    for line in text.split("\n"):  # not splitlines(): a model name may hold U+2028
        name, sep, value = line.partition(":")
        if sep and name.rstrip() == key:
            return value.strip()
    return None


def model_name(cpuinfo: str) -> str | None:
    """``model name`` (x86), else ``cpu`` (ppc, ...), as ONE's cpu.sh."""
    for key in ("model name", "cpu"):
        value = _cpuinfo_value(cpuinfo, key)
        if value:
            return value
    return None


def cpu_mhz(cpuinfo: str) -> int:
    """CPU speed in MHz: ``cpu MHz`` of /proc/cpuinfo (what lscpu's "CPU MHz" showed), else the
    cpufreq maximum, else 0 (what ONE's linux.rb prints when lscpu has no such line)."""
    value = _cpuinfo_value(cpuinfo, "cpu MHz")
    if value:
        try:
            return round(float(value))
        except ValueError:
            pass
    data = read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq")
    if data and data.strip().isdigit():
        return round(int(data) / 1000)
    return 0


def cgroups_version(mounts: bytes | None = None) -> str | None:
    """"1" if any cgroup v1 hierarchy is mounted (hybrid hosts too), else "2" if cgroup2 is,
    else None: the ``mount | grep "type cgroup ("`` test of ONE's linux.rb."""
    if mounts is None:
        mounts = read("/proc/self/mounts") or b""
    types = {line.split()[2] for line in mounts.split(b"\n") if len(line.split()) > 2}
    if b"cgroup" in types:
        return "1"
    if b"cgroup2" in types:
        return "2"
    return None


def path_usage_mb(path: str) -> tuple[int, int, int]:
    """(used, total, free) MiB of the filesystem holding ``path``, as ``df -B1M -P`` prints
    them (rounded up; free = available to unprivileged users); zeros if it cannot be read,
    as ONE's monitor_ds.rb does when df fails."""
    try:
        st = os.statvfs(path)
    except OSError:
        return 0, 0, 0

    def mb(blocks: int) -> int:
        return math.ceil(blocks * st.f_frsize / MIB)

    return mb(st.f_blocks - st.f_bfree), mb(st.f_blocks), mb(st.f_bavail)


def datastores(location: str) -> list[tuple[int, tuple[int, int, int]]]:
    """[(ds id, (used, total, free) MiB)] for every ``<location>/<digits>`` directory that has
    a ``.monitor`` file (the system datastores ONE's monitor_ds.rb reports), sorted by id."""
    out = []
    try:
        names = os.listdir(location)
    except OSError:
        return out
    for name in names:
        if not (name.isascii() and name.isdigit()):
            continue
        d = os.path.join(location, name)
        if os.path.isdir(d) and os.path.exists(os.path.join(d, ".monitor")):
            out.append((int(name), path_usage_mb(d)))
    out.sort()
    return out


def physical_nics(sys_class_net: str = "/sys/class/net") -> list[str]:
    """Interfaces backed by a device (``/sys/class/net/<if>/device`` exists): real NICs, not
    bridges, veths, VLANs, bonds, tunnels or lo. The kernel's own notion, where ONE's
    linux.rb matches names (eth*, en*, ib*, em*, p*p*), which misses renamed NICs."""
    try:
        names = os.listdir(sys_class_net)
    except OSError:
        return []
    return sorted(n for n in names if os.path.exists(f"{sys_class_net}/{n}/device"))


def net_bytes(nics: list[str]) -> tuple[int, int]:
    """(rx, tx) bytes summed over ``nics``, from /proc/net/dev (the host's netns)."""
    from lxcone.monitor.procfs import net_dev_fields

    wanted = set(nics)
    rx = tx = 0
    data = read("/proc/net/dev") or b""
    for name, v in net_dev_fields(data.decode("ascii", "replace")).items():
        if name in wanted:
            rx += int(v[0])
            tx += int(v[8])
    return rx, tx


def memory_kib() -> tuple[int, int, int]:
    """(total, used, free) KiB as ONE's linux.rb: used = MemTotal - MemFree - Buffers - Cached,
    free = total - used."""
    from lxcone.monitor.procfs import meminfo

    m = meminfo()
    total = m.get("MemTotal", 0)
    used = total - m.get("MemFree", 0) - m.get("Buffers", 0) - m.get("Cached", 0)
    return total, used, total - used
