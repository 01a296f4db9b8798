"""The cffi layer against the real kernel: errors carry errno, call and path; the mount API
works; pidfds never hit a recycled pid. Namespace changes happen only in forked children."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys

import pytest

from lxcone import native
from lxcone.testing.fixtures import needs_root

pytestmark = [pytest.mark.root, needs_root]


def in_child(fn) -> int:
    """Run fn in a forked child (namespace changes must not touch the test process)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            code = fn() or 0
        except BaseException as exc:  # report anything to the parent through the exit code
            print(f"child failed: {exc!r}", file=sys.stderr)
        os._exit(code)
    _, status = os.waitpid(pid, 0)
    return os.waitstatus_to_exitcode(status)


def test_mount_error_names_source_target_type_and_flags(tmp_path):
    with pytest.raises(native.MountError) as e:
        native.mount("none", str(tmp_path / "missing"), "tmpfs",
                     native.MS_NOSUID | native.MS_RDONLY)
    assert e.value.errno == errno.ENOENT
    assert isinstance(e.value, OSError)
    text = str(e.value)
    assert "dst=" + str(tmp_path / "missing") in text and "type=tmpfs" in text
    assert "MS_RDONLY|MS_NOSUID" in text or "MS_NOSUID|MS_RDONLY" in text


def test_setns_with_a_wrong_type_fails_with_einval_and_names_the_call():
    fd = os.open("/proc/self/ns/net", os.O_RDONLY)
    try:
        with pytest.raises(OSError) as e:
            native.setns(fd, native.CLONE_NEWUTS)
        assert e.value.errno == errno.EINVAL and "setns(0x4000000)" in str(e.value)
        native.setns(fd, native.CLONE_NEWNET)  # joining our own netns is a no-op
    finally:
        os.close(fd)


def test_open_tree_and_move_mount_make_a_detached_copy(tmp_path):
    src, dst = tmp_path / "src", tmp_path / "dst"
    src.mkdir()
    dst.mkdir()

    def child() -> int:
        native.unshare(native.CLONE_NEWNS)
        native.mount(None, "/", None, native.MS_REC | native.MS_PRIVATE)
        native.mount("tmpfs", str(src), "tmpfs")
        (src / "hello").write_text("hi")
        fd = native.open_tree(str(src))
        native.move_mount(fd, str(dst))
        os.close(fd)
        return 0 if (dst / "hello").read_text() == "hi" else 3

    assert in_child(child) == 0
    assert not (src / "hello").exists() and not (dst / "hello").exists()  # private to the child


def test_sethostname_and_pivot_root_in_a_child(tmp_path):
    root = tmp_path / "root"
    root.mkdir()

    def child() -> int:
        native.unshare(native.CLONE_NEWNS | native.CLONE_NEWUTS)
        native.mount(None, "/", None, native.MS_REC | native.MS_PRIVATE)
        native.sethostname("pivoted")
        native.mount("tmpfs", str(root), "tmpfs")
        (root / "marker").write_text("x")
        os.chdir(root)
        native.pivot_root(".", ".")
        native.umount(".", native.MNT_DETACH)
        os.chdir("/")
        return 0 if os.listdir("/") == ["marker"] and os.uname().nodename == "pivoted" else 4

    assert in_child(child) == 0
    assert os.uname().nodename != "pivoted"


def test_pidfd_signals_the_process_and_refuses_a_dead_one():
    p = subprocess.Popen(["sleep", "30"])
    fd = native.pidfd_open(p.pid)
    try:
        native.pidfd_send_signal(fd, signal.SIGTERM)
        assert p.wait(5) == -signal.SIGTERM
        with pytest.raises(ProcessLookupError):
            native.pidfd_send_signal(fd, signal.SIGTERM)  # never a recycled pid
    finally:
        os.close(fd)
    with pytest.raises(ProcessLookupError):
        native.pidfd_open(p.pid)


def test_attach_to_a_missing_process_names_the_step():
    with pytest.raises(FileNotFoundError, match=r"attach: open /proc/\d+/ns/pid"):
        native.attach(2**22 + 7, ["/bin/true"], [])
    with pytest.raises(ValueError):
        native.attach(os.getpid(), [], [])
