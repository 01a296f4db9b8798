"""Container networking over netlink: veth pairs, bridges, addresses and routes (pyroute2).

The public surface::

    from lxcone.netns import (NicSpec, Address, NetnsError, host_ipr, add_nic, remove_nic,
                              retire_nic, ensure_bridge, delete_bridge, setup_loopback, nic_exists,
                              open_netns)

``NicSpec``, ``Address``, ``NetnsError`` and ``open_netns`` are stdlib-only. The functions that
talk netlink live in ``lxcone.netns.links``, which imports pyroute2 (~130 ms); it is loaded on
first attribute access (PEP 562), so the driver can build and validate ``NicSpec`` objects
without that cost. See docs/netns.md.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from lxcone.netns.errors import NetnsError
from lxcone.netns.nsfd import netns_path, open_netns
from lxcone.netns.spec import Address, NicSpec, normalize_mac, validate_ifname

if TYPE_CHECKING:
    from lxcone.netns.links import (
        add_nic,
        delete_bridge,
        ensure_bridge,
        host_ipr,
        netns_ipr,
        nic_exists,
        remove_nic,
        retire_nic,
        setup_loopback,
    )

_LAZY = frozenset({
    "add_nic", "delete_bridge", "ensure_bridge", "host_ipr", "netns_ipr", "nic_exists",
    "remove_nic", "retire_nic", "setup_loopback",
})

__all__ = [
    "Address", "NetnsError", "NicSpec", "add_nic", "delete_bridge", "ensure_bridge",
    "host_ipr", "netns_ipr", "netns_path", "nic_exists", "normalize_mac", "open_netns",
    "remove_nic", "retire_nic", "setup_loopback", "validate_ifname",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module("lxcone.netns.links"), name)
        globals()[name] = value  # later lookups skip this hook
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | _LAZY)
