"""Container cgroups on cgroup v1, v2 and hybrid hosts, through one manager interface.

    layout = detect_layout()                  # once per process (cached)
    mgr = new_manager("lxcone", "one-12")     # V1Manager on v1/hybrid, V2Manager on v2
    mgr.create(); mgr.set(Resources(memory_limit_bytes=1 << 30)); mgr.apply(pid)
    state["cgroup"] = mgr.paths               # later, in another process:
    mgr = from_paths(state["cgroup"])

Pure stdlib; from lxcone it imports only the leaf module lxcone.mountinfo. See docs/cgroups.md.
"""

from lxcone.cgroups.base import FREEZING, FROZEN, THAWED, CgroupManager
from lxcone.cgroups.errors import CgroupError, CgroupParseError
from lxcone.cgroups.layout import Layout, detect_layout, layout_from_mounts, parse_mountinfo
from lxcone.cgroups.manager import from_paths, new_manager
from lxcone.cgroups.resources import Resources, Stats
from lxcone.cgroups.stats import StatsReader
from lxcone.cgroups.v1 import V1Manager
from lxcone.cgroups.v2 import V2Manager

__all__ = [
    "FREEZING",
    "FROZEN",
    "THAWED",
    "CgroupError",
    "CgroupManager",
    "CgroupParseError",
    "Layout",
    "Resources",
    "Stats",
    "StatsReader",
    "V1Manager",
    "V2Manager",
    "detect_layout",
    "from_paths",
    "layout_from_mounts",
    "new_manager",
    "parse_mountinfo",
]
