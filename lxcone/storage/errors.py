"""The storage layer's named failures: OSError subclasses carrying the step, the path and errno,
so the driver turns them into one ``ERROR:`` line without knowing which step failed."""

from __future__ import annotations

import contextlib
import errno as _errno
import os
from collections.abc import Iterator


class StorageError(OSError):
    """A storage step failed: ``errno``, ``step`` (the call or phase: ``attach loop``, ``mount``,
    ``qemu-storage-daemon``...) and ``filename`` (the path it was applied to).

    Everything done before the failing step has been undone when this reaches the caller; what
    could not be undone is listed in the exception's notes.
    """

    def __init__(self, err: int, step: str, path: str | None, detail: str | None = None) -> None:
        msg = f"{os.strerror(err)} [{step}]"
        if detail:
            msg += f": {detail}"
        super().__init__(err, msg, path)
        self.step = step
        self.detail = detail

    def __reduce__(self) -> tuple:
        return (type(self), (self.errno, self.step, self.filename, self.detail))

    @classmethod
    def from_oserror(cls, exc: OSError, step: str, path: str | None = None) -> StorageError:
        """Wrap ``exc`` (keeping its errno and message) as the failure of ``step``."""
        if isinstance(exc, StorageError):
            return exc
        err = exc.errno or _errno.EIO
        detail = str(exc) if exc.errno is None or exc.strerror is None else None
        if exc.strerror and exc.strerror != os.strerror(err):
            detail = exc.strerror  # e.g. "Device or resource busy [ioctl(BLKPG_ADD_PARTITION 1)]"
        new = cls(err, step, path if path is not None else exc.filename, detail)
        new.__cause__ = exc
        return new


class DiskBusy(StorageError):
    """The disk's filesystem is in use (EBUSY): it is still mounted; retry, or unmount lazily."""

    def __init__(self, err: int = _errno.EBUSY, step: str = "umount2", path: str | None = None,
                 detail: str | None = None) -> None:
        super().__init__(err, step, path, detail)

    def __reduce__(self) -> tuple:
        return (type(self), (self.errno, self.step, self.filename, self.detail))


@contextlib.contextmanager
def step(name: str, path: str | None) -> Iterator[None]:
    """Turn an OSError raised inside into a StorageError naming the step ``name`` and ``path``
    (a native.MountError keeps its source, type and flags in the message)."""
    try:
        yield
    except StorageError:
        raise
    except OSError as exc:
        if hasattr(exc, "fstype") and hasattr(exc, "flags"):  # lxcone.native.MountError
            from lxcone.native import mount_flags_str

            raise StorageError(exc.errno or _errno.EIO, name, path,
                               f"mount {exc.source} type {exc.fstype} "
                               f"flags {mount_flags_str(exc.flags)}") from exc
        raise StorageError.from_oserror(exc, name, path) from exc


class ToolError(StorageError):
    """An external tool (``resize2fs``, ``xfs_growfs``, ``btrfs``, ``sfdisk``) failed: ``argv``,
    ``returncode`` and its ``stderr`` (also in the message, one line)."""

    MAX_OUTPUT = 2000  # characters of the tool's output kept in the message

    def __init__(self, err: int, step: str, path: str | None, argv: tuple[str, ...] | list[str],
                 returncode: int | None, stderr: str) -> None:
        self.argv = tuple(argv)
        self.returncode = returncode
        self.stderr = stderr
        out = " | ".join(line.strip() for line in stderr.strip().splitlines() if line.strip())
        if len(out) > self.MAX_OUTPUT:
            out = out[:self.MAX_OUTPUT] + "..."
        status = "timed out" if returncode is None else f"exit status {returncode}"
        super().__init__(err, step, path, f"{' '.join(self.argv)}: {status}: {out or 'no output'}")

    def __reduce__(self) -> tuple:
        return (type(self), (self.errno, self.step, self.filename, self.argv, self.returncode,
                             self.stderr))
