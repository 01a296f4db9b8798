"""The containers of a run dir as the probes see them: the lean twin of lxcone.monitor.inventory.

inventory.list_containers() is the reference (it reads the run dir through
lxcone.runtime.state); this module reads the same files with the same rules but imports only
``os`` (json only when a state.json changed, see :class:`StateCache`), because a probe pays
every import on every run. tests/kernel/monitor checks that both agree on real containers.

Per entry ``<run_dir>/<name>/``:
- ``state.json`` (runtime): must hold ``spec`` (an object; ``spec.nics`` entries with a
  ``host_name``) and ``cgroup_paths``; an optional top-level ``disks`` list of
  ``{"id": <disk id>, "path": "<absolute path>"}`` (written by the OpenNebula driver) gives the
  DISK_SIZE entries;
- ``init`` (lxcone-monitor): ``<init pid> <starttime> <monitor pid>``;
- ``exit`` (lxcone-monitor): present once init ended for good.

Never raises because of one entry: missing, half-written, foreign or vanishing entries are
skipped (they count in :attr:`Scan.skipped`); only a run dir that cannot be listed is an error.
"""

from __future__ import annotations

import os

from lxcone.monitor.cgroupfs import frozen
from lxcone.monitor.procfs import read
from lxcone.procstat import alive

CREATED, RUNNING, FROZEN, STOPPED = "created", "running", "frozen", "stopped"


def vm_id_of(name: str) -> int | None:
    """The OpenNebula VM id of a deploy id ``one-<id>`` (decimal as OpenNebula writes it: ASCII
    digits, no sign, no leading zero, nothing after), else None. Same rule as
    inventory.DEPLOY_ID_RE, without importing ``re``."""
    if not name.startswith("one-"):
        return None
    digits = name[4:]
    if not (digits.isascii() and digits.isdigit()) or (digits[0] == "0" and len(digits) > 1):
        return None
    return int(digits)


class Container:
    """One container record. ``status`` is one of CREATED, RUNNING, FROZEN, STOPPED;
    ``pid``/``starttime`` identify init while it runs (None otherwise)."""

    __slots__ = ("cgroup_paths", "disks", "name", "pid", "starttime", "status", "vm_id")

    def __init__(self, name: str, status: str, pid: int | None, starttime: int | None,
                 cgroup_paths: dict[str, str], disks: tuple[tuple[int, str], ...]) -> None:
        self.name = name
        self.vm_id = vm_id_of(name)
        self.status = status
        self.pid = pid
        self.starttime = starttime
        self.cgroup_paths = cgroup_paths
        self.disks = disks

    def __repr__(self) -> str:
        return f"<Container {self.name} {self.status} pid={self.pid}>"


def _disks(value: object) -> tuple[tuple[int, str], ...]:
    """Valid ``{"id": int >= 0, "path": absolute str}`` entries; others are ignored."""
    out = []
    if isinstance(value, list):
        for d in value:
            if not isinstance(d, dict):
                continue
            i, p = d.get("id"), d.get("path")
            if (type(i) is int and i >= 0 and isinstance(p, str) and p.startswith("/")
                    and "\0" not in p):
                out.append((i, p))
    return tuple(out)


def parse_state(data: bytes) -> tuple[dict[str, str], tuple[tuple[int, str], ...]] | None:
    """(cgroup_paths, disks) from state.json bytes; None if it is not a container's state."""
    import json  # only when a state.json is new or changed (StateCache)

    try:
        state = json.loads(data)
        spec = state["spec"]
        for n in spec.get("nics", ()):
            n["host_name"]  # inventory.read_container needs it too
        paths = dict(state["cgroup_paths"])
    except (ValueError, KeyError, TypeError, IndexError, AttributeError):
        return None
    if not all(isinstance(k, str) and isinstance(v, str) and v.startswith("/")
               for k, v in paths.items()):
        return None
    return paths, _disks(state.get("disks"))


class StateCache:
    """Parsed state.json per container, keyed by the file's (inode, mtime, size).

    The runtime replaces state.json by rename, so any change gives a new inode: a probe only
    reads and parses the files that changed since its last run (and only then imports json).
    ``entries`` is plain data ({name: [ino, mtime_ns, size, paths, disks]}) for the state file.
    """

    def __init__(self, entries: object = None) -> None:
        self.entries: dict = entries if isinstance(entries, dict) else {}
        self.used: set[str] = set()

    def get(self, name: str, path: str) -> tuple[dict[str, str], tuple] | None:
        try:
            st = os.stat(path)
        except OSError as e:
            if isinstance(e, (FileNotFoundError, NotADirectoryError)):
                return None
            raise
        key = (st.st_ino, st.st_mtime_ns, st.st_size)
        hit = self.entries.get(name)
        if (isinstance(hit, (list, tuple)) and len(hit) == 5 and tuple(hit[:3]) == key
                and isinstance(hit[3], dict) and isinstance(hit[4], (list, tuple))):
            self.used.add(name)
            return hit[3], tuple(tuple(d) for d in hit[4])
        data = read(path)
        if data is None:
            return None
        parsed = parse_state(data)
        if parsed is None:
            return None
        self.entries[name] = [*key, parsed[0], [list(d) for d in parsed[1]]]
        self.used.add(name)
        return parsed

    def dump(self) -> dict:
        """Entries of the containers seen in this run (others are dropped)."""
        return {n: e for n, e in self.entries.items() if n in self.used}


class Scan:
    """The result of :func:`scan`: ``containers`` sorted by name, ``skipped`` entries."""

    __slots__ = ("containers", "denied", "skipped")

    def __init__(self) -> None:
        self.containers: list[Container] = []
        self.skipped = 0
        self.denied = 0  # entries we were not allowed to read (EACCES/EPERM)


def _init(ct_dir: str) -> tuple[int, int, int] | bool | None:
    """(pid, starttime, monitor pid) from ``init``; None if absent; False if malformed."""
    data = read(ct_dir + "/init")
    if data is None:
        return None
    try:
        f = data.split()
        return int(f[0]), int(f[1]), int(f[2])
    except (ValueError, IndexError):
        return False


def read_container(run_dir: str, name: str, cache: StateCache,
                   freezer: bool = True) -> Container | None:
    """One container, or None when the entry is not (or no longer) a container.

    Status as Runtime.state(): no init file -> STOPPED if an ``exit`` file says init ended,
    else CREATED; init not alive -> STOPPED; alive -> FROZEN if its freezer is not THAWED
    (``freezer=False`` skips that read), else RUNNING. One refinement for OpenNebula: init
    dead but no ``exit`` yet while its lxcone-monitor lives means the monitor is restarting it
    (a reboot inside the container) or writing ``exit`` right now: RUNNING without a pid, as
    OpenNebula's LXC driver maps STARTING/STOPPING to RUNNING.
    """
    ct_dir = f"{run_dir}/{name}"
    got = cache.get(name, ct_dir + "/state.json")
    if got is None:
        return None
    paths, disks = got
    init = _init(ct_dir)
    if init is False:
        return None  # as inventory: a malformed init file is not a container we understand
    if init is None:
        status = STOPPED if os.path.exists(ct_dir + "/exit") else CREATED
        return Container(name, status, None, None, paths, disks)
    pid, starttime, monitor_pid = init
    if not alive(pid, starttime):
        status = STOPPED
        if not os.path.exists(ct_dir + "/exit") and _monitor_alive(monitor_pid, name):
            status = RUNNING
        return Container(name, status, None, None, paths, disks)
    status = RUNNING
    if freezer and frozen(paths):
        status = FROZEN
    return Container(name, status, pid, starttime, paths, disks)


def _monitor_alive(pid: int, name: str) -> bool:
    """True if ``pid`` is this container's lxcone-monitor (argv: lxcone-monitor <ct dir>/config);
    a zombie or a recycled pid is not."""
    data = read(f"/proc/{pid}/cmdline")
    argv = data.split(b"\0") if data else []
    return (len(argv) > 1 and argv[0].endswith(b"lxcone-monitor")
            and argv[1].endswith(f"/{name}/config".encode()))


def scan(run_dir: str, cache: StateCache, only_vms: bool = True,
         freezer: bool = True) -> Scan:
    """Every container under ``run_dir`` (only ``one-<id>`` names when ``only_vms``).

    Raises OSError only if ``run_dir`` exists but cannot be listed.
    """
    out = Scan()
    try:
        names = sorted(os.listdir(run_dir))
    except (FileNotFoundError, NotADirectoryError):
        return out
    for name in names:
        if name.startswith(".") or (only_vms and vm_id_of(name) is None):
            continue
        try:
            ct = read_container(run_dir, name, cache, freezer)
        except PermissionError:
            out.denied += 1
            continue
        except OSError:
            ct = None  # an I/O error on one entry must not fail the probe
        if ct is None:
            out.skipped += 1
        else:
            out.containers.append(ct)
    return out
