"""Error types of the cgroup layer.

Every failing cgroupfs operation raises :class:`CgroupError`, an :class:`OSError` that carries the
errno, the absolute path of the file or directory, the operation (``read``, ``write``, ``open``,
``mkdir``, ``rmdir``, ...) and, for writes, the value written::

    [Errno 22] Invalid argument: write '12x' to /sys/fs/cgroup/memory/lx/one-1/memory.limit_in_bytes

Like a plain ``OSError(errno, ...)``, a ``CgroupError`` is also an instance of the matching builtin
subclass (``FileNotFoundError`` for ENOENT, ``PermissionError`` for EPERM/EACCES, ...), so callers
can write ``except FileNotFoundError`` without knowing this module.

:class:`CgroupParseError` is a ``CgroupError`` with errno ``EINVAL``: the file was read but its
content is not what the kernel documents. It carries the path and the offending content. It is a
``CgroupError`` (not a ``ValueError``) on purpose: it comes from the filesystem, not from the
caller, and ``Stats.errors`` can then hold a single type. ``ValueError`` is reserved for invalid
arguments (see ``Resources.validate``).
"""

from __future__ import annotations

import errno as _errno
import os


class CgroupError(OSError):
    """An ``OSError`` from a cgroupfs operation: errno, path, operation and value written."""

    op: str
    value: str | None

    def __new__(cls, err: int, path: str, op: str = "", value: str | None = None) -> CgroupError:
        # Pick the subclass that also derives from the builtin errno subclass, as OSError does
        # for itself (OSError only remaps when instantiated as OSError exactly).
        sub = _ERRNO_SUBCLASS.get(err, cls) if cls is CgroupError else cls
        return OSError.__new__(sub, err, os.strerror(err), path)

    def __init__(self, err: int, path: str, op: str = "", value: str | None = None) -> None:
        # OSError.__new__ already filled errno/strerror/filename; keep ours next to them.
        self.op = op
        self.value = value

    def __reduce__(self) -> tuple[type, tuple[int, str, str, str | None]]:
        # CgroupError.__new__ picks the errno subclass again on unpickling.
        return (CgroupError, (self.errno, self.filename, self.op, self.value))

    def __str__(self) -> str:
        head = f"[Errno {self.errno}] {self.strerror}"
        if self.value is not None:
            return f"{head}: {self.op} {self.value!r} to {self.filename}"
        if self.op:
            return f"{head}: {self.op} {self.filename}"
        return f"{head}: {self.filename}"


class CgroupParseError(CgroupError):
    """A cgroup file whose content could not be parsed (errno ``EINVAL``).

    ``filename`` is the file's path, ``content`` the text read (truncated to 200 characters in the
    message) and ``reason`` a short explanation.
    """

    content: str
    reason: str

    def __new__(cls, path: str, content: str, reason: str = "") -> CgroupParseError:
        return OSError.__new__(cls, _errno.EINVAL, os.strerror(_errno.EINVAL), path)

    def __init__(self, path: str, content: str, reason: str = "") -> None:
        super().__init__(_errno.EINVAL, path, "parse", None)
        self.content = content
        self.reason = reason

    def __reduce__(self) -> tuple[type, tuple[str, str, str]]:  # type: ignore[override]
        return (CgroupParseError, (self.filename, self.content, self.reason))

    def __str__(self) -> str:
        shown = self.content if len(self.content) <= 200 else self.content[:200] + "..."
        why = f" ({self.reason})" if self.reason else ""
        return f"cannot parse {self.filename}: {shown!r}{why}"


_ERRNO_SUBCLASS: dict[int, type[CgroupError]] = {}


def _register_subclasses() -> None:
    # The errno -> builtin subclass table of PEP 3151, restricted to errnos a cgroupfs call can
    # return. Classes are published in this module's namespace so that pickling by name works.
    table: dict[type[OSError], tuple[int, ...]] = {
        FileNotFoundError: (_errno.ENOENT,),
        FileExistsError: (_errno.EEXIST,),
        PermissionError: (_errno.EPERM, _errno.EACCES),
        ProcessLookupError: (_errno.ESRCH,),
        InterruptedError: (_errno.EINTR,),
        BlockingIOError: (_errno.EAGAIN,),
        NotADirectoryError: (_errno.ENOTDIR,),
        IsADirectoryError: (_errno.EISDIR,),
        TimeoutError: (_errno.ETIMEDOUT,),
    }
    for builtin, errnos in table.items():
        name = "Cgroup" + builtin.__name__
        sub = type(name, (CgroupError, builtin), {"__module__": __name__})
        globals()[name] = sub
        for err in errnos:
            _ERRNO_SUBCLASS[err] = sub


_register_subclasses()
