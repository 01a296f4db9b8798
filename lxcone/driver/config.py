"""Driver configuration: built-in defaults <- the operator's TOML file <- fixed keys.

The file lives with the remotes (``remotes/etc/vmm/lxcone/lxcone.toml``, copied to every host by
OpenNebula); every key is documented in the shipped sample. Unknown keys and wrong types are
errors: a typo must not silently fall back to a default.
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class DriverConfig:
    run_dir: str = "/run/lxcone"                     # runtime state of the containers
    cgroup_parent: str = "lxcone"                    # relative to each cgroup hierarchy root
    datastores: str = "/var/lib/one/datastores"      # OpenNebula's DATASTORE_LOCATION on hosts
    host_netns: str | None = None                    # netns holding the bridges; None = the host's
    cpu_period_us: int = 100_000                     # CFS period for the CPU quota (CPU x period)
    default_swap_mb: int = 0                         # swap allowed beyond MEMORY (LXC_SWAP wins)
    vcpu_pinning: bool = True                        # VCPU -> cpuset of that many CPUs
    shutdown_timeout_s: float = 120.0                # graceful shutdown, then the action fails
    stop_signal: str = "SIGPWR"                      # what makes the guest's init power off
    unprivileged: bool = True                        # default for VMs without LXC_UNPRIVILEGED
    id_map_host_uid: int = 100_000                   # container uid 0 on the host
    id_map_host_gid: int = 100_000
    id_map_size: int = 65_536
    agent: bool = True                               # actions go through the resident agent
    agent_group: str = ""                            # group (besides root) that may use it


# Keys an operator file may not change: they are part of the contract with OpenNebula.
FIXED: dict[str, Any] = {}

DEFAULT_PATH = "../../etc/vmm/lxcone/lxcone.toml"  # relative to remotes/vmm/lxcone/


def load_config(path: str | os.PathLike[str] | None) -> DriverConfig:
    """Defaults, overridden by the TOML file at ``path`` when it exists. Raises ValueError
    naming the file and the key for unknown keys or wrong types."""
    values: dict[str, Any] = {}
    if path is not None and Path(path).exists():
        try:
            with open(path, "rb") as f:
                values = tomllib.load(f)
        except tomllib.TOMLDecodeError as exc:
            raise ValueError(f"{path}: {exc}") from None
    known = {f.name: f for f in fields(DriverConfig)}
    for key, value in values.items():
        if key not in known:
            raise ValueError(f"{path}: unknown key {key!r}")
        if key in FIXED:
            raise ValueError(f"{path}: {key!r} cannot be changed")
        default = getattr(DriverConfig, key)
        expected = type(default) if default is not None else str
        ok = isinstance(value, expected) and isinstance(value, bool) == (expected is bool)
        if expected is float and isinstance(value, int) and not isinstance(value, bool):
            ok, values[key] = True, float(value)  # "timeout = 5" means 5.0
        if not ok:
            raise ValueError(f"{path}: {key!r} must be a {expected.__name__}, got {value!r}")
    return DriverConfig(**{**values, **FIXED})
