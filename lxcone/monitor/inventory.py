"""The containers of one run dir, as cheaply as possible (one state.json + one init file each).

Never raises because of one container: a half-written, vanished or foreign entry is skipped,
since a probe that fails as a whole makes onemonitord drop every VM of the host.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from lxcone.runtime import state as st

# OpenNebula's state sync only knows VMs whose deploy id matches this (protocol doc §5.4).
# Decimal as OpenNebula writes the VM id: ASCII digits, no leading zero, and \Z rather than $
# (which also matches before a trailing newline); lxcone.monitor.rundir.vm_id_of is the same rule.
DEPLOY_ID_RE = re.compile(r"^one-(0|[1-9][0-9]*)\Z")


@dataclass(frozen=True)
class NicInfo:
    host_name: str   # host side of the veth, OpenNebula's NIC/TARGET
    guest_name: str  # inside the container, e.g. eth0


@dataclass(frozen=True)
class ContainerInfo:
    name: str                     # = OpenNebula DEPLOY_ID
    vm_id: int | None             # from one-<id>; None for containers not made by OpenNebula
    running: bool                 # init alive (frozen counts as running; see frozen)
    pid: int | None               # init, host view, when running
    cgroup_paths: dict[str, str]
    nics: tuple[NicInfo, ...]
    ct_dir: Path
    exit: str | None              # how init ended, when not running


def vm_id_of(name: str) -> int | None:
    m = DEPLOY_ID_RE.match(name)
    return int(m.group(1)) if m else None


def list_containers(run_dir: str | os.PathLike[str]) -> list[ContainerInfo]:
    """Every container recorded under ``run_dir`` (sorted by name); [] if there is none."""
    root = Path(run_dir)
    try:
        names = sorted(os.listdir(root))
    except (FileNotFoundError, NotADirectoryError):
        return []
    out = []
    for name in names:
        info = read_container(root / name)
        if info is not None:
            out.append(info)
    return out


def read_container(ct_dir: Path) -> ContainerInfo | None:
    """One container's record, or None when the entry is not (or no longer) a container."""
    try:
        with open(ct_dir / st.STATE_FILE, "rb") as f:
            state = json.loads(f.read())
        spec = state["spec"]
        init = st.read_init(ct_dir)
        exit_ = st.read_exit(ct_dir)
        nics = tuple(NicInfo(n["host_name"], n.get("guest_name", "eth0"))
                     for n in spec.get("nics", ()))
        paths = dict(state["cgroup_paths"])
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None  # being created or deleted right now, or not ours
    running = init is not None and init.alive()
    return ContainerInfo(
        name=ct_dir.name, vm_id=vm_id_of(ct_dir.name), running=running,
        pid=init.pid if running else None, cgroup_paths=paths, nics=nics, ct_dir=ct_dir,
        exit=None if running else exit_,
    )
