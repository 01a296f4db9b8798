"""The CgroupManager interface and the helpers both implementations share.

The interface follows opencontainers/cgroups' ``Manager``: one narrow protocol, chosen once per
host by :func:`lxcone.cgroups.new_manager` (v1 and hybrid -> ``V1Manager``, pure v2 ->
``V2Manager``), and rebuilt later from the saved ``paths`` by :func:`lxcone.cgroups.from_paths`.
"""

from __future__ import annotations

import errno
import os
import posixpath
import time
from collections.abc import Callable
from typing import Protocol, runtime_checkable

from lxcone.cgroups import fs
from lxcone.cgroups.errors import CgroupError
from lxcone.cgroups.resources import Resources, Stats

THAWED = "THAWED"
FREEZING = "FREEZING"
FROZEN = "FROZEN"

# Freeze/thaw polling: first re-check after ~20 us, doubling up to 1 ms. Freezing a cgroup of
# sleeping tasks completes in tens of microseconds on 6.x, so a fixed sleep (LXC sleeps 1 s)
# would be almost all waiting; the cap keeps a slow freeze (a task in D state) from spinning.
POLL_FIRST_S = 20e-6
POLL_MAX_S = 1e-3

# Writing a pid to cgroup.procs fails with EINVAL while the task is still in TASK_NEW (between
# clone and wake_up_new_task); runc's WriteCgroupProc retries 5 times. The window is short, so
# we retry faster than runc's 30 ms.
PROCS_WRITE_ATTEMPTS = 5
PROCS_RETRY_S = 1e-3

# destroy(): rmdir fails with EBUSY while tasks or (v1) child cgroups remain, and briefly after
# the last task exited (the kernel unlinks it asynchronously). Back off from 100 us to 50 ms.
RMDIR_FIRST_S = 1e-4
RMDIR_MAX_S = 0.05


@runtime_checkable
class CgroupManager(Protocol):
    """One container cgroup, in every hierarchy of the host.

    ``paths`` maps each v1 controller name ("memory", "cpu", ..., "name=systemd") to its
    directory, and "unified" to the cgroup2 directory (pure v2: the only key; hybrid: next to
    the v1 keys). Persist it (it is plain JSON) and rebuild the manager with ``from_paths``.
    """

    paths: dict[str, str]

    def create(self) -> None:
        """Create the cgroup (and missing parents) in every hierarchy; idempotent.

        v1: cpuset.cpus/mems are copied from the parent into every new, empty directory.
        v2: the needed controllers are enabled in each ancestor's cgroup.subtree_control.
        Raises CgroupError.
        """
        ...

    def create_unified(self) -> None:
        """Create only the cgroup2 directory (pure v2: the whole cgroup); nothing on a pure v1
        host. Idempotent. A child can then be born in it through clone3(CLONE_INTO_CGROUP)
        while create_v1() makes the rest. Raises CgroupError.
        """
        ...

    def create_v1(self) -> None:
        """Create only the v1 directories, what create_unified() leaves (nothing on pure v2);
        create() is both. Idempotent. Raises CgroupError."""
        ...

    def join_files(self) -> list[str]:
        """The v1 ``tasks`` file of every distinct v1 directory ([] on pure v2).

        A new single-threaded task joins the container by writing "0" to each (and is born in
        ``unified_dir()`` through clone3(CLONE_INTO_CGROUP)). Only that form moves a task
        without the kernel's global cgroup_threadgroup_rwsem, which writing a pid to
        cgroup.procs takes and which, after an idle period, waits an RCU grace period: 6-12 ms
        on our VMs (docs/cgroups.md)."""
        ...

    def unified_dir(self) -> str | None:
        """The cgroup2 directory (pure v2, or the unified side of a hybrid host), for
        clone3(CLONE_INTO_CGROUP); None on a pure v1 host."""
        ...

    def apply(self, pid: int) -> None:
        """Move process ``pid`` (all its threads) into the cgroup. Raises CgroupError."""
        ...

    def set(self, res: Resources) -> None:
        """Apply every non-None field of ``res``. Raises ValueError (naming the field) before
        writing anything if a value is impossible or unsupported here; CgroupError on a
        failed write."""
        ...

    def freeze(self, timeout: float = 10.0) -> None:
        """Freeze all tasks; return once FROZEN. Raises TimeoutError after ``timeout`` seconds
        (the cgroup is thawed again first), CgroupError on I/O failure."""
        ...

    def thaw(self, timeout: float = 10.0) -> None:
        """Thaw all tasks; return once THAWED. Raises TimeoutError, CgroupError."""
        ...

    def freezer_state(self) -> str:
        """ "THAWED", "FREEZING" or "FROZEN". Raises CgroupError."""
        ...

    def pids(self) -> list[int]:
        """All pids in the cgroup and its descendants, sorted. Raises CgroupError."""
        ...

    def stats(self) -> Stats:
        """One sample of all counters; never raises for a file: see Stats.errors."""
        ...

    def exists(self) -> bool:
        """True if the cgroup directory exists in at least one hierarchy."""
        ...

    def destroy(self, timeout: float = 5.0) -> None:
        """Remove the cgroup and its child cgroups in every hierarchy; idempotent (ENOENT is
        done). EBUSY is retried with backoff; after ``timeout`` seconds raises CgroupError
        (EBUSY). The shared parent is left alone."""
        ...

    def remove_parent_if_empty(self) -> None:
        """rmdir the parent directories if empty; ENOTEMPTY/EBUSY/ENOENT are ignored."""
        ...


def check_cgroup_name(parent: str, name: str) -> None:
    """Validate a (parent, name) pair for new_manager; raise ValueError."""
    if not name or "/" in name or name in (".", "..") or "\0" in name:
        raise ValueError(f"bad cgroup name {name!r}")
    if parent.startswith("/") or "\0" in parent:
        raise ValueError(f"cgroup parent must be relative to the hierarchy root, got {parent!r}")
    if any(part in ("..", ".") for part in parent.split("/")):
        raise ValueError(f"bad cgroup parent {parent!r}")


def monotonic_deadline(timeout: float) -> float:
    """``time.monotonic()`` plus ``timeout`` seconds."""
    return time.monotonic() + timeout


def mkdir_p(path: str) -> None:
    """Create ``path`` and its missing ancestors (mode 0755). Raises CgroupError."""
    try:
        fs.make_dir(path)
    except CgroupError as e:
        if e.errno != errno.ENOENT:
            raise
        parent = posixpath.dirname(path)
        if parent == path:
            raise
        mkdir_p(parent)
        fs.make_dir(path)


def remove_tree(path: str, deadline: float) -> None:
    """rmdir ``path`` after its child cgroups, retrying EBUSY until ``deadline`` (monotonic).

    ENOENT anywhere means "already gone". Raises CgroupError (EBUSY once the deadline passed).
    """
    delay = RMDIR_FIRST_S
    while True:
        for child in fs.subdirs(path):
            remove_tree(child, deadline)
        try:
            fs.remove_dir(path)
            return
        except CgroupError as e:
            if e.errno == errno.ENOENT:
                return
            # EBUSY: tasks still inside, or a child cgroup was created meanwhile (the loop
            # rescans children); anything else (EPERM, ENOTEMPTY on a non-cgroup dir) is final.
            if e.errno != errno.EBUSY or time.monotonic() >= deadline:
                raise
        time.sleep(min(delay, max(0.0, deadline - time.monotonic())))
        delay = min(delay * 2, RMDIR_MAX_S)


def remove_parents(leaf_dirs: list[str], depth: int) -> None:
    """rmdir up to ``depth`` ancestors of each leaf directory, innermost first, if empty."""
    for leaf in leaf_dirs:
        d = posixpath.dirname(leaf)
        for _ in range(depth):
            try:
                fs.remove_dir(d)
            except CgroupError as e:
                if e.errno in (errno.ENOTEMPTY, errno.EBUSY):
                    break
                if e.errno != errno.ENOENT:
                    raise
            d = posixpath.dirname(d)


def write_pid(procs_file: str, pid: int) -> None:
    """Write ``pid`` to a cgroup.procs file, retrying EINVAL (task in TASK_NEW)."""
    d, name = posixpath.split(procs_file)
    for attempt in range(PROCS_WRITE_ATTEMPTS):
        try:
            fs.write_file(d, name, pid)
            return
        except CgroupError as e:
            if e.errno != errno.EINVAL or attempt == PROCS_WRITE_ATTEMPTS - 1:
                raise
        time.sleep(PROCS_RETRY_S * (attempt + 1))


def poll_until(check: Callable[[], bool], timeout: float) -> bool:
    """Call ``check`` until it returns True (-> True) or ``timeout`` seconds passed (-> False).

    Re-checks after 20 us, 40 us, ... capped at 1 ms: short freezes cost microseconds, long ones
    cost at most one poll per millisecond.
    """
    if check():
        return True
    deadline = time.monotonic() + timeout
    delay = POLL_FIRST_S
    while True:
        now = time.monotonic()
        if now >= deadline:
            return check()
        time.sleep(min(delay, deadline - now))
        if check():
            return True
        delay = min(delay * 2, POLL_MAX_S)


def collect_pids(path: str) -> list[int]:
    """Pids in cgroup ``path`` and all its descendants, sorted and unique.

    A cgroup removed while walking is skipped; the cgroup itself missing raises CgroupError.
    """
    pids: set[int] = set()

    def walk(d: str, top: bool) -> None:
        try:
            pids.update(fs.read_pids(d))
        except CgroupError as e:
            if top or e.errno not in (errno.ENOENT, errno.ENODEV):
                raise
            return
        for child in fs.subdirs(d):
            walk(child, False)

    walk(path, True)
    return sorted(pids)


def distinct(dirs: list[str]) -> list[str]:
    """Directories in order, each once (co-mounted v1 controllers share one)."""
    return list(dict.fromkeys(dirs))


def dir_exists(path: str) -> bool:
    """True if ``path`` is an existing directory."""
    return os.path.isdir(path)
