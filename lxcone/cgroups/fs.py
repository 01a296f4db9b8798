"""All cgroupfs I/O of LXCoNe goes through this module.

Two ways to name a cgroup directory:

- a path (``str``): each call opens, reads or writes, and closes. This is what managers use for
  the rare control-path operations (create, set, destroy).
- a :class:`KeptDir`: the directory is opened once (``O_DIRECTORY``), each file once relative to
  it (``openat``), and every read is a single ``pread(fd, n, 0)``. cgroupfs regenerates a file's
  content whenever it is read from offset 0, so a kept fd always sees fresh values; this is the
  monitoring fast path (3-6 us instead of ~33 us for open/read/close, see DESIGN.md section 3). A
  kept directory fd also pins *that* cgroup: if the cgroup is removed and another one is created
  under the same name, reads fail (``ENODEV``) instead of silently reporting the new cgroup.

File names are sanitised like runc's ``filepath.Clean("/"+file)``: a name is a single path
component, so a Resources.unified key or a parser bug can never reach outside the directory.

Errors are :class:`~lxcone.cgroups.errors.CgroupError` (an ``OSError`` with the errno, the path and
the value written) and :class:`~lxcone.cgroups.errors.CgroupParseError` for unexpected content.
"""

from __future__ import annotations

import errno
import os
import posixpath
from collections.abc import Iterable

from lxcone.cgroups.errors import CgroupError, CgroupParseError

O_READ = os.O_RDONLY | os.O_CLOEXEC
# O_TRUNC matters only on fake trees (regular files); kernfs ignores it, as it does for `echo >`.
O_WRITE = os.O_WRONLY | os.O_TRUNC | os.O_CLOEXEC
O_DIR = os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC

# Big enough for every file we read in one pread on small hosts: v2 memory.stat is ~1.6 KiB on
# 6.x; io.stat and cgroup.procs can be longer and are re-read with a bigger buffer.
PREAD_SIZE = 4096


def clean_name(name: str) -> str:
    """Return ``name`` if it is a valid cgroup file name (one path component).

    Raises ValueError for an empty name, a name containing ``/`` or NUL, or ``.``/``..``.
    """
    # runc's filepath.Clean("/"+file) would silently map "../x" to "x"; a cgroup file name never
    # needs cleaning, so anything that cleaning would change is refused instead.
    if not name or "\0" in name or "/" in name or posixpath.normpath("/" + name)[1:] != name:
        raise ValueError(f"invalid cgroup file name {name!r}")
    return name


def join(dirpath: str, name: str) -> str:
    """Join a cgroup directory and a sanitised file name (see :func:`clean_name`)."""
    return dirpath + "/" + clean_name(name)


class KeptDir:
    """A cgroup directory whose files stay open; each :meth:`read` is one ``pread``.

    The directory and each file are opened lazily on first use, at most once. An open that fails
    is remembered (by errno), and later reads of that name raise a fresh CgroupError without
    another syscall, so a file absent at first stays absent: callers re-create the KeptDir if the
    cgroup may have gained files. Not thread-safe; close() releases all fds.
    """

    __slots__ = ("_dfd", "_dir_errno", "_fds", "_sizes", "path")

    def __init__(self, path: str) -> None:
        self.path = path
        self._dfd: int | None = None
        self._dir_errno = 0
        self._fds: dict[str, int] = {}  # name -> fd, or -errno when the open failed
        self._sizes: dict[str, int] = {}

    def _open(self, name: str) -> int:
        clean_name(name)
        if self._dfd is None and not self._dir_errno:
            try:
                self._dfd = os.open(self.path, O_DIR)
            except OSError as e:
                self._dir_errno = e.errno or errno.EIO
        if self._dfd is None:
            fd = -self._dir_errno
        else:
            try:
                fd = os.open(name, O_READ, dir_fd=self._dfd)
            except OSError as e:
                fd = -(e.errno or errno.EIO)
        self._fds[name] = fd
        return fd

    def read(self, name: str) -> str:
        """Return the current content of file ``name`` (one pread at offset 0).

        Raises CgroupError (op ``read``, or ``open`` if the file could not be opened).
        """
        fd = self._fds.get(name)
        if fd is None:
            fd = self._open(name)
        if fd < 0:
            raise CgroupError(-fd, self.path + "/" + name, "open")
        size = self._sizes.get(name, PREAD_SIZE)
        try:
            data = os.pread(fd, size, 0)
            while len(data) >= size:
                # The whole file must come from one read at offset 0 to be a consistent snapshot.
                size *= 4
                self._sizes[name] = size
                data = os.pread(fd, size, 0)
        except OSError as e:
            # A removed cgroup's open files fail with ENODEV (kernfs deactivates them).
            raise CgroupError(e.errno or errno.EIO, self.path + "/" + name, "read") from None
        # "replace": a garbled byte must surface as a CgroupParseError of the caller, not as a
        # UnicodeDecodeError escaping a monitoring loop.
        return data.decode("utf-8", "replace")

    def close(self) -> None:
        """Close every fd; the KeptDir may be reused (files are reopened on demand)."""
        fds = [fd for fd in self._fds.values() if fd >= 0]
        if self._dfd is not None:
            fds.append(self._dfd)
        self._fds.clear()
        self._dfd = None
        self._dir_errno = 0
        for fd in fds:
            os.close(fd)

    def __enter__(self) -> KeptDir:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


Dir = str | KeptDir


def read_file(d: Dir, name: str) -> str:
    """Read a whole cgroup file and return it as text.

    Raises CgroupError (``FileNotFoundError`` too when the file or the cgroup does not exist).
    """
    if isinstance(d, KeptDir):
        return d.read(name)
    path = join(d, name)
    try:
        fd = os.open(path, O_READ)
    except OSError as e:
        raise CgroupError(e.errno or errno.EIO, path, "read") from None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, PREAD_SIZE)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as e:
        raise CgroupError(e.errno or errno.EIO, path, "read") from None
    finally:
        os.close(fd)
    return b"".join(chunks).decode("utf-8", "replace")


def write_file(d: str, name: str, data: str | int) -> None:
    """Write ``data`` to a cgroup file in one ``write(2)``, as the kernel requires.

    Raises CgroupError carrying the errno, the path and the value, e.g.
    ``[Errno 22] Invalid argument: write '12x' to /sys/fs/cgroup/memory/x/memory.limit_in_bytes``.
    """
    path = join(d, name)
    text = str(data)
    raw = text.encode()
    try:
        fd = os.open(path, O_WRITE)
    except OSError as e:
        raise CgroupError(e.errno or errno.EIO, path, "write", text) from None
    try:
        # cgroup files parse each write(2) as one complete value: never split a value.
        n = os.write(fd, raw)
    except OSError as e:
        raise CgroupError(e.errno or errno.EIO, path, "write", text) from None
    finally:
        os.close(fd)
    if n != len(raw):
        raise CgroupError(errno.EIO, path, "write", text)


def parse_uint(text: str, path: str) -> int | None:
    """Parse a single unsigned integer; ``max`` (v2 "no limit") gives None.

    Raises CgroupParseError for anything else (including negative numbers).
    """
    s = text.strip()
    if s == "max":
        return None
    if s.isascii() and s.isdigit():  # str.isdigit() alone takes "²", which int() refuses
        return int(s)
    raise CgroupParseError(path, text, "expected an unsigned integer or 'max'")


def parse_int(text: str, path: str) -> int:
    """Parse a single signed integer (v1 files such as ``cpu.cfs_quota_us`` hold ``-1``)."""
    try:
        return int(text.strip())
    except ValueError:
        raise CgroupParseError(path, text, "expected an integer") from None


def parse_keyed(text: str, path: str) -> dict[str, int]:
    """Parse a flat keyed file (``key value`` per line: memory.stat, cpu.stat, memory.events).

    Raises CgroupParseError on a malformed line.
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        if not line:
            continue
        key, sep, value = line.partition(" ")
        try:
            if not sep:
                raise ValueError
            out[key] = int(value)
        except ValueError:
            raise CgroupParseError(path, text, f"bad line {line!r}") from None
    return out


def parse_keyed_subset(text: str, path: str, keys: Iterable[str]) -> dict[str, int]:
    """Like :func:`parse_keyed` but extract only ``keys`` (absent keys are left out).

    This scans with ``str.find`` instead of splitting every line: memory.stat has 35-60 lines of
    which monitoring needs three, and parsing them all would dominate a StatsReader.read().
    """
    out: dict[str, int] = {}
    haystack = "\n" + text
    for key in keys:
        i = haystack.find("\n" + key + " ")
        if i < 0:
            continue
        start = i + len(key) + 2
        end = haystack.find("\n", start)
        raw = haystack[start:] if end < 0 else haystack[start:end]
        try:
            out[key] = int(raw)
        except ValueError:
            raise CgroupParseError(path, text, f"bad value for {key!r}: {raw!r}") from None
    return out


def parse_nested_keyed(text: str, path: str) -> dict[str, dict[str, int | None]]:
    """Parse a nested keyed file (``254:0 rbytes=1 wbytes=2 ...`` per line: io.stat, io.max).

    ``max`` values give None. Raises CgroupParseError on a malformed line.
    """
    out: dict[str, dict[str, int | None]] = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        entry: dict[str, int | None] = {}
        for field in fields[1:]:
            key, sep, value = field.partition("=")
            if not sep:
                raise CgroupParseError(path, text, f"bad field {field!r}")
            if value == "max":
                entry[key] = None
                continue
            try:
                entry[key] = int(value)
            except ValueError:
                raise CgroupParseError(path, text, f"bad field {field!r}") from None
        out[fields[0]] = entry
    return out


def parse_blkio_rwstat(text: str, path: str) -> dict[str, int]:
    """Sum a v1 blkio "rwstat" file over devices: ``{"Read": n, "Write": n, ...}``.

    Lines are ``MAJ:MIN Op value`` plus a final ``Total value`` (the grand total, skipped: it is
    Read+Write+Discard of all devices and carries no direction).
    """
    out: dict[str, int] = {}
    for line in text.splitlines():
        fields = line.split()
        if not fields:
            continue
        try:
            if len(fields) == 3:
                out[fields[1]] = out.get(fields[1], 0) + int(fields[2])
            elif len(fields) == 2 and fields[0] == "Total":
                int(fields[1])
            else:
                raise ValueError
        except ValueError:
            raise CgroupParseError(path, text, f"bad line {line!r}") from None
    return out


def read_uint(d: Dir, name: str) -> int | None:
    """Read a single unsigned integer; ``max`` gives None. Raises CgroupError/CgroupParseError."""
    text = read_file(d, name)
    return parse_uint(text, path_of(d, name))


def read_int(d: Dir, name: str) -> int:
    """Read a single signed integer. Raises CgroupError/CgroupParseError."""
    text = read_file(d, name)
    return parse_int(text, path_of(d, name))


def read_keyed(d: Dir, name: str) -> dict[str, int]:
    """Read a flat keyed file into a dict. Raises CgroupError/CgroupParseError."""
    return parse_keyed(read_file(d, name), path_of(d, name))


def read_pids(d: Dir, name: str = "cgroup.procs") -> list[int]:
    """Read a cgroup.procs (or tasks) file as a list of pids."""
    text = read_file(d, name)
    try:
        return [int(line) for line in text.split()]
    except ValueError:
        raise CgroupParseError(path_of(d, name), text, "expected one pid per line") from None


def make_dir(path: str) -> bool:
    """mkdir one cgroup directory; return False if it already existed. Raises CgroupError."""
    try:
        os.mkdir(path, 0o755)
    except FileExistsError:
        return False
    except OSError as e:
        raise CgroupError(e.errno or errno.EIO, path, "mkdir") from None
    return True


def remove_dir(path: str) -> None:
    """rmdir one cgroup directory. Raises CgroupError (ENOENT included; callers decide)."""
    try:
        os.rmdir(path)
    except OSError as e:
        raise CgroupError(e.errno or errno.EIO, path, "rmdir") from None


def subdirs(path: str) -> list[str]:
    """Child cgroup directories of ``path`` (absolute paths); [] if ``path`` is gone."""
    try:
        with os.scandir(path) as it:
            return [e.path for e in it if e.is_dir(follow_symlinks=False)]
    except FileNotFoundError:
        return []
    except OSError as e:
        raise CgroupError(e.errno or errno.EIO, path, "scandir") from None


def path_of(d: Dir, name: str) -> str:
    """The path of file ``name`` in ``d`` (for messages)."""
    return (d.path if isinstance(d, KeptDir) else d) + "/" + name
