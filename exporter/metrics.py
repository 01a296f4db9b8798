"""Every metric the exporter exposes, in one table: names, types, units, labels and sources.

The collector, ``describe()``, the docs table test and the dashboard test all read this table, so
a metric cannot be exposed without being documented, nor referenced by the dashboard without
being exposed. Naming follows the research notes (§1.3): the ``lxcone_`` prefix, cAdvisor's
suffixes (dashboards port with a rename), base units, ``_total`` on counters, names in ``_info``.

Identity: every per-container series carries ``one_vm_id`` (OpenNebula's own label, so
``opennebula_*`` series join on it) for containers named ``one-<N>``. A container with any
other name (started with ``lxcone run``, not by OpenNebula) carries ``deploy_id=<name>``
instead: its identity is unique and it cannot collide with a VM id (``one_vm_id`` is absent, not
empty). ``lxcone_container_info`` carries both for OpenNebula containers.
"""

from __future__ import annotations

from dataclasses import dataclass

PREFIX = "lxcone_"

#: The identity label of OpenNebula containers, and the fallback for all others.
VM_ID_LABEL = "one_vm_id"
DEPLOY_ID_LABEL = "deploy_id"

#: Values of the ``state`` label (lxcone.runtime's statuses; bounded).
STATES = ("created", "running", "frozen", "stopped")
#: Values of the ``kind`` label of lxcone_exporter_collect_errors_total (bounded).
ERROR_KINDS = ("inventory", "cgroup", "netdev", "vanished")


@dataclass(frozen=True)
class MetricDef:
    """One exposed metric family.

    ``name`` is the exposition name (counters end in ``_total``); ``labels`` are the labels
    besides the container identity (``per_container``) or all labels otherwise.
    """

    name: str
    type: str  # "counter" | "gauge"
    help: str
    unit: str
    labels: tuple[str, ...]
    source: str
    per_container: bool = True

    @property
    def family_name(self) -> str:
        """The name prometheus_client's CounterMetricFamily wants (without ``_total``)."""
        return self.name[: -len("_total")] if self.type == "counter" else self.name


def _c(name: str, help_: str, unit: str, source: str, labels: tuple[str, ...] = ()) -> MetricDef:
    return MetricDef(PREFIX + name, "counter", help_, unit, labels, source)


def _g(name: str, help_: str, unit: str, source: str, labels: tuple[str, ...] = ()) -> MetricDef:
    return MetricDef(PREFIX + name, "gauge", help_, unit, labels, source)


_NET = "guest /proc/<init>/net/dev, configured NICs only"

# The order is the exposition order. The collector indexes rows by position in this tuple; the
# K_* constants below name those positions.
METRICS: tuple[MetricDef, ...] = (
    _g("container_info", "Container identity; always 1. deploy_id is the OpenNebula DEPLOY_ID "
       "(the container name).", "", "run dir", (DEPLOY_ID_LABEL,)),
    _g("container_state", "1 for the container's current state, 0 for the others.", "",
       "run dir init/exit files, freezer", ("state",)),
    _g("container_start_time_seconds", "When the container's current init started, seconds "
       "since the epoch.", "seconds", "/proc/<init>/stat starttime + btime"),
    _c("container_cpu_usage_seconds_total", "CPU time consumed by all tasks of the container.",
       "seconds", "v1 cpuacct.usage; v2 cpu.stat usage_usec"),
    _c("container_cpu_user_seconds_total", "CPU time spent in user mode.", "seconds",
       "v1 cpuacct.usage_user (cpuacct.stat); v2 cpu.stat user_usec"),
    _c("container_cpu_system_seconds_total", "CPU time spent in kernel mode.", "seconds",
       "v1 cpuacct.usage_sys (cpuacct.stat); v2 cpu.stat system_usec"),
    _c("container_cpu_cfs_periods_total", "Elapsed CFS enforcement periods (only counted while a "
       "CPU quota is set).", "", "cpu.stat nr_periods"),
    _c("container_cpu_cfs_throttled_periods_total", "CFS periods in which the container was "
       "throttled.", "", "cpu.stat nr_throttled"),
    _c("container_cpu_cfs_throttled_seconds_total", "Total time the container was throttled.",
       "seconds", "v1 cpu.stat throttled_time; v2 throttled_usec"),
    _g("container_memory_usage_bytes", "Memory charged to the container (page cache included).",
       "bytes", "v1 memory.usage_in_bytes; v2 memory.current"),
    _g("container_memory_working_set_bytes", "Usage minus inactive file pages (cAdvisor's "
       "working set).", "bytes", "usage - memory.stat (total_)inactive_file"),
    _g("container_memory_rss_bytes", "Anonymous memory.", "bytes",
       "v1 memory.stat total_rss; v2 anon"),
    _g("container_memory_cache_bytes", "Page cache memory.", "bytes",
       "v1 memory.stat total_cache; v2 file"),
    _g("container_memory_swap_bytes", "Swap used (absent without swap accounting).", "bytes",
       "v1 memsw.usage - usage; v2 memory.swap.current"),
    _g("container_spec_memory_limit_bytes", "Memory limit (absent when unlimited).", "bytes",
       "v1 memory.limit_in_bytes; v2 memory.max"),
    _c("container_oom_events_total", "Processes killed by the OOM killer in the container.", "",
       "v1 memory.oom_control oom_kill; v2 memory.events oom_kill"),
    _g("container_tasks", "Tasks (processes and threads) in the container.", "",
       "pids.current"),
    _g("container_spec_tasks_limit", "Task limit (absent when unlimited).", "", "pids.max"),
    _c("container_fs_reads_bytes_total", "Bytes read from block devices (all devices).",
       "bytes", "v1 blkio.throttle.io_service_bytes(_recursive); v2 io.stat rbytes"),
    _c("container_fs_writes_bytes_total", "Bytes written to block devices (all devices).",
       "bytes", "v1 blkio.throttle.io_service_bytes(_recursive); v2 io.stat wbytes"),
    _c("container_fs_reads_total", "Read operations on block devices (all devices).", "",
       "v1 blkio.throttle.io_serviced(_recursive); v2 io.stat rios"),
    _c("container_fs_writes_total", "Write operations on block devices (all devices).", "",
       "v1 blkio.throttle.io_serviced(_recursive); v2 io.stat wios"),
    _g("container_network_info", "A container NIC; always 1. interface is the name inside the "
       "container, host_interface the host-side veth (OpenNebula's NIC TARGET).", "",
       "state.json NICs", ("interface", "host_interface")),
    _c("container_network_receive_bytes_total", "Bytes received by the container on this NIC.",
       "bytes", _NET, ("interface",)),
    _c("container_network_receive_packets_total", "Packets received by the container.", "",
       _NET, ("interface",)),
    _c("container_network_receive_errors_total", "Receive errors.", "", _NET, ("interface",)),
    _c("container_network_receive_packets_dropped_total", "Received packets dropped.", "",
       _NET, ("interface",)),
    _c("container_network_transmit_bytes_total", "Bytes sent by the container on this NIC.",
       "bytes", _NET, ("interface",)),
    _c("container_network_transmit_packets_total", "Packets sent by the container.", "",
       _NET, ("interface",)),
    _c("container_network_transmit_errors_total", "Transmit errors.", "", _NET, ("interface",)),
    _c("container_network_transmit_packets_dropped_total", "Transmitted packets dropped.", "",
       _NET, ("interface",)),
    MetricDef(PREFIX + "node_containers", "gauge", "Containers in the run dir, by state.", "",
              ("state",), "run dir", per_container=False),
    MetricDef(PREFIX + "exporter_scrape_duration_seconds", "gauge", "Time this scrape spent "
              "reading the run dir, cgroups and /proc, and rendering the rows read meanwhile.",
              "seconds", (), "exporter",
              per_container=False),
    MetricDef(PREFIX + "exporter_scrape_success", "gauge", "0 if the run dir could not be "
              "listed (containers are then missing from this scrape), else 1.", "", (),
              "exporter", per_container=False),
    MetricDef(PREFIX + "exporter_collect_errors_total", "counter", "Read failures since the "
              "exporter started: inventory (unreadable record), cgroup (one stat file), netdev "
              "(/proc/<init>/net/dev), vanished (container gone mid-scrape, skipped).", "",
              ("kind",), "exporter", per_container=False),
    MetricDef(PREFIX + "exporter_build_info", "gauge", "The exporter's version; always 1.", "",
              ("version",), "exporter", per_container=False),
)

BY_NAME = {m.name: m for m in METRICS}
_INDEX = {m.name[len(PREFIX):]: i for i, m in enumerate(METRICS)}

K_INFO = _INDEX["container_info"]
K_STATE = _INDEX["container_state"]
K_START = _INDEX["container_start_time_seconds"]
K_CPU = _INDEX["container_cpu_usage_seconds_total"]
K_NET_INFO = _INDEX["container_network_info"]
K_NET_FIRST = _INDEX["container_network_receive_bytes_total"]
K_NODE = _INDEX["node_containers"]
K_DURATION = _INDEX["exporter_scrape_duration_seconds"]
K_SUCCESS = _INDEX["exporter_scrape_success"]
K_ERRORS = _INDEX["exporter_collect_errors_total"]
K_BUILD = _INDEX["exporter_build_info"]

#: (Stats field, scale) in METRICS order from K_CPU: one series per container when not None.
#: Scale converts to base units (ns -> s).
STATS_FIELDS: tuple[tuple[str, float | None], ...] = (
    ("cpu_usage_ns", 1e-9),
    ("cpu_user_ns", 1e-9),
    ("cpu_system_ns", 1e-9),
    ("cpu_nr_periods", None),
    ("cpu_nr_throttled", None),
    ("cpu_throttled_ns", 1e-9),
    ("memory_usage_bytes", None),
    ("memory_working_set_bytes", None),
    ("memory_rss_bytes", None),
    ("memory_cache_bytes", None),
    ("memory_swap_bytes", None),
    ("memory_limit_bytes", None),
    ("oom_events", None),
    ("pids_current", None),
    ("pids_limit", None),
    ("io_read_bytes", None),
    ("io_write_bytes", None),
    ("io_read_ops", None),
    ("io_write_ops", None),
)
assert METRICS[K_CPU + len(STATS_FIELDS)].name == PREFIX + "container_network_info"

#: NetCounters fields in METRICS order from K_NET_FIRST.
NET_FIELDS = ("rx_bytes", "rx_packets", "rx_errors", "rx_dropped",
              "tx_bytes", "tx_packets", "tx_errors", "tx_dropped")
assert METRICS[K_NET_FIRST + len(NET_FIELDS)].name == PREFIX + "node_containers"


def label_names() -> set[str]:
    """Every label name the exporter puts on its series."""
    out = {VM_ID_LABEL, DEPLOY_ID_LABEL}
    for m in METRICS:
        out.update(m.labels)
    return out
