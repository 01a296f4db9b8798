"""The container collector: reads the run dir, cgroups and /proc when Prometheus scrapes.

Nothing runs between scrapes (no polling loop, no timer: the "Writing exporters" guide and the
cAdvisor complaints in the research notes §1.1). What is kept across scrapes is only what makes
the next scrape cheap, per container:

- the parsed record (state.json + init), reloaded when the container's directory changes
  (``state.json``, ``init`` and ``exit`` are all written by rename, which updates the
  directory's mtime: one ``stat`` per container per scrape) or when init exits;
- a pidfd of init: one ``poll()`` over all of them tells which inits exited since the last
  scrape (a restart inside the container, a stop, a crash), without reading /proc per container;
- a :class:`lxcone.cgroups.StatsReader` (cgroup files opened once, re-read with ``pread``) and
  one kept freezer file.

A container whose entry disappears is dropped and its fds closed; one whose init changed is
rebuilt (a stop + start recreates its cgroups: fds on the old ones would read ENODEV). A
container vanishing in the middle of a scrape is skipped and counted in
``lxcone_exporter_collect_errors_total{kind="vanished"}``; it never fails the scrape.

Measured cost per container per scrape of the served process (hybrid v1 host, one NIC each, see
docs/exporter.md): 92 us at 100 containers, 91-93 us at 500, of which at 500 the kernel takes
~30 us for the kept cgroup files and ~15 us for /proc/<pid>/net/dev; the rest is Python.
Re-reading every record with ``inventory.list_containers`` would add ~60 us, hence the cache.
"""

from __future__ import annotations

import errno
import gc
import operator
import os
import select
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from exporter import exposition
from exporter.exposition import Row, clean_text, label_text
from exporter.metrics import (
    DEPLOY_ID_LABEL,
    ERROR_KINDS,
    K_BUILD,
    K_CPU,
    K_DURATION,
    K_ERRORS,
    K_INFO,
    K_NET_FIRST,
    K_NET_INFO,
    K_NODE,
    K_START,
    K_STATE,
    K_SUCCESS,
    METRICS,
    NET_FIELDS,
    STATES,
    STATS_FIELDS,
    VM_ID_LABEL,
)
from lxcone import procstat
from lxcone.cgroups import StatsReader, fs
from lxcone.monitor import inventory, netdev
from lxcone.runtime import state as rstate

NetDevReader = Callable[[int], dict[str, netdev.NetCounters]]

# A cgroup file that fails with these means the cgroup is gone (removed; kernfs deactivates open
# files with ENODEV): the container stopped or restarted since its reader was built.
_GONE = (errno.ENOENT, errno.ENODEV)
# Out of fds: KeptDir remembers a failed open, so the reader must be rebuilt later.
_NO_FDS = (errno.EMFILE, errno.ENFILE)
# render_chunks() renders the rows of every this many containers while they are still in the CPU
# caches: rendering them all after the scrape went back to ~17k row tuples spread over ~1 MB at
# 500 containers, ~7 us per container more (measured: 4, 16 and 64 tried; 16 was best).
FLUSH_EVERY = 16
# One attrgetter call fetches every Stats field the rows need (in METRICS order from K_CPU).
_STAT_VALUES = operator.attrgetter(*(field for field, _ in STATS_FIELDS))
_STAT_SCALES = tuple(scale for _, scale in STATS_FIELDS)
_K_STATS = slice(K_CPU, K_CPU + len(STATS_FIELDS))
# NetCounters is a NamedTuple in METRICS order, so its values are zipped with the rows.
assert netdev.NetCounters._fields == NET_FIELDS
_K_NET = slice(K_NET_FIRST, K_NET_FIRST + len(NET_FIELDS))


def _version() -> str:
    from exporter import __version__

    return __version__


def boot_time() -> float:
    """btime from /proc/stat (seconds since the epoch); 0.0 if unreadable."""
    try:
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime "):
                    return float(line.split()[1])
    except OSError:
        pass
    return 0.0


# A directory mtime comes from the kernel's coarse clock (one tick, 1-10 ms): a second rename in
# the same tick as the one we saw leaves it unchanged. A record read while its directory changed
# less than this long ago is therefore re-read at the next scrape (git's "racy index" rule).
RACY_NS = 100_000_000


def _dir_key(path: str) -> tuple[int, int] | None:
    try:
        s = os.stat(path)
    except OSError:
        return None
    return (s.st_ino, s.st_mtime_ns)


def _exists(path: str) -> bool:
    try:
        os.stat(path)
    except OSError:
        return False
    return True


class _Tracked:
    """What is kept for one run dir entry between scrapes."""

    __slots__ = ("freezer", "freezer_file", "has_run", "ident", "info", "info_row", "key",
                 "name", "nics", "pid", "pidfd", "reader", "start_time", "state_rows")

    def __init__(self, name: str, key: tuple[int, int] | None) -> None:
        self.name = name
        self.key = key
        self.info: inventory.ContainerInfo | None = None
        self.has_run = False  # an init or exit file exists: stopped, not merely created
        self.ident: tuple[str, dict[str, str]] = ("", {})
        self.info_row: Row = ("", {}, 1)
        # The K_STATE rows for each state the container can be in.
        self.state_rows: dict[str, list[Row]] = {}
        # (label text, labels, info label text, info labels, guest name) per configured NIC.
        self.nics: list[tuple[str, dict[str, str], str, dict[str, str], str]] = []
        self.pid: int | None = None
        self.pidfd: int | None = None
        self.reader: StatsReader | None = None
        self.freezer: fs.KeptDir | None = None
        self.freezer_file = ""
        self.start_time: float | None = None

    def close(self) -> None:
        if self.reader is not None:
            self.reader.close()
            self.reader = None
        if self.freezer is not None:
            self.freezer.close()
            self.freezer = None
        if self.pidfd is not None:
            os.close(self.pidfd)
            self.pidfd = None


def _labels(pairs: list[tuple[str, str]]) -> tuple[str, dict[str, str]]:
    pairs = [(k, clean_text(v)) for k, v in pairs]
    return label_text(pairs), dict(pairs)


class CgroupCollector:
    """A prometheus_client custom collector for the containers of one run dir.

    ``collect()`` builds fresh metric families on every call; ``describe()`` only names them
    (no I/O), so registering does not scan anything. ``render_text()`` is the same data as
    text exposition, without prometheus_client's per-sample formatting, and ``render_chunks()``
    the same text one metric family at a time (the HTTP server's fast path, see exposition.py
    and server.py). Scrapes are serialised by a lock (the kept readers are not
    thread-safe). ``registry``: register there at construction (default: nowhere).
    ``net_dev_reader(pid)`` returns the guest-view NIC counters (tests inject a fake).
    Call ``close()`` to release the kept fds.
    """

    def __init__(self, run_dir: str | os.PathLike[str] = "/run/lxcone", registry=None,
                 net_dev_reader: NetDevReader = netdev.read_net_dev) -> None:
        self.run_dir = os.fspath(run_dir)
        self._read_net_dev = net_dev_reader
        self._lock = threading.Lock()
        self._tracked: dict[str, _Tracked] = {}
        self._by_pidfd: dict[int, str] = {}
        self._poll = select.poll()
        self._errors = dict.fromkeys(ERROR_KINDS, 0)
        self._btime = boot_time()
        self._hz = os.sysconf("SC_CLK_TCK")
        version = clean_text(_version())
        self._build_row: Row = (label_text([("version", version)]), {"version": version}, 1)
        if registry is not None:
            registry.register(self)

    # -- prometheus_client interface ----------------------------------------------------------

    def describe(self) -> Iterator[Metric]:
        """The metric families, without samples (no I/O)."""
        for m in METRICS:
            cls = CounterMetricFamily if m.type == "counter" else GaugeMetricFamily
            yield cls(m.family_name, m.help, unit=m.unit)

    def collect(self) -> Iterator[Metric]:
        """Read everything now and yield fresh families (one per entry of METRICS)."""
        rows = self.scrape()
        for m, family in zip(METRICS, rows, strict=True):
            cls = CounterMetricFamily if m.type == "counter" else GaugeMetricFamily
            fam = cls(m.family_name, m.help, unit=m.unit)
            name = m.name
            for _, labels, value in family:
                fam.add_sample(name, dict(labels), value)
            yield fam

    def render_chunks(self) -> Iterator[str]:
        """Read everything now and yield the text exposition of this collector alone, one
        metric family at a time (the HTTP server compresses each one as it comes)."""
        with self._lock:
            # A scrape allocates some 40 objects per container (rows, Stats, counters) that all
            # die once the text is rendered, so the cyclic GC's passes over them find nothing:
            # they cost ~6 us per container at 500 containers (perf). Cycles made meanwhile are
            # still collected: they stay tracked for the passes after.
            gc_was_enabled = gc.isenabled()
            gc.disable()
            try:
                text = exposition.Renderer()
                text.add(self._scrape(text.add))
                yield from text.chunks()
            finally:
                if gc_was_enabled:
                    gc.enable()

    def render_text(self) -> str:
        """Read everything now and return the text exposition of this collector alone."""
        return "".join(self.render_chunks())

    def close(self) -> None:
        """Close every kept fd (a later scrape reopens what it needs)."""
        with self._lock:
            for name in list(self._tracked):
                self._drop(name)

    @property
    def tracked(self) -> int:
        """How many run dir entries are being tracked (for tests and benchmarks)."""
        return len(self._tracked)

    # -- one scrape -----------------------------------------------------------------------------

    def scrape(self) -> list[list[Row]]:
        """One scrape: a list of rows per entry of METRICS. Never raises for I/O."""
        with self._lock:
            return self._scrape()

    def _scrape(self, flush: Callable[[list[list[Row]]], None] | None = None
                ) -> list[list[Row]]:
        """One scrape's rows. ``flush(rows)``, if given, is called every FLUSH_EVERY containers
        and may take the rows so far (and empty the lists)."""
        t0 = time.perf_counter()
        rows: list[list[Row]] = [[] for _ in METRICS]
        success = 1
        try:
            names = os.listdir(self.run_dir)
        except FileNotFoundError:
            names = []  # no container was ever created on this host
        except OSError:
            names, success = [], 0
        names.sort()
        present = set(names)
        for name in [n for n in self._tracked if n not in present]:
            self._drop(name)
        dead = self._exited()
        counts = dict.fromkeys(STATES, 0)
        for i, name in enumerate(names, 1):
            status = self._sample(name, name in dead, rows, retry=True)
            if status is not None:
                counts[status] += 1
            if flush is not None and i % FLUSH_EVERY == 0:
                flush(rows)
        for s in STATES:
            rows[K_NODE].append((f'state="{s}"', {"state": s}, counts[s]))
        rows[K_SUCCESS].append(("", {}, success))
        for kind in ERROR_KINDS:
            rows[K_ERRORS].append((f'kind="{kind}"', {"kind": kind}, self._errors[kind]))
        rows[K_BUILD].append(self._build_row)
        rows[K_DURATION].append(("", {}, time.perf_counter() - t0))
        return rows

    def _exited(self) -> set[str]:
        """Names of the tracked containers whose init exited since it was tracked."""
        if not self._by_pidfd:
            return set()
        return {self._by_pidfd[fd] for fd, _ in self._poll.poll(0) if fd in self._by_pidfd}

    def _sample(self, name: str, dead: bool, rows: list[list[Row]], retry: bool) -> str | None:
        """Append the rows of one container; return its state, None if it is not exported."""
        t = self._refresh(name, dead)
        if t is None or t.info is None:
            return None
        if t.reader is None:
            status = "stopped" if t.has_run else "created"
            rows[K_INFO].append(t.info_row)
            rows[K_STATE].extend(t.state_rows[status])
            return status
        st = t.reader.read()
        if st.errors:
            if retry and any(e.errno in _GONE for e in st.errors):
                # The cgroup is gone: the container stopped, restarted or was deleted since the
                # last scrape. Look again from scratch; skip it if it is gone for good.
                self._drop(name)
                status = self._sample(name, True, rows, retry=False)
                if status is None:
                    self._errors["vanished"] += 1
                return status
            self._errors["cgroup"] += len(st.errors)
            if any(e.errno in _NO_FDS for e in st.errors):
                t.key = None  # rebuild the reader (and reopen its files) next scrape
        frozen = False
        if t.freezer is not None:
            try:
                text = t.freezer.read(t.freezer_file).strip()
                # v1 freezer.state THAWED/FREEZING/FROZEN, v2 cgroup.freeze 0/1: like
                # Runtime.state, anything but thawed is reported frozen.
                frozen = text not in ("THAWED", "0")
            except OSError:
                self._errors["cgroup"] += 1
        status = "frozen" if frozen else "running"
        rows[K_INFO].append(t.info_row)
        rows[K_STATE].extend(t.state_rows[status])
        ls, ld = t.ident
        if t.start_time is not None:
            rows[K_START].append((ls, ld, t.start_time))
        for family, scale, v in zip(rows[_K_STATS], _STAT_SCALES, _STAT_VALUES(st), strict=True):
            if v is not None:
                family.append((ls, ld, v * scale if scale else v))
        if t.nics:
            self._sample_net(t, rows)
        return status

    def _sample_net(self, t: _Tracked, rows: list[list[Row]]) -> None:
        try:
            counters = self._read_net_dev(t.pid or 0)
        except (OSError, ValueError):
            self._errors["netdev"] += 1
            counters = {}
        for ls, ld, info_ls, info_ld, guest in t.nics:
            rows[K_NET_INFO].append((info_ls, info_ld, 1))
            # Only the NICs LXCoNe configured: a guest may create any number of interfaces in
            # its own netns, which must not become series (bounded cardinality).
            c = counters.get(guest)
            if c is None:
                continue
            for family, v in zip(rows[_K_NET], c, strict=True):
                family.append((ls, ld, v))

    # -- tracking -------------------------------------------------------------------------------

    def _refresh(self, name: str, dead: bool) -> _Tracked | None:
        """The up-to-date tracking entry of ``name``, reloading it if its directory changed or
        its init exited; None when the entry is not (or no longer) a container."""
        base = f"{self.run_dir}/{name}"
        key = _dir_key(base)
        t = self._tracked.get(name)
        if t is not None:
            if t.key == key and key is not None and not dead:
                return t
            self._drop(name)
        if key is None or not _exists(base + "/" + rstate.STATE_FILE):
            return None  # not a container, or being created or deleted right now
        # Racy: changed within the clock tick of this read? Then read it again next time.
        fresh = time.time_ns() - key[1] < RACY_NS
        t = self._tracked[name] = _Tracked(name, None if fresh else key)
        info = inventory.read_container(Path(base))
        if info is None:
            # Unreadable record: counted once per change of its directory, not on every scrape.
            if not fresh:
                self._errors["inventory"] += 1
            return t
        t.info = info
        t.has_run = _exists(base + "/init") or _exists(base + "/exit")
        self._build_labels(t, info)
        if info.running and info.pid is not None:
            self._track_init(t, info)
            if t.pidfd is None and not _exists(base + "/" + rstate.STATE_FILE):
                # Deleted while we read it: not stopped, gone.
                self._drop(name)
                self._errors["vanished"] += 1
                return None
        return t

    def _build_labels(self, t: _Tracked, info: inventory.ContainerInfo) -> None:
        name = clean_text(info.name)
        # Only the canonical spelling is an OpenNebula VM: "one-012" would collide with "one-12".
        vm_id = info.vm_id if info.vm_id is not None and name == f"one-{info.vm_id}" else None
        ident = [(VM_ID_LABEL, str(vm_id))] if vm_id is not None else [(DEPLOY_ID_LABEL, name)]
        t.ident = _labels(ident)
        info_pairs = [*ident, (DEPLOY_ID_LABEL, name)] if vm_id is not None else ident
        ls, ld = _labels(info_pairs)
        t.info_row = (ls, ld, 1)
        states = [_labels([*ident, ("state", s)]) for s in STATES]
        t.state_rows = {cur: [(ls, ld, int(s == cur)) for s, (ls, ld) in
                              zip(STATES, states, strict=True)]
                        for cur in STATES}
        t.nics = []
        for nic in info.nics:
            ls, ld = _labels([*ident, ("interface", nic.guest_name)])
            ils, ild = _labels([*ident, ("interface", nic.guest_name),
                                ("host_interface", nic.host_name)])
            t.nics.append((ls, ld, ils, ild, nic.guest_name))

    def _track_init(self, t: _Tracked, info: inventory.ContainerInfo) -> None:
        pid = info.pid
        assert pid is not None
        init = rstate.read_init(info.ct_dir)
        try:
            pidfd = os.pidfd_open(pid)
        except OSError:
            pidfd = None
        # pidfd first, then the start time: the pidfd then surely refers to this init, not to
        # a process that recycled its pid after read_container() checked it.
        if (pidfd is None or init is None or init.pid != pid
                or not procstat.alive(pid, init.starttime)):
            if pidfd is not None:
                os.close(pidfd)
            t.key = None  # exited meanwhile: report it stopped now, reload next scrape
            t.has_run = True
            return
        t.pid = pid
        t.pidfd = pidfd
        self._by_pidfd[pidfd] = t.name
        self._poll.register(pidfd, select.POLLIN)
        t.start_time = self._btime + init.starttime / self._hz
        t.reader = StatsReader(info.cgroup_paths)
        paths = info.cgroup_paths
        # Same choice as V1Manager._freezer: the v1 freezer, else cgroup.freeze (v2, 5.2+).
        if "freezer" in paths:
            t.freezer, t.freezer_file = fs.KeptDir(paths["freezer"]), "freezer.state"
        elif "unified" in paths:
            t.freezer, t.freezer_file = fs.KeptDir(paths["unified"]), "cgroup.freeze"

    def _drop(self, name: str) -> None:
        t = self._tracked.pop(name, None)
        if t is None:
            return
        if t.pidfd is not None:
            self._poll.unregister(t.pidfd)
            self._by_pidfd.pop(t.pidfd, None)
        t.close()
