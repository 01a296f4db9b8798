"""Helpers for stats collection: read one file, record a failure in ``Stats.errors``, go on.

"Stats never fail as a whole" (opencontainers/cgroups fs2.Stats): each helper returns None when
its file could not be read or parsed and appends the CgroupError to ``st.errors`` -- except for
``optional`` files whose absence (ENOENT) only means "this kernel or config does not have it".
"""

from __future__ import annotations

import errno
from collections.abc import Iterable

from lxcone.cgroups import fs
from lxcone.cgroups.errors import CgroupError
from lxcone.cgroups.resources import Stats


def read_opt(d: fs.Dir, name: str, st: Stats, optional: bool = False) -> str | None:
    """Read a file; on failure record the error (unless optional and absent) and return None."""
    try:
        # KeptDir first: this is the StatsReader hot path.
        return d.read(name) if type(d) is fs.KeptDir else fs.read_file(d, name)
    except CgroupError as e:
        if not (optional and e.errno == errno.ENOENT):
            st.errors.append(e)
        return None


def uint_opt(d: fs.Dir, name: str, st: Stats, optional: bool = False) -> int | None:
    """Read a single unsigned value (``max`` gives None); None also on a recorded failure."""
    text = read_opt(d, name, st, optional)
    if text is None:
        return None
    s = text.strip()
    if s.isascii() and s.isdigit():
        return int(s)
    try:
        return fs.parse_uint(text, fs.path_of(d, name))
    except CgroupError as e:
        st.errors.append(e)
        return None


def keyed_opt(
    d: fs.Dir,
    name: str,
    st: Stats,
    keys: Iterable[str] | None = None,
    optional: bool = False,
) -> dict[str, int] | None:
    """Read a flat keyed file (only ``keys`` if given); None on a recorded failure."""
    text = read_opt(d, name, st, optional)
    if text is None:
        return None
    try:
        path = fs.path_of(d, name)
        if keys is None:
            return fs.parse_keyed(text, path)
        return fs.parse_keyed_subset(text, path, keys)
    except CgroupError as e:
        st.errors.append(e)
        return None


def working_set(usage: int | None, inactive_file: int | None) -> int | None:
    """usage - inactive_file floored at 0 (inactive file pages are the first to be reclaimed,
    so they are not part of what the container needs; cAdvisor/kubelet use the same figure)."""
    if usage is None:
        return None
    if inactive_file is None:
        return usage
    return max(0, usage - inactive_file)
