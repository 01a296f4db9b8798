"""Replace a small file atomically: write a temp file beside it, then rename over it.

Shared by every layer that keeps state on disk (runtime records, storage records, probe state).
Imports only ``os``: the monitoring probes load it on every run.
"""

from __future__ import annotations

import os


def write_atomic(path: str | os.PathLike[str], data: bytes, mode: int = 0o600) -> None:
    """Readers see the old content or the new one, never a torn file; the file gets exactly
    ``mode`` (whatever the umask). On failure (ENOSPC...) the temp file is removed, the old
    content stays, and the OSError is raised."""
    path = os.fspath(path)
    tmp = f"{path}.{os.getpid()}.tmp"  # per process: two writers never share a temp file
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC | os.O_NOFOLLOW,
                     mode)
        try:
            write_all(fd, data)
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except OSError:
        try:  # noqa: SIM105 - contextlib would cost the probes an import
            os.unlink(tmp)
        except OSError:
            pass
        raise


def write_all(fd: int, data: bytes) -> None:
    """os.write until all of ``data`` is written (a write may be short)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
