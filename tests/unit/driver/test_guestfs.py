"""guestfs.write_file against what a guest can plant in its own tree."""

from __future__ import annotations

import errno
import os
import stat
import threading

import pytest

from lxcone.driver import guestfs


def test_writes_and_replaces_the_file_with_its_mode(tmp_path):
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "resolv.conf").write_text("old\n")
    assert guestfs.write_file(str(tmp_path), "etc/resolv.conf", b"nameserver 10.0.0.1\n")
    f = tmp_path / "etc" / "resolv.conf"
    assert f.read_bytes() == b"nameserver 10.0.0.1\n"
    assert stat.S_IMODE(f.stat().st_mode) == 0o644
    assert sorted(os.listdir(tmp_path / "etc")) == ["resolv.conf"]  # no temp file left


def test_a_symlink_in_the_last_place_is_left_alone(tmp_path):
    (tmp_path / "etc").mkdir()
    target = tmp_path / "elsewhere"
    target.write_text("theirs\n")
    (tmp_path / "etc" / "resolv.conf").symlink_to(target)
    assert guestfs.write_file(str(tmp_path), "etc/resolv.conf", b"ours\n") is False
    assert target.read_text() == "theirs\n"


def test_a_symlinked_directory_is_refused(tmp_path):
    (tmp_path / "real").mkdir()
    (tmp_path / "etc").symlink_to(tmp_path / "real")
    with pytest.raises(OSError) as info:
        guestfs.write_file(str(tmp_path), "etc/resolv.conf", b"x\n")
    assert info.value.errno == errno.ELOOP
    assert os.listdir(tmp_path / "real") == []


def test_a_fifo_planted_at_the_temp_name_fails_at_once_and_is_not_opened(tmp_path):
    # The temp name is predictable (pid): a guest can plant a FIFO there, on which an open
    # without O_EXCL would block root forever (or a device node, which would be written).
    (tmp_path / "etc").mkdir()
    fifo = tmp_path / "etc" / f".resolv.conf.lxcone-{os.getpid()}"
    os.mkfifo(fifo)
    result: dict = {}

    def write() -> None:
        try:
            guestfs.write_file(str(tmp_path), "etc/resolv.conf", b"x\n")
        except OSError as exc:
            result["errno"] = exc.errno

    t = threading.Thread(target=write, daemon=True)
    t.start()
    t.join(5)
    if t.is_alive():  # unblock the stuck open so the test run can end
        fd = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        os.close(fd)
        t.join(5)
        pytest.fail("write_file blocked on the planted FIFO")
    assert result == {"errno": errno.EEXIST}
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert not (tmp_path / "etc" / "resolv.conf").exists()
