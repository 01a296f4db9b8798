"""StatsReader: the monitoring fast path over kept file descriptors.

``CgroupManager.stats()`` opens, reads and closes every file (fine for a one-off ``lxcone
stats``). A monitor that samples every container every few seconds keeps a StatsReader per
container instead: files are opened once (``O_RDONLY|O_CLOEXEC``, relative to a kept directory
fd) and each :meth:`StatsReader.read` is one ``pread(fd, 4096, 0)`` per file plus parsing. Same
parsers as the managers (the v1 subsystem classes and the v2 ``stat_*`` functions), so the two
paths cannot disagree.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping

from lxcone.cgroups import fs, v1, v2
from lxcone.cgroups.base import CgroupManager
from lxcone.cgroups.collect import read_opt
from lxcone.cgroups.resources import Stats

# Sampling groups. "usage" is the cheap pair a high-frequency monitor needs (cpu_usage_ns and
# memory_usage_bytes: 2 files on v1 and v2). "memory_stat" is separate because memory.stat alone
# costs more kernel time than all other cpu and memory files together.
GROUPS = ("usage", "cpu", "memory", "memory_stat", "pids", "io")
DEFAULT_GROUPS = ("cpu", "memory", "memory_stat", "pids", "io")


def is_unified_only(paths: Mapping[str, str]) -> bool:
    """True if ``paths`` describe a pure v2 cgroup (only the "unified" key)."""
    return set(paths) == {"unified"}


class StatsReader:
    """Re-reads one cgroup's stat files through fds opened once.

    ``source`` is a CgroupManager or its ``paths`` dict; ``groups`` selects what to sample
    among GROUPS (fewer groups = fewer preads): "usage" (cpu_usage_ns and memory_usage_bytes
    only: the fast path), "cpu", "memory" (usage, limit, swap, oom), "memory_stat" (working
    set, rss, cache: memory.stat is the most expensive file), "pids", "io". :meth:`read` never
    raises for I/O: a vanished cgroup gives a Stats with ``errors`` (ENODEV/ENOENT) and the
    fields it could still read. Not thread-safe; use one reader per thread.
    """

    def __init__(
        self, source: CgroupManager | Mapping[str, str], groups: Iterable[str] = DEFAULT_GROUPS
    ) -> None:
        paths: Mapping[str, str] = source.paths if isinstance(source, CgroupManager) else source
        wanted = tuple(groups)
        for g in wanted:
            if g not in GROUPS:
                raise ValueError(f"unknown stats group {g!r} (expected some of {GROUPS})")
        self._dirs: dict[str, fs.KeptDir] = {}
        self._plan: list[tuple[Callable[[fs.Dir, Stats], None], fs.KeptDir]] = []
        if is_unified_only(paths):
            kd = self._kept(paths["unified"])
            # Read once: a controller enabled later needs a new reader, as do new files.
            probe = Stats()
            text = read_opt(paths["unified"], "cgroup.controllers", probe)
            ctrls = None if text is None else set(text.split())
            v2_steps = set().union(*(v2.STAT_GROUPS[g] for g in wanted))
            for fn, ctrl in v2.STAT_STEPS:
                if fn in v2_steps and (ctrl is None or ctrls is None or ctrl in ctrls):
                    self._plan.append((fn, kd))
        else:
            v1_steps = set().union(*(v1.STAT_GROUPS[g] for g in wanted))
            for name, method in v1.STAT_STEPS:
                if (name, method) in v1_steps and name in paths:
                    fn = getattr(v1.subsystem(name), method)
                    self._plan.append((fn, self._kept(paths[name])))

    def _kept(self, path: str) -> fs.KeptDir:
        kd = self._dirs.get(path)
        if kd is None:
            kd = self._dirs[path] = fs.KeptDir(path)
        return kd

    def read(self) -> Stats:
        """One sample. Never raises for I/O; failures are in ``Stats.errors``."""
        st = Stats()
        for fn, kd in self._plan:
            fn(kd, st)
        return st

    def close(self) -> None:
        """Close all fds (a later read() reopens them)."""
        for kd in self._dirs.values():
            kd.close()

    def __enter__(self) -> StatsReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
