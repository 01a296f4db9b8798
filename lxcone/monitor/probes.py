"""The onemonitord probes of LXCoNe: SYSTEM_HOST, MONITOR_HOST, BEACON_HOST, STATE_VM and
MONITOR_VM, in OpenNebula's template format (docs/monitoring.md has formats, units and state).

OpenNebula's monitord client runs every executable of ``im/lxcone-probes.d/<group>/`` as
``<probe> lxcone <host id> <host name>`` with the MONITOR_CONFIGURATION XML on stdin; our
executables (remotes/im/lxcone-probes.d/) all call :func:`main`. A probe exits non-zero only
when the whole group cannot run (the run dir cannot be read); a container that is half-created,
vanishes mid-run or holds garbage is left out, never fails the group.

Each run is a fresh interpreter, so this module imports only lean stdlib modules at the top
and the host helpers only for the host probes (docs/monitoring.md, "Why the probes are lean").
"""

from __future__ import annotations

import os
import sys
import time

from lxcone.monitor import config, statefile
from lxcone.monitor.rundir import CREATED, FROZEN, RUNNING, STOPPED, StateCache, scan, vm_id_of
from lxcone.monitor.template import attr, b64, vector, vm_line

HYPERVISOR = "lxcone"
# STATE_VM values oned understands (ONE src/im/InformationManager.cc test_and_trigger).
ONE_STATE = {RUNNING: "RUNNING", FROZEN: "SUSPENDED", STOPPED: "POWEROFF"}
MISSING_STATE = "POWEROFF"
TIMES_MISSING = 3  # reports a VM may be absent before it is declared MISSING_STATE (probe_db)


class ProbeError(Exception):
    """The whole probe group cannot run; the message goes to stderr, the exit code is 1."""


def _warn(probe: str, msg: str) -> None:
    sys.stderr.write(f"lxcone {probe}: {msg}\n")


def _state_path(run_dir: str, probe: str, host_id: str) -> str:
    hid = host_id if host_id.isascii() and host_id.isdigit() else "x"
    return os.path.join(config.state_dir(run_dir), f"{probe}-{hid}.state")


# -- host probes -------------------------------------------------------------------------------

def host_system(config_xml: str = "") -> str:
    """SYSTEM_HOST: capacity and identity of the host plus system-datastore usage."""
    import lxcone
    from lxcone.monitor import host

    cpuinfo = host.cpuinfo_text()
    lines = [
        attr("HYPERVISOR", HYPERVISOR),
        attr("TOTALCPU", host.ncpus() * 100),
        attr("CPUSPEED", host.cpu_mhz(cpuinfo)),
        attr("TOTALMEMORY", host.memory_kib()[0]),
    ]
    cg = host.cgroups_version()
    if cg is not None:
        lines.append(attr("CGROUPS_VERSION", int(cg)))
    lines.append(attr("ARCH", os.uname().machine))
    model = host.model_name(cpuinfo)
    if model:
        lines.append(attr("MODELNAME", model))
    lines.append(attr("HOSTNAME", os.uname().nodename))
    lines.append(attr("VERSION", lxcone.__version__))
    location = config.datastore_location(config_xml)
    used, total, free = host.path_usage_mb(location)
    lines += [attr("DS_LOCATION_USED_MB", used), attr("DS_LOCATION_TOTAL_MB", total),
              attr("DS_LOCATION_FREE_MB", free)]
    for ds_id, (used, total, free) in host.datastores(location):
        lines.append(vector("DS", [("ID", ds_id), ("USED_MB", used), ("TOTAL_MB", total),
                                   ("FREE_MB", free)]))
    return "\n".join(lines) + "\n"


def host_monitor(state_path: str, probe: str = "host-monitor") -> str:
    """MONITOR_HOST: memory (KiB), CPU (percent x cores) and physical-NIC bytes.

    CPU comes from the /proc/stat delta since the previous run (kept in ``state_path``; no
    sleep in the probe). With no usable previous sample (first run, lost state, reboot) it is
    the average since boot.
    """
    from lxcone.monitor import host
    from lxcone.monitor.procfs import cpu_times

    _, used_kib, free_kib = host.memory_kib()
    total_cpu = host.ncpus() * 100
    cur = cpu_times()
    state = statefile.load(state_path) or {}
    prev = state.get("cpu")
    free_cpu = total_cpu
    if cur is not None:
        idle, jiffies = cur
        if (isinstance(prev, (list, tuple)) and len(prev) == 2
                and all(type(x) is int for x in prev) and jiffies > prev[1] and idle >= prev[0]):
            idle, jiffies = idle - prev[0], jiffies - prev[1]
        free_cpu = round(total_cpu * idle / jiffies) if jiffies > 0 else total_cpu
        err = statefile.save(state_path, {"v": 1, "cpu": list(cur)})
        if err:
            _warn(probe, err)
    free_cpu = max(0, min(total_cpu, free_cpu))
    rx, tx = host.net_bytes(host.physical_nics())
    return "\n".join([
        attr("HYPERVISOR", HYPERVISOR),
        attr("USEDMEMORY", used_kib),
        attr("FREEMEMORY", free_kib),
        attr("FREECPU", free_cpu),
        attr("USEDCPU", total_cpu - free_cpu),
        attr("NETRX", rx),
        attr("NETTX", tx),
    ]) + "\n"


def host_beacon() -> str:
    """BEACON_HOST: the time, as ``date +%s``."""
    return f"{int(time.time())}\n"


# -- VM probes ---------------------------------------------------------------------------------

def _status_line(vm_id: int, deploy_id: str, state: str) -> str:
    return vm_line(vm_id, deploy_id, "STATE", state)


def vm_status(run_dir: str, state_path: str, sync: int = config.DEFAULT_SYNC_STATE_VM,
              now: float | None = None, probe: str = "vm-status") -> str:
    """STATE_VM with the semantics of ONE's probe_db.rb (the SQLite diff of its KVM/LXC probes).

    A full report (``SYNC_STATE=yes``, ``MISSING_STATE=POWEROFF`` and every VM) when there is no
    previous run or the previous run is more than ``sync`` seconds old (onemonitord's
    PROBES_PERIOD/SYNC_STATE_VM); otherwise only the VMs whose state changed, plus VMs absent
    from more than TIMES_MISSING consecutive runs, reported once as MISSING_STATE.
    Containers never started (created) are left out, as ONE's LXC probe leaves out transitory
    states; containers whose names are not ``one-<id>`` are not OpenNebula VMs and are skipped.
    """
    now = time.time() if now is None else now
    state = statefile.load(state_path) or {}
    cache = StateCache(state.get("cache"))
    try:
        found = scan(run_dir, cache)
    except OSError as e:
        raise ProbeError(f"cannot list {run_dir}: {e.strerror or e}") from None
    if found.denied:
        raise ProbeError(f"permission denied reading {found.denied} container(s) in {run_dir}: "
                         "the probes must run as root or with read access to the run dir")
    seen = {ct.name for ct in found.containers}
    current = [(ct.vm_id, ct.name, ONE_STATE[ct.status]) for ct in found.containers
               if ct.status != CREATED and ct.vm_id is not None]
    current.sort()
    vms = state.get("vms")
    last = state.get("last")
    valid = isinstance(vms, dict) and isinstance(last, (int, float))
    lines = []
    if not valid or now > last + sync or now < last - sync:
        lines += ["SYNC_STATE=yes", f"MISSING_STATE={MISSING_STATE}"]
        vms = {}
        for vm_id, name, one_state in current:
            vms[name] = [vm_id, one_state, 0]
            lines.append(_status_line(vm_id, name, one_state))
    else:
        for vm_id, name, one_state in current:
            old = vms.get(name)
            if not (isinstance(old, list) and len(old) == 3):
                vms[name] = [vm_id, one_state, 0]
                lines.append(_status_line(vm_id, name, one_state))
                continue
            old[2] = 0
            if old[1] != one_state:
                old[1] = one_state
                lines.append(_status_line(vm_id, name, one_state))
        for name in sorted(vms):
            if name in seen:
                continue
            entry = vms[name]
            ok = isinstance(entry, list) and len(entry) == 3 and type(entry[2]) is int
            missing = entry[2] if ok else TIMES_MISSING
            if missing >= TIMES_MISSING:
                vm_id = vm_id_of(name)
                if vm_id is not None and isinstance(entry, list) and entry and entry[0] == vm_id:
                    lines.append(_status_line(vm_id, name, MISSING_STATE))
                del vms[name]
            else:
                entry[2] = missing + 1
    err = statefile.save(state_path, {"v": 1, "last": now, "vms": vms, "cache": cache.dump()})
    if err:
        _warn(probe, err)
    return "".join(line + "\n" for line in lines)


def _disk_size_mb(path: str) -> int | None:
    """Size of one disk in MiB: allocated blocks of an image file (``du -mL``, rounded up, as
    ONE's tm monitor_ds scripts), the size of a block device, the used space of a directory
    that is a mount point; None for anything else (a plain directory would need a tree walk)."""
    import math
    import stat

    try:
        st = os.stat(path)
        if stat.S_ISREG(st.st_mode):
            return math.ceil(st.st_blocks * 512 / (1 << 20))
        if stat.S_ISBLK(st.st_mode):
            from lxcone.monitor.procfs import read

            data = read(f"/sys/dev/block/{os.major(st.st_rdev)}:{os.minor(st.st_rdev)}/size")
            return None if not data else math.ceil(int(data) * 512 / (1 << 20))
        if stat.S_ISDIR(st.st_mode):
            if not os.path.ismount(os.path.realpath(path)):
                return None
            vfs = os.statvfs(path)
            return math.ceil((vfs.f_blocks - vfs.f_bfree) * vfs.f_frsize / (1 << 20))
    except (OSError, ValueError):
        return None
    return None


def _monitor_template(ct, s, cpu: float | None, net: tuple[int, int] | None) -> str:
    out = []
    if cpu is not None:
        out.append(f'CPU="{cpu:.2f}"')
    if s.memory_bytes is not None:
        out.append(f'MEMORY="{s.memory_bytes // 1024}"')
    if net is not None:
        out.append(f'NETRX="{net[0]}"')
        out.append(f'NETTX="{net[1]}"')
    for key, value in (("DISKRDBYTES", s.io_read_bytes), ("DISKWRBYTES", s.io_write_bytes),
                       ("DISKRDIOPS", s.io_read_ops), ("DISKWRIOPS", s.io_write_ops)):
        if value is not None:
            out.append(f'{key}="{value}"')
    for disk_id, path in ct.disks:
        size = _disk_size_mb(path)
        if size is not None:
            out.append(vector("DISK_SIZE", [("ID", disk_id), ("SIZE", size)]))
    return "".join(line + "\n" for line in out)


def vm_monitor(run_dir: str, state_path: str, probe: str = "vm-monitor") -> str:
    """MONITOR_VM: one ``VM = [ ID, DEPLOY_ID, MONITOR=<base64 template> ]`` per running or
    frozen VM. CPU is percent of one core from the cgroup CPU time since the previous run (its
    sample kept in ``state_path``); the first time a container is seen, the average since its
    init started. MEMORY is the working set in KiB; NETRX/NETTX the guest's own counters."""
    from lxcone.monitor.cgroupfs import sample
    from lxcone.monitor.procfs import guest_net_bytes

    state = statefile.load(state_path) or {}
    cache = StateCache(state.get("cache"))
    prev = state.get("cpu")
    prev = prev if isinstance(prev, dict) else {}
    try:
        found = scan(run_dir, cache, freezer=False)
    except OSError as e:
        raise ProbeError(f"cannot list {run_dir}: {e.strerror or e}") from None
    if found.denied:
        _warn(probe, f"permission denied reading {found.denied} container(s) in {run_dir}")
    hz = os.sysconf("SC_CLK_TCK")
    max_cpu = (os.cpu_count() or 1) * 100
    cpu_state = {}
    lines = []
    for ct in found.containers:
        if ct.pid is None or ct.vm_id is None:
            continue  # not running: nothing to measure (STATE_VM says POWEROFF)
        try:
            s = sample(ct.cgroup_paths)
            t = time.monotonic_ns()
            cpu = None
            if s.cpu_ns is not None:
                p = prev.get(ct.name)
                if (isinstance(p, (list, tuple)) and len(p) == 3 and p[0] == s.cpu_key
                        and type(p[1]) is int and type(p[2]) is int
                        and s.cpu_ns >= p[1] and t > p[2]):
                    cpu = (s.cpu_ns - p[1]) * 100 / (t - p[2])
                else:
                    lifetime = time.clock_gettime_ns(time.CLOCK_BOOTTIME) - ct.starttime * (
                        1_000_000_000 // hz)
                    if lifetime > 0:
                        cpu = s.cpu_ns * 100 / lifetime
                if cpu is not None:
                    cpu = min(max(cpu, 0.0), float(max_cpu))
                cpu_state[ct.name] = [s.cpu_key, s.cpu_ns, t]
            net = guest_net_bytes(ct.pid)
            if s.cpu_ns is None and s.memory_bytes is None and net is None:
                continue  # vanished between the scan and now
            text = _monitor_template(ct, s, cpu, net)
        except (OSError, ValueError) as e:
            _warn(probe, f"{ct.name}: {e}")
            continue
        lines.append(vm_line(ct.vm_id, ct.name, "MONITOR", b64(text)))
    err = statefile.save(state_path, {"v": 1, "cpu": cpu_state, "cache": cache.dump()})
    if err:
        _warn(probe, err)
    return "".join(line + "\n" for line in lines)


# -- entry point -------------------------------------------------------------------------------

PROBES = ("host-system", "host-monitor", "host-beacon", "vm-status", "vm-monitor")


def _stdin_text() -> str:
    """The MONITOR_CONFIGURATION XML onemonitord writes to every probe ('' for a terminal)."""
    stdin = sys.stdin
    if stdin is None:
        return ""
    try:
        if stdin.isatty():
            return ""
        data = stdin.buffer.read() if hasattr(stdin, "buffer") else stdin.read()
    except (OSError, ValueError):
        return ""
    return data.decode("utf-8", "replace") if isinstance(data, bytes) else data


def run(probe: str, argv: list[str], config_file: str | None = None) -> str:
    """The output of ``probe`` (one of PROBES) for the probe arguments ``argv``
    (``lxcone <host id> <host name>``); ``config_file``: the driver's lxcone.toml, for the run
    dir (config.run_dir). Raises ProbeError when the group cannot run."""
    host_id = argv[-2] if len(argv) >= 2 else ""
    if probe == "host-beacon":
        return host_beacon()
    if probe == "host-system":
        return host_system(_stdin_text())
    try:
        run_dir = config.run_dir(config_file)
    except config.ConfigError as e:
        raise ProbeError(str(e)) from None
    if probe == "host-monitor":
        return host_monitor(_state_path(run_dir, probe, host_id), probe)
    if probe == "vm-status":
        sync = config.sync_state_vm(_stdin_text())
        return vm_status(run_dir, _state_path(run_dir, probe, host_id), sync, probe=probe)
    if probe == "vm-monitor":
        return vm_monitor(run_dir, _state_path(run_dir, probe, host_id), probe)
    raise ProbeError(f"unknown probe {probe!r} (expected one of {', '.join(PROBES)})")


def probe_name(executable: str) -> str:
    """``lxcone-vm-monitor`` / ``vm_monitor`` / ``vm-monitor`` -> ``vm-monitor``."""
    name = os.path.basename(executable)
    if name.startswith("lxcone-"):
        name = name[len("lxcone-"):]
    return name.replace("_", "-")


def main(executable: str, argv: list[str]) -> int:
    """Run the probe named by ``executable``, print its output; 0 on success, 1 when the
    whole group cannot run (message on stderr). ``executable`` is the path the probe was run
    by: it locates the remotes tree, hence the driver's lxcone.toml (config.config_path)."""
    probe = probe_name(executable)
    try:
        out = run(probe, argv, config.config_path(executable))
    except ProbeError as e:
        _warn(probe, str(e))
        return 1
    except Exception as e:  # a bug: the group cannot run, say why
        _warn(probe, f"internal error: {type(e).__name__}: {e}")
        return 1
    sys.stdout.write(out)
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else "", sys.argv[2:]))
