"""Which cgroup hierarchies exist on this host, detected once per process.

A host is one of:

- ``v2``: cgroup2 is mounted at the root (``/sys/fs/cgroup``); one hierarchy, controllers listed
  in its ``cgroup.controllers``.
- ``v1``: one cgroup (v1) mount per hierarchy under the root, each carrying one or more
  controllers (``cpu,cpuacct`` co-mounted is common) or a name only (``name=systemd``).
- ``hybrid``: v1 hierarchies plus a cgroup2 mount *below* the root (``/sys/fs/cgroup/unified``),
  usually with no controllers (systemd's "hybrid" mode; this project's own hosts). crun refuses
  it; we handle it as v1 plus a directory in the unified tree (see managers).

Detection reads ``/proc/self/mountinfo`` rather than calling ``statfs``: the stdlib has no statfs
with ``f_type``, and mountinfo gives what statfs cannot, namely which controllers each v1 mount
carries (its super options) and where each hierarchy is mounted.
"""

from __future__ import annotations

import errno
import functools
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from lxcone import mountinfo
from lxcone.cgroups import fs
from lxcone.cgroups.errors import CgroupError

MOUNTINFO = "/proc/self/mountinfo"
DEFAULT_ROOT = "/sys/fs/cgroup"

# cgroup v1 super options that are not controller names (kernel/cgroup/cgroup-v1.c:
# cgroup1_parse_param). "none" is what `mount -t cgroup -o none,name=x` shows.
_V1_NON_CONTROLLER_OPTIONS = frozenset(
    {"rw", "ro", "none", "noprefix", "xattr", "clone_children", "cpuset_v2_mode", "favordynmods"}
)


@dataclass(frozen=True)
class MountEntry:
    """One cgroup or cgroup2 line of mountinfo."""

    mount_point: str
    fstype: str
    super_options: tuple[str, ...]
    root: str = "/"


@dataclass(frozen=True)
class Layout:
    """The cgroup hierarchies of a host.

    ``v1`` maps each v1 controller (and named hierarchy, e.g. ``name=systemd``) to its mount
    point; co-mounted controllers map to the same mount point. ``unified`` is the cgroup2 mount
    point (the root itself in ``v2`` mode) and ``unified_controllers`` what its root's
    ``cgroup.controllers`` offers.
    """

    mode: str
    root: str
    v1: Mapping[str, str] = field(default_factory=dict, hash=False)
    unified: str | None = None
    unified_controllers: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.mode not in ("v1", "v2", "hybrid"):
            raise ValueError(f"Layout.mode: expected 'v1', 'v2' or 'hybrid', got {self.mode!r}")
        object.__setattr__(self, "v1", MappingProxyType(dict(self.v1)))

    def v1_mountpoints(self) -> list[str]:
        """Distinct v1 mount points, in controller order (co-mounted ones once)."""
        return list(dict.fromkeys(self.v1.values()))


def parse_mountinfo(text: str) -> list[MountEntry]:
    """Return the ``cgroup`` and ``cgroup2`` mounts listed in a mountinfo text, in order.

    Pure; malformed lines are skipped (mountinfo is kernel-generated, so a bad line can only be
    a truncated read, and one missing hierarchy is better than no detection at all).
    """
    return [
        MountEntry(mount_point=m.mountpoint, fstype=m.fstype, super_options=m.super_options,
                   root=m.root)
        for m in mountinfo.parse(text)
        if m.fstype in ("cgroup", "cgroup2")
    ]


def _v1_controllers(options: tuple[str, ...]) -> list[str]:
    out = []
    for opt in options:
        if opt in _V1_NON_CONTROLLER_OPTIONS or opt.startswith("release_agent="):
            continue
        out.append(opt)  # a controller, or "name=systemd" for a named hierarchy
    return out


def _under(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def layout_from_mounts(mounts: list[MountEntry], root: str = DEFAULT_ROOT) -> Layout:
    """Build the Layout from mountinfo entries; only mounts at or under ``root`` count.

    Reads ``<unified>/cgroup.controllers`` (an absent file gives no controllers).
    Raises CgroupError(ENOENT) when no cgroup hierarchy is mounted under ``root``.
    """
    root = root.rstrip("/") or "/"
    # A later mount on the same mount point hides the earlier one, as in the VFS.
    visible: dict[str, MountEntry] = {}
    for m in mounts:
        if _under(m.mount_point, root):
            visible[m.mount_point] = m

    unified: str | None = None
    v1: dict[str, str] = {}
    for m in visible.values():
        if m.fstype == "cgroup2":
            # The root itself wins over a cgroup2 mount below it (v2 with a leftover unified/).
            if unified is None or m.mount_point == root:
                unified = m.mount_point
            continue
        for ctrl in _v1_controllers(m.super_options):
            # Bind mounts of the same hierarchy: keep the first (shortest is not better).
            v1.setdefault(ctrl, m.mount_point)

    if unified == root:
        # Pure v2. v1 named hierarchies mounted inside it (old systemd in a container) are not
        # ours to manage.
        mode, v1 = "v2", {}
    elif v1:
        mode = "hybrid" if unified is not None else "v1"
    elif unified is not None:
        # Only a cgroup2 mount below the root and no v1 controllers: it is the host's only
        # hierarchy, so manage it as v2.
        mode = "v2"
    else:
        raise CgroupError(errno.ENOENT, root, "detect cgroup hierarchies under")

    controllers: frozenset[str] = frozenset()
    if unified is not None:
        try:
            controllers = frozenset(fs.read_file(unified, "cgroup.controllers").split())
        except CgroupError:
            controllers = frozenset()
    return Layout(mode=mode, root=root, v1=v1, unified=unified, unified_controllers=controllers)


@functools.cache
def detect_layout(root: str = DEFAULT_ROOT, mountinfo: str | None = None) -> Layout:
    """Detect the host's cgroup layout under ``root``; cached per (root, mountinfo) for the process.

    ``mountinfo`` is the *text* of a mountinfo file (tests pass fake trees); None reads
    ``/proc/self/mountinfo``. Raises CgroupError when nothing is mounted under ``root``.
    """
    if mountinfo is None:
        with open(MOUNTINFO, encoding="utf-8", errors="surrogateescape") as f:
            mountinfo = f.read()
    return layout_from_mounts(parse_mountinfo(mountinfo), root)
