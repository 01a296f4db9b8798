"""Files the driver writes into a guest's root filesystem from the host side (resolv.conf).

The guest owns its tree: any component may be a symlink planted to make root write elsewhere
on the host. Every directory is opened with O_NOFOLLOW from the rootfs down, the file is written
under a temporary name in its directory and renamed over the old one, and a symlink in the last
place is left alone (a guest that links /etc/resolv.conf to a resolver of its own manages DNS
itself). Not lxcone.atomicfile.write_atomic: its temp name is opened without O_EXCL, and here the
guest can plant a FIFO (root would block forever) or a device node there.
"""

from __future__ import annotations

import contextlib
import errno
import os

from lxcone.atomicfile import write_all


def write_file(rootfs: str, relpath: str, data: bytes, mode: int = 0o644) -> bool:
    """Write ``<rootfs>/<relpath>`` without following any symlink; False when it was left
    alone (the last component is a symlink, or the filesystem is read-only). OSError naming
    the path for anything else."""
    parts = [p for p in relpath.split("/") if p]
    if not parts or any(p in (".", "..") for p in parts):
        raise ValueError(f"{relpath!r} is not a plain relative path")
    dirs, name = parts[:-1], parts[-1]
    fd = os.open(rootfs, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        for i, part in enumerate(dirs):
            try:
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
            except FileNotFoundError:
                os.mkdir(part, 0o755, dir_fd=fd)
                nfd = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                              dir_fd=fd)
            except NotADirectoryError:  # O_NOFOLLOW on a symlink to a directory
                raise OSError(errno.ELOOP, "guest path component is a symlink",
                              os.path.join(rootfs, *dirs[:i + 1])) from None
            os.close(fd)
            fd = nfd
        if os.path.islink(f"/proc/self/fd/{fd}/{name}"):
            return False
        tmp = f".{name}.lxcone-{os.getpid()}"
        try:
            out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                          mode, dir_fd=fd)
        except OSError as exc:
            if exc.errno == errno.EROFS:
                return False
            raise OSError(exc.errno, exc.strerror, os.path.join(rootfs, relpath)) from None
        try:
            try:
                write_all(out, data)
                os.fchmod(out, mode)
            finally:
                os.close(out)
            os.rename(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp, dir_fd=fd)
            raise
        return True
    finally:
        os.close(fd)
