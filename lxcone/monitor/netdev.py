"""Network counters as the guest sees them, from /proc/<init pid>/net/dev.

That file shows the network namespace of the process, so it gives the container's own view
(rx = what the guest received) without joining anything, finding host-side veths, or swapping
their rx/tx; one read per container.
"""

from __future__ import annotations

from dataclasses import dataclass

from lxcone.monitor.procfs import net_dev_fields


@dataclass(frozen=True)
class NetCounters:
    rx_bytes: int
    rx_packets: int
    rx_errors: int
    rx_dropped: int
    tx_bytes: int
    tx_packets: int
    tx_errors: int
    tx_dropped: int


def parse_net_dev(text: str) -> dict[str, NetCounters]:
    """Parse /proc/net/dev (two header lines, then ``name: 16 counters``)."""
    return {
        name: NetCounters(int(v[0]), int(v[1]), int(v[2]), int(v[3]), int(v[8]), int(v[9]),
                          int(v[10]), int(v[11]))
        for name, v in net_dev_fields(text).items()
    }


def read_net_dev(pid: int, include_lo: bool = False) -> dict[str, NetCounters]:
    """The interfaces of the netns of ``pid``; {} if the process is gone."""
    try:
        with open(f"/proc/{pid}/net/dev") as f:
            text = f.read()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    counters = parse_net_dev(text)
    if not include_lo:
        counters.pop("lo", None)
    return counters
