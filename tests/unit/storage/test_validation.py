"""Input validation (snapshot ids, DiskSpec), records, mountinfo parsing, and the copy helpers
on the test's own tmp dir (no root needed)."""

from __future__ import annotations

import errno
import os
import pickle
import stat

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lxcone.storage import DiskSpec, InvalidSnapshotId, StorageError, records
from lxcone.storage.errors import DiskBusy
from lxcone.storage.snapshot import copy_file, copy_tree, validate_snap_id
from lxcone.storage.sysinfo import parse_mountinfo


@pytest.mark.parametrize("good", ["0", "12", "snap-3", "a.b_c-D", "x" * 128, "a.b"])
def test_snap_id_accepted(good: str) -> None:
    assert validate_snap_id(good) == good


@pytest.mark.parametrize("bad", ["", "..", ".", "../x", "a/b", "/abs", "a..b", ".hidden",
                                 "x" * 129, "sp ace", "semi;colon", "new\nline", "ü", 3, None])
def test_snap_id_refused(bad: object) -> None:
    with pytest.raises(InvalidSnapshotId):
        validate_snap_id(bad)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_snap_id_never_escapes(text: str) -> None:
    try:
        validate_snap_id(text)
    except InvalidSnapshotId:
        return
    assert "/" not in text and ".." not in text and text not in ("", ".")
    assert os.path.normpath(os.path.join("/snaps", text)).startswith("/snaps/")


@pytest.mark.parametrize("kw", [
    {"disk_id": -1}, {"disk_id": True}, {"disk_id": "1"}, {"source": ""},
    {"source": "a\0b"}, {"format": "vmdk"}, {"fs_type": "ext4,rw"}, {"fs_type": ""},
    {"partition": 0}, {"partition": True}, {"partition": 5000},
])
def test_diskspec_refuses(kw: dict) -> None:
    args = {"disk_id": 0, "source": "/x/disk.0"} | kw
    with pytest.raises(ValueError):
        DiskSpec(**args)


def test_diskspec_defaults() -> None:
    d = DiskSpec(3, "/ds/0/7/disk.3")
    assert (d.format, d.readonly, d.fs_type, d.partition) == ("auto", False, None, None)


def test_errors_are_oserrors_with_step_path_errno() -> None:
    e = StorageError(errno.ENOENT, "open image", "/ds/disk.0", "gone")
    assert isinstance(e, OSError) and e.errno == errno.ENOENT and e.filename == "/ds/disk.0"
    assert e.step == "open image" and "[open image]" in str(e) and "gone" in str(e)
    b = DiskBusy(path="/mnt/x", detail="in use")
    assert isinstance(b, StorageError) and b.errno == errno.EBUSY
    again = pickle.loads(pickle.dumps(b))
    assert type(again) is DiskBusy and again.filename == "/mnt/x"
    wrapped = StorageError.from_oserror(PermissionError(errno.EACCES, "Permission denied", "/p"),
                                        "mkdir")
    assert wrapped.errno == errno.EACCES and wrapped.filename == "/p"


def test_mountinfo_parsing_and_unescaping() -> None:
    text = (
        "22 1 254:0 / / rw,relatime shared:1 - ext4 /dev/vda rw\n"
        "40 22 7:3 / /mnt/with\\040space rw master:2 - xfs /dev/loop3 rw\n"
        "41 22 0:50 /sub/dir /bind rw - ext4 /dev/vda rw\n"
        "garbage line\n"
    )
    entries = parse_mountinfo(text)
    assert [(e.mnt_id, e.dev, e.mountpoint, e.fstype) for e in entries] == [
        (22, "254:0", "/", "ext4"), (40, "7:3", "/mnt/with space", "xfs"),
        (41, "0:50", "/bind", "ext4")]
    assert entries[2].root == "/sub/dir"


def test_records_roundtrip_and_garbage(tmp_path) -> None:
    d = str(tmp_path)
    assert records.read(d, 1) is None
    records.write(d, {"disk_id": 1, "state": "mounted"})
    assert records.read(d, 1) == {"disk_id": 1, "state": "mounted"}
    assert records.all_ids(d) == [1]
    (tmp_path / "disk.2.json").write_text("{not json")
    assert records.read(d, 2) is None
    (tmp_path / "disk.3.json").write_text('{"disk_id": 4}')  # wrong id inside
    assert records.read(d, 3) is None
    (tmp_path / "disk.1.json.4242.tmp").write_text("{")  # from a writer killed mid-write
    records.remove(d, 1)
    assert records.read(d, 1) is None and not list(tmp_path.glob("disk.1.json*.tmp"))


def test_sparse_copy_keeps_holes_and_size(tmp_path) -> None:
    src = tmp_path / "src.img"
    with open(src, "wb") as f:
        f.truncate(64 << 20)
        f.seek(1 << 20)
        f.write(b"A" * 4096)
        f.seek(40 << 20)
        f.write(b"B" * 8192)
    os.chmod(src, 0o640)
    dst = tmp_path / "dst.img"
    method = copy_file(str(src), str(dst))
    assert method in ("reflink", "sparse-copy")
    assert dst.read_bytes() == src.read_bytes()
    st = os.stat(dst)
    assert st.st_size == 64 << 20 and st.st_blocks * 512 < 4 << 20
    assert st.st_mode & 0o777 == 0o640
    with pytest.raises(FileExistsError):
        copy_file(str(src), str(dst))


def test_copy_tree_keeps_links_modes_and_symlinks(tmp_path) -> None:
    src = tmp_path / "src"
    (src / "etc").mkdir(parents=True)
    (src / "etc" / "hostname").write_text("vm\n")
    os.chmod(src / "etc" / "hostname", 0o600)
    os.link(src / "etc" / "hostname", src / "hardlink")
    os.symlink("/etc/passwd", src / "abs-link")  # must be copied, never followed
    os.mkfifo(src / "fifo")
    dst = tmp_path / "dst"
    assert copy_tree(str(src), str(dst)) == "tree-copy"
    assert (dst / "etc" / "hostname").read_text() == "vm\n"
    assert os.stat(dst / "etc" / "hostname").st_mode & 0o777 == 0o600
    assert os.stat(dst / "hardlink").st_ino == os.stat(dst / "etc" / "hostname").st_ino
    assert os.readlink(dst / "abs-link") == "/etc/passwd"
    assert os.path.islink(dst / "abs-link")
    assert stat.S_ISFIFO(os.lstat(dst / "fifo").st_mode)
