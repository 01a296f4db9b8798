"""One exclusive flock(2) held for a ``with`` block: the lock every layer uses to serialise
read-modify-write of its state across processes and threads (storage records, a container's
record, one VM's actions). Released when the block ends or the process dies."""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator


@contextlib.contextmanager
def flock(path: str | os.PathLike[str], *, create: bool = False) -> Iterator[None]:
    """Lock ``path``: a directory (nothing is left behind), or with ``create`` a lock file made
    when missing, with its missing parent directories (mode 0700), and kept afterwards
    (unlinking it would race with a waiter)."""
    if create:
        flags = os.O_RDWR | os.O_CREAT | os.O_CLOEXEC
        try:
            fd = os.open(path, flags, 0o600)
        except FileNotFoundError:  # first lock under a new directory: made once, not per call
            os.makedirs(os.path.dirname(os.fspath(path)), mode=0o700, exist_ok=True)
            fd = os.open(path, flags, 0o600)
    else:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)
