"""/proc/<pid>: what tells a live process from a zombie or a recycled pid, and whether an init
can receive a signal.

One reader for the runtime's container records, the storage daemon records, the probes and the
exporter. Standard library only, since the probes import it on every run.
"""

from __future__ import annotations

import errno
import os

# ESRCH/EINVAL: /proc/<pid>/stat of a process that is exiting.
_GONE = frozenset({errno.ENOENT, errno.ESRCH, errno.EINVAL})


def pid_stat(pid: int) -> tuple[bytes, int] | None:
    """(state letter, starttime in clock ticks since boot), or None if the pid is gone."""
    try:
        fd = os.open(f"/proc/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise
    try:
        # comm (field 2) may contain spaces and ')': split after the last ')'
        rest = data[data.rindex(b")") + 2:].split()
        return rest[0], int(rest[19])
    except (ValueError, IndexError):
        return None


def live_starttime(pid: int) -> int | None:
    """The starttime of ``pid``, None if it is gone or a zombie."""
    st = pid_stat(pid)
    return None if st is None or st[0] in (b"Z", b"X") else st[1]


def alive(pid: int, starttime: int) -> bool:
    """True if this very process (not a recycled pid) still runs and is not a zombie."""
    return live_starttime(pid) == starttime


def receives(pid: int, sig: int) -> bool | None:
    """Whether the init ``pid`` of a pid namespace gets ``sig`` sent from outside; None if the
    pid is gone.

    Such an init only receives the signals it handles or blocks (and SIGKILL/SIGSTOP); the
    kernel drops any other (sig_task_ignored). busybox init blocks its stop signals a few
    hundred microseconds after exec, so a stop right after a start could be lost. Receives
    means: ``sig`` in SigCgt or SigBlk, or init asleep in sigtimedwait (which unblocks the
    awaited signals while it waits: busybox's idle state)."""
    try:
        with open(f"/proc/{pid}/status", "rb") as f:
            fields = dict(line.split(b":", 1) for line in f if b":" in line)
        with open(f"/proc/{pid}/wchan", "rb") as f:
            waiting = b"sigtimedwait" in f.read()
    except OSError as e:
        if e.errno in _GONE:
            return None
        raise
    masks = int(fields.get(b"SigBlk", b"0"), 16) | int(fields.get(b"SigCgt", b"0"), 16)
    return bool(masks & 1 << (sig - 1)) or waiting
