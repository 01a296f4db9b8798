"""The pure parts of grow_disk: size checks, superblock/ioctl decoding, partition end rules,
tool command lines, ToolError, and the QMP client against a fake monitor."""

from __future__ import annotations

import errno
import json
import os
import pickle
import shutil
import socket
import struct
import subprocess
import threading
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lxcone.storage import grow, loop, qsd
from lxcone.storage.errors import StorageError, ToolError
from lxcone.storage.grow import (
    GrowResult,
    check_size_arg,
    ext_size,
    fmt_size,
    gpt_entry_bytes,
    grow_argv,
    grow_tool,
    has_capability,
    last_partition_blocker,
    mbr_max_end,
    partition_max_end,
    refuse_shrink,
)
from lxcone.storage.partitions import Partition, Table, file_reader, read_table

MiB = 1 << 20


# --- sizes and refusals ------------------------------------------------------------------------

def test_fmt_size():
    assert fmt_size(64 * MiB) == "64 MiB"
    assert fmt_size(0) == "0 MiB"
    assert fmt_size(305118720) == "305118720 bytes (291.0 MiB)"


@pytest.mark.parametrize("bad", [0, -512, 511, 513, 64 * MiB + 1])
def test_size_must_be_a_positive_multiple_of_512(bad):
    with pytest.raises(ValueError, match="multiple of 512"):
        check_size_arg(bad)


@pytest.mark.parametrize("bad", [True, 1.0 * MiB, "64M", None])
def test_size_must_be_an_int(bad):
    with pytest.raises(TypeError):
        check_size_arg(bad)


def test_size_ok():
    assert check_size_arg(512) == 512
    assert check_size_arg(10 << 40) == 10 << 40


def test_shrink_is_refused_with_disk_and_sizes():
    refuse_shrink(3, "/ds/disk.3", 64 * MiB, "image", 64 * MiB)  # same size: fine
    refuse_shrink(3, "/ds/disk.3", 65 * MiB, "image", 64 * MiB)
    with pytest.raises(StorageError) as ei:
        refuse_shrink(3, "/ds/disk.3", 32 * MiB, "image", 64 * MiB)
    e = ei.value
    assert e.errno == errno.EINVAL and e.filename == "/ds/disk.3" and e.step == "grow disk"
    assert "disk 3" in str(e) and "32 MiB" in str(e) and "64 MiB" in str(e)
    assert "shrinking is not supported" in str(e)


def test_grow_result():
    r = GrowResult(1, "raw", "xfs", 1, 2, 1, 2, ("image: ...",))
    assert r.changed and not GrowResult(1, "dir", None, None, None, None, None).changed
    with pytest.raises(AttributeError):
        r.disk_id = 2  # type: ignore[misc]


# --- tools -------------------------------------------------------------------------------------

def test_grow_tool_and_argv():
    assert grow_tool("ext4") == ("resize2fs", "e2fsprogs")
    assert grow_tool("ext3") == ("resize2fs", "e2fsprogs")
    assert grow_tool("xfs") == ("xfs_growfs", "xfsprogs")
    assert grow_tool("btrfs") == ("btrfs", "btrfs-progs")
    assert grow_argv("ext4", "/dev/loop3p2", "/mnt/x") == ["resize2fs", "/dev/loop3p2"]
    assert grow_argv("xfs", "/dev/loop3", "/mnt/x") == ["xfs_growfs", "-d", "/mnt/x"]
    assert grow_argv("btrfs", "/dev/loop3", "/mnt/x", 2) == \
        ["btrfs", "filesystem", "resize", "2:max", "/mnt/x"]
    with pytest.raises(ValueError):
        grow_argv("vfat", "/dev/loop3", "/mnt/x")


@pytest.mark.parametrize("fs", ["ext2", "squashfs", "erofs", "iso9660", "vfat", "ntfs", None])
def test_filesystems_that_cannot_grow_online(fs):
    with pytest.raises(ValueError) as ei:
        grow_tool(fs)
    if fs == "ext2":
        assert "ext2 cannot grow while mounted" in str(ei.value)


def test_has_capability_reads_cap_eff():
    status = "Name:\tx\nCapInh:\t0000000000000000\nCapEff:\t000001fffeffffff\n"
    assert has_capability(21, status)  # CAP_SYS_ADMIN
    assert not has_capability(grow.CAP_SYS_RESOURCE, status)
    assert has_capability(grow.CAP_SYS_RESOURCE, "CapEff:\t000001ffffffffff\n")
    assert has_capability(grow.CAP_SYS_RESOURCE, "no such line\n")  # unknown: let the kernel say


def test_tool_error_is_one_line_with_stderr_and_pickles():
    e = ToolError(errno.EIO, "xfs_growfs", "/mnt/x", ["xfs_growfs", "-d", "/mnt/x"], 1,
                  "xfs_growfs: first\n\n  second line  \n")
    assert isinstance(e, StorageError) and isinstance(e, OSError)
    assert e.errno == errno.EIO and e.filename == "/mnt/x" and e.returncode == 1
    assert "\n" not in str(e)
    assert "xfs_growfs -d /mnt/x: exit status 1: xfs_growfs: first | second line" in str(e)
    e2 = pickle.loads(pickle.dumps(e))
    assert (type(e2), str(e2), e2.argv, e2.stderr) == (ToolError, str(e), e.argv, e.stderr)
    long = ToolError(errno.EIO, "t", None, ["t"], None, "x" * 10000)
    assert "timed out" in str(long) and len(str(long)) < ToolError.MAX_OUTPUT + 200
    assert "no output" in str(ToolError(errno.EIO, "t", None, ["t"], 2, ""))


# --- superblocks and ioctl answers -------------------------------------------------------------

def ext_sb(blocks: int, log_block: int, sixty_four: bool = False) -> bytes:
    sb = bytearray(1024)
    struct.pack_into("<I", sb, 0x04, blocks & 0xFFFFFFFF)
    struct.pack_into("<I", sb, 0x18, log_block)
    sb[0x38:0x3A] = b"\x53\xef"
    if sixty_four:
        struct.pack_into("<I", sb, 0x60, 0x80)
        struct.pack_into("<I", sb, 0x150, blocks >> 32)
    return bytes(sb)


def test_ext_size_synthetic():
    assert ext_size(ext_sb(16384, 2)) == (64 * MiB, 4096)
    assert ext_size(ext_sb(65536, 0)) == (64 * MiB, 1024)
    big = (1 << 32) + 5
    assert ext_size(ext_sb(big, 2, sixty_four=True)) == (big * 4096, 4096)
    # without the 64bit feature the high word is not used
    sb = bytearray(ext_sb(10, 2))
    struct.pack_into("<I", sb, 0x150, 7)
    assert ext_size(bytes(sb)) == (10 * 4096, 4096)
    with pytest.raises(ValueError):
        ext_size(bytes(1024))
    with pytest.raises(ValueError):
        ext_size(ext_sb(10, 9))


@pytest.mark.parametrize("fs", ["ext4", "ext3", "ext2"])
def test_ext_size_of_a_real_image(tmp_path, fs):
    tool = f"mkfs.{fs}"
    if shutil.which(tool) is None or shutil.which("dumpe2fs") is None:
        pytest.skip(f"needs {tool} and dumpe2fs")
    img = str(tmp_path / "img")
    with open(img, "wb") as f:
        f.truncate(48 * MiB)
    subprocess.run([tool, "-q", "-F", img], check=True, capture_output=True)
    out = subprocess.run(["dumpe2fs", "-h", img], check=True, capture_output=True,
                         text=True).stdout
    fields = dict(line.split(":", 1) for line in out.splitlines() if ":" in line)
    with open(img, "rb") as f:
        f.seek(1024)
        size, block = ext_size(f.read(1024))
    assert block == int(fields["Block size"])
    assert size == int(fields["Block count"]) * block == 48 * MiB


@settings(max_examples=300, deadline=None)
@given(st.binary(min_size=0, max_size=1100))
def test_ext_size_garbage_only_raises_value_error(data):
    try:
        size, block = ext_size(data)
    except ValueError:
        return
    assert size >= 0 and block in {1024 << i for i in range(7)}


def test_xfs_geometry_and_btrfs_info_decoding():
    geom = bytearray(grow.XFS_GEOM_V1_SIZE)
    struct.pack_into("=8I", geom, 0, 4096, 4096, 20480, 4, 2560, 512, 512, 25)
    struct.pack_into("=Q", geom, 32, 81920)
    assert grow.xfs_size(bytes(geom)) == (320 * MiB, 4096)
    info = bytearray(grow.BTRFS_FS_INFO_SIZE)
    struct.pack_into("=QQ16sII", info, 0, 3, 1, b"f" * 16, 16384, 4096)
    assert grow.btrfs_fs_info(bytes(info)) == (3, 1, 4096)
    dev = bytearray(grow.BTRFS_DEV_INFO_SIZE)
    struct.pack_into("=Q16sQQ", dev, 0, 1, b"u" * 16, 12345, 256 * MiB)
    assert grow.btrfs_dev_total(bytes(dev)) == 256 * MiB


def _ioc(direction: int, kind: int, nr: int, size: int) -> int:
    return direction << 30 | size << 16 | kind << 8 | nr


def test_ioctl_numbers_follow_the_uapi_macros():
    read, rw = 2, 3
    assert _ioc(read, ord("X"), 100, grow.XFS_GEOM_V1_SIZE) == grow.XFS_IOC_FSGEOMETRY_V1
    assert _ioc(read, 0x94, 31, grow.BTRFS_FS_INFO_SIZE) == grow.BTRFS_IOC_FS_INFO
    assert _ioc(rw, 0x94, 30, grow.BTRFS_DEV_INFO_SIZE) == grow.BTRFS_IOC_DEV_INFO
    assert _ioc(0, 0x12, 105, 0) == loop.BLKPG
    assert loop.LOOP_SET_CAPACITY == 0x4C07
    # struct blkpg_partition is 152 bytes, struct blkpg_ioctl_arg 24 on LP64
    assert loop._BLKPG_PARTITION.size == 152
    assert loop._BLKPG_ARG.size == 24


# --- partitions -------------------------------------------------------------------------------

def table(kind: str, *parts: tuple[int, int, int], ss: int = 512) -> Table:
    return Table(kind, ss, tuple(Partition(n, s * MiB, z * MiB, "0x83") for n, s, z in parts))


def test_last_partition_blocker():
    t = table("gpt", (1, 1, 8), (2, 9, 100))
    assert last_partition_blocker(t, 2) is None
    assert "partition 2 lies after partition 1" in last_partition_blocker(t, 1)
    assert "no partition 3" in last_partition_blocker(t, 3)
    # numbering is not position: partition 1 may be the last one on the disk
    assert last_partition_blocker(table("gpt", (1, 50, 10), (2, 1, 8)), 1) is None
    assert "logical" in last_partition_blocker(table("dos", (1, 1, 8), (5, 10, 20)), 5)
    assert "4096-byte sectors" in last_partition_blocker(table("gpt", (1, 1, 8), ss=4096), 1)


def test_an_empty_extended_partition_after_it_blocks(tmp_path, sfdisk):
    img = str(tmp_path / "disk")
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run([sfdisk, "-q", img], input="label: dos\n,8M,L\n,16M,L\n,,E\n", text=True,
                   check=True, capture_output=True)
    with open(img, "rb") as f:
        t = read_table(file_reader(f.fileno()), 64 * MiB)
        f.seek(0)
        mbr = f.read(512)
    assert t is not None and [p.number for p in t.partitions] == [1, 2]  # no logicals
    assert last_partition_blocker(t, 2) is None  # the table alone cannot tell
    assert "extended partition 3 lies after partition 2" in last_partition_blocker(t, 2, mbr)


def test_partition_max_end_rules():
    disk = 100 * MiB
    # GPT: 128 entries of 128 bytes = 32 sectors + the backup header, at the end
    assert partition_max_end(table("gpt"), disk) == disk - 33 * 512
    assert partition_max_end(table("gpt"), disk, 256 * 128) == disk - 65 * 512
    assert partition_max_end(table("gpt", ss=4096), disk) == disk - 5 * 4096
    assert partition_max_end(table("dos"), disk + 100) == disk
    assert mbr_max_end(MiB, disk) == disk
    assert mbr_max_end(MiB, 4 << 40) == MiB + 0xFFFFFFFF * 512


def test_gpt_entry_bytes_from_header():
    hdr = bytearray(512)
    hdr[:8] = b"EFI PART"
    struct.pack_into("<II", hdr, 80, 64, 256)
    assert gpt_entry_bytes(bytes(hdr)) == 64 * 256
    assert gpt_entry_bytes(bytes(512)) == 128 * 128
    struct.pack_into("<II", hdr, 80, 0, 128)
    assert gpt_entry_bytes(bytes(hdr)) == 128 * 128


@pytest.fixture
def sfdisk() -> str:
    path = shutil.which("sfdisk")
    if path is None:
        pytest.skip("needs sfdisk (fdisk package)")
    return path


@pytest.mark.parametrize("label", ["gpt", "dos"])
def test_max_end_matches_where_sfdisk_grows_the_last_partition(tmp_path, sfdisk, label):
    """What grow_disk computes as "already as large as it can be" is exactly where sfdisk puts
    the end of the last partition, so a repeated grow_disk does not run sfdisk again."""
    img = str(tmp_path / "disk")
    with open(img, "wb") as f:
        f.truncate(64 * MiB)
    subprocess.run([sfdisk, "-q", img], input=f"label: {label}\n,16M,L\n,,L\n", text=True,
                   check=True, capture_output=True)
    os.truncate(img, 80 * MiB + 7 * 512)  # odd sectors at the end too
    subprocess.run([sfdisk, "-q", "--no-reread", "--no-tell-kernel", "-N", "2", img],
                   input=", +\n", text=True, check=True, capture_output=True)
    fd = os.open(img, os.O_RDONLY)
    try:
        size = os.fstat(fd).st_size
        t = read_table(file_reader(fd), size)
        lba1 = os.pread(fd, 512, 512)
    finally:
        os.close(fd)
    assert t is not None and t.kind == label
    p2 = t.get(2)
    assert p2 is not None and last_partition_blocker(t, 2) is None
    expect = partition_max_end(t, size, gpt_entry_bytes(lba1))
    if label == "dos":
        expect = min(expect, mbr_max_end(p2.start, size))
    assert p2.start + p2.size == expect
    assert last_partition_blocker(t, 1) is not None
    if label == "gpt":
        out = subprocess.run([sfdisk, "--verify", img], check=False, capture_output=True,
                             text=True)
        assert out.returncode == 0, out.stdout + out.stderr


# --- QMP client --------------------------------------------------------------------------------

class FakeMonitor:
    """A QMP monitor on a unix socket: greets, answers qmp_capabilities, then the scripted
    answers (an event first, to be skipped)."""

    def __init__(self, path: str, answers: dict[str, dict], greeting: bytes | None = None):
        self.path, self.answers = path, answers
        self.greeting = greeting if greeting is not None else \
            b'{"QMP": {"version": {}, "capabilities": ["oob"]}}\n'
        self.received: list[dict] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(1)
        self.thread = threading.Thread(target=self.serve, daemon=True)
        self.thread.start()

    def serve(self) -> None:
        conn, _ = self.sock.accept()
        with conn, conn.makefile("rwb") as f:
            f.write(self.greeting)
            f.flush()
            if not self.greeting:
                return
            for line in f:
                req = json.loads(line)
                self.received.append(req)
                if req["execute"] == "qmp_capabilities":
                    f.write(b'{"return": {}}\n')
                else:
                    f.write(b'{"event": "SOMETHING", "data": {}}\n')
                    f.write(json.dumps(self.answers[req["execute"]]).encode() + b"\n")
                f.flush()

    def close(self) -> None:
        self.sock.close()
        self.thread.join(5)


@pytest.fixture
def monitor(tmp_path) -> Iterator:
    made: list[FakeMonitor] = []

    def make(answers: dict[str, dict], greeting: bytes | None = None) -> FakeMonitor:
        m = FakeMonitor(str(tmp_path / f"qmp{len(made)}"), answers, greeting)
        made.append(m)
        return m

    yield make
    for m in made:
        m.close()


def test_qmp_handshake_then_command(monitor):
    m = monitor({"query-named-block-nodes": {"return": [
        {"node-name": "file0", "image": {"virtual-size": 1}},
        {"node-name": qsd.FORMAT_NODE, "image": {"virtual-size": 64 * MiB}}]}})
    assert qsd.virtual_size(m.path) == 64 * MiB
    assert m.received == [{"execute": "qmp_capabilities"},
                          {"execute": "query-named-block-nodes", "arguments": {"flat": True}}]


def test_qmp_block_resize_arguments(monitor):
    m = monitor({"block_resize": {"return": {}}})
    qsd.block_resize(m.path, 80 * MiB)
    assert m.received[-1] == {"execute": "block_resize",
                              "arguments": {"node-name": "fmt0", "size": 80 * MiB}}


def test_qmp_error_is_an_oserror_with_the_daemons_text(monitor):
    m = monitor({"block_resize": {"error": {"class": "GenericError",
                                            "desc": "Cannot grow: no space"}}})
    with pytest.raises(OSError) as ei:
        qsd.block_resize(m.path, 80 * MiB)
    assert ei.value.errno == errno.EIO and ei.value.filename == m.path
    assert "QMP block_resize: GenericError: Cannot grow: no space" in str(ei.value)


def test_qmp_missing_node(monitor):
    m = monitor({"query-named-block-nodes": {"return": []}})
    with pytest.raises(OSError) as ei:
        qsd.virtual_size(m.path)
    assert ei.value.errno == errno.ENOENT


def test_qmp_bad_greeting_and_hangup(monitor):
    m = monitor({}, greeting=b'{"hello": 1}\n')
    with pytest.raises(OSError) as ei:
        qsd.qmp(m.path, "query-status")
    assert ei.value.errno == errno.EPROTO
    m = monitor({}, greeting=b"")
    with pytest.raises(OSError) as ei:
        qsd.qmp(m.path, "query-status")
    assert ei.value.errno == errno.ECONNRESET


def test_qmp_no_socket(tmp_path):
    with pytest.raises(OSError) as ei:
        qsd.qmp(str(tmp_path / "none"), "query-status")
    assert ei.value.errno == errno.ENOENT


def test_export_size_of_a_plain_file(tmp_path):
    """statx(AT_STATX_FORCE_SYNC) through ctypes gives st_size (any filesystem answers it)."""
    p = tmp_path / "f"
    p.write_bytes(b"x" * 4096)
    assert qsd.export_size(str(p), 4096, wait=0) == 4096
    assert qsd._statx_size_sync(str(p)) in (4096, None)
    assert qsd.export_size(str(p), 8192, wait=0.1) == 4096  # the caller checks the size
