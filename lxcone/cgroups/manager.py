"""The factory: choose the implementation once per host, or rebuild it from saved paths."""

from __future__ import annotations

from collections.abc import Mapping

from lxcone.cgroups.base import CgroupManager, check_cgroup_name
from lxcone.cgroups.layout import Layout, detect_layout
from lxcone.cgroups.stats import is_unified_only
from lxcone.cgroups.v1 import V1Manager
from lxcone.cgroups.v2 import V2Manager


def new_manager(parent: str, name: str, layout: Layout | None = None) -> CgroupManager:
    """A manager for cgroup ``<hierarchy>/<parent>/<name>`` in every hierarchy of the host.

    ``parent`` is relative to each hierarchy root ("lxcone", "lxcone-test-1/sub", "" for the
    root itself) and is shared by many containers: destroy() never removes it. ``layout``
    defaults to :func:`detect_layout` (cached). Nothing is created until ``create()``.
    Raises ValueError for a bad parent or name.
    """
    check_cgroup_name(parent, name)
    parent = parent.strip("/")
    layout = layout or detect_layout()
    rel = f"{parent}/{name}" if parent else name
    depth = len(parent.split("/")) if parent else 0
    if layout.mode == "v2":
        if layout.unified is None:
            raise ValueError("Layout: mode 'v2' without a unified mount point")
        return V2Manager(f"{layout.unified}/{rel}", root=layout.unified, parent_depth=depth)
    paths = {ctrl: f"{mountpoint}/{rel}" for ctrl, mountpoint in layout.v1.items()}
    if layout.mode == "hybrid" and layout.unified is not None:
        paths["unified"] = f"{layout.unified}/{rel}"
    return V1Manager(paths, parent_depth=depth)


def from_paths(paths: Mapping[str, str], parent_depth: int | None = None) -> CgroupManager:
    """Rebuild a manager from ``manager.paths`` saved earlier (e.g. JSON in a state file).

    No layout detection: only the "unified" key means pure v2, anything else v1 (hybrid when
    "unified" is there too). ``parent_depth`` (how many directories above the cgroup
    remove_parent_if_empty() may remove) defaults to 1. Raises ValueError for malformed paths.
    """
    if not paths:
        raise ValueError("from_paths: empty paths")
    for key, path in paths.items():
        if not isinstance(path, str) or not path.startswith("/") or "\0" in path:
            raise ValueError(f"from_paths: {key!r} must map to an absolute path, got {path!r}")
    if is_unified_only(paths):
        return V2Manager(paths["unified"], parent_depth=parent_depth)
    return V1Manager(paths, parent_depth=parent_depth)
