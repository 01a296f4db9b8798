"""grow_disk against the real kernel: raw ext4/xfs/btrfs with a file held open, qcow2 through
qemu-storage-daemon, the last partition of MBR/GPT images, refusals that change nothing, a failing
tool, idempotence. The env fixture's oracle checks loops, partitions, mounts and qsd after each."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys

import pytest

from lxcone.storage import (
    DiskSpec,
    StorageError,
    ToolError,
    grow_disk,
    mount_disk,
    mounted_disks,
    unmount_disk,
)
from lxcone.storage import grow as grow_mod
from lxcone.storage.grow import PARTITION_ONLY_LAST
from lxcone.testing import images
from lxcone.testing.fixtures import needs_root

from . import storage_oracle as oracle

pytestmark = [pytest.mark.root, needs_root]

MiB = 1 << 20
# mkfs minimums (lxcone.testing.images), and btrfs cannot be resized below 256 MiB
GROW_SIZES_MIB = {"ext4": 64, "xfs": 320, "btrfs": 256}


def need_fs(fs: str) -> None:
    images.need(images.MKFS_TOOL[fs], grow_mod.GROW_TOOLS[fs][0])
    if fs == "ext4" and not grow_mod.has_capability(grow_mod.CAP_SYS_RESOURCE):
        pytest.skip("growing a mounted ext4 needs CAP_SYS_RESOURCE, which this machine's "
                    "bounding set lacks (test_ext4_without_cap_sys_resource_changes_nothing "
                    "covers the refusal)")


def fs_bytes(mountpoint: str) -> int:
    sv = os.statvfs(mountpoint)
    return sv.f_blocks * sv.f_frsize


def sha(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def record(env, disk_id: int) -> dict:
    with open(os.path.join(env.state, f"disk.{disk_id}.json")) as f:
        return json.load(f)


def loop_size(dev: str) -> int:
    with open(f"/sys/block/{os.path.basename(dev)}/size") as f:
        return int(f.read()) * 512


class Held:
    """A file written before the grow and kept open across it (as a running container would)."""

    def __init__(self, mountpoint: str) -> None:
        self.path = os.path.join(mountpoint, "held")
        self.before = os.urandom(MiB)
        self.f = open(self.path, "wb")  # noqa: SIM115 - kept open across the grow on purpose
        self.f.write(self.before)
        self.f.flush()
        os.fsync(self.f.fileno())

    def finish(self) -> bytes:
        self.f.write(b"written after the grow\n")
        self.f.flush()
        os.fsync(self.f.fileno())
        self.f.close()
        return self.before + b"written after the grow\n"


def assert_unchanged_and_mounted(env, m, img: str, size: int) -> None:
    assert os.stat(img).st_size == size
    assert loop_size(m.loop_device) == size
    assert oracle.fstype_at(m.mountpoint) is not None
    assert [d.disk_id for d in mounted_disks(env.state)] == [m.disk_id]


def expect_refusal(disk_id: int, size: int, state: str, err: int, *words: str) -> StorageError:
    with pytest.raises(StorageError) as ei:
        grow_disk(disk_id, size, state)
    e = ei.value
    assert e.errno == err, e
    for w in words:
        assert w in str(e), (w, str(e))
    return e


# --- raw images --------------------------------------------------------------------------------

@pytest.mark.parametrize("fs", ["ext4", "xfs", "btrfs"])
def test_raw_image_grows_online_with_a_file_held_open(env, fs):
    need_fs(fs)
    size = GROW_SIZES_MIB[fs] * MiB
    img = images.fs_image(env.path(f"disk.0.{fs}"), fs, GROW_SIZES_MIB[fs])
    m = mount_disk(DiskSpec(0, img), env.mnt(0), env.state)
    held = Held(m.mountpoint)
    seen_before = fs_bytes(m.mountpoint)
    try:
        new = size + 48 * MiB
        r = grow_disk(0, new, env.state)
        assert (r.disk_id, r.format, r.fs_type) == (0, "raw", fs)
        assert (r.old_image_size, r.new_image_size) == (size, new)
        assert r.old_fs_size == size and size < r.new_fs_size <= new
        assert [a.split(":")[0] for a in r.actions] == ["image", m.loop_device, f"{fs} filesystem"]
        # the container's view: statvfs of the same mount, no remount
        assert fs_bytes(m.mountpoint) >= seen_before + 40 * MiB
        st = os.stat(img)
        assert st.st_size == new and st.st_blocks * 512 < new  # still sparse
        assert loop_size(m.loop_device) == new
        data = held.finish()
        rec = record(env, 0)
        assert rec["image_size"] == new and rec["grown"]["fs_size"] == r.new_fs_size
        # the same size again: nothing to do, nothing done
        again = grow_disk(0, new, env.state)
        assert again.actions == () and not again.changed
        assert (again.old_image_size, again.new_fs_size) == (new, r.new_fs_size)
        assert record(env, 0) == rec
    finally:
        if not held.f.closed:
            held.f.close()
        unmount_disk(0, env.state)
    m2 = mount_disk(DiskSpec(0, img), env.mnt(0), env.state)
    try:
        with open(os.path.join(m2.mountpoint, "held"), "rb") as f:
            assert f.read() == data
        assert fs_bytes(m2.mountpoint) >= seen_before + 40 * MiB
    finally:
        unmount_disk(0, env.state)


def test_raw_image_already_truncated_by_oned(env):
    """oned's TM resize truncates the image first: only the loop and the filesystem follow."""
    need_fs("xfs")
    img = images.fs_image(env.path("disk.1"), "xfs")
    m = mount_disk(DiskSpec(1, img), env.mnt(1), env.state)
    before = fs_bytes(m.mountpoint)
    try:
        os.truncate(img, 352 * MiB)
        r = grow_disk(1, 352 * MiB, env.state)
        assert r.old_image_size == r.new_image_size == 352 * MiB
        assert [a.split(" ")[0] for a in r.actions] == [m.loop_device + ":", "xfs"]
        assert r.new_fs_size == 352 * MiB and fs_bytes(m.mountpoint) >= before + 24 * MiB
    finally:
        unmount_disk(1, env.state)


def test_shrinking_is_refused_and_changes_nothing(env):
    need_fs("xfs")
    img = images.fs_image(env.path("disk.2"), "xfs")
    m = mount_disk(DiskSpec(2, img), env.mnt(2), env.state)
    try:
        e = expect_refusal(2, 319 * MiB, env.state, errno.EINVAL, "disk 2", "319 MiB",
                           "320 MiB", "shrinking is not supported")
        assert e.filename == img
        assert_unchanged_and_mounted(env, m, img, 320 * MiB)
        assert grow_disk(2, 320 * MiB, env.state).actions == ()
    finally:
        unmount_disk(2, env.state)


def test_bad_arguments_and_missing_disks(env):
    with pytest.raises(ValueError):
        grow_disk(0, 64 * MiB + 1, env.state)
    with pytest.raises(TypeError):
        grow_disk(0, "64M", env.state)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        grow_disk(-1, 64 * MiB, env.state)
    expect_refusal(0, 64 * MiB, env.state, errno.ENOENT, "disk 0 is not mounted")
    img = images.fs_image(env.path("disk.3"), "ext4")
    mount_disk(DiskSpec(3, img), env.mnt(3), env.state)
    unmount_disk(3, env.state)
    expect_refusal(3, 64 * MiB, env.state, errno.ENOENT, "disk 3 is not mounted (no record)")


def test_ext2_cannot_grow_online_and_nothing_changes(env):
    img = images.fs_image(env.path("disk.4"), "ext2")
    m = mount_disk(DiskSpec(4, img), env.mnt(4), env.state)
    try:
        expect_refusal(4, 96 * MiB, env.state, errno.EOPNOTSUPP, "disk 4",
                       "ext2 cannot grow while mounted")
        assert_unchanged_and_mounted(env, m, img, 64 * MiB)
        r = grow_disk(4, 64 * MiB, env.state)  # nothing to grow: fine
        assert r.actions == () and r.old_fs_size == r.new_fs_size == 64 * MiB
    finally:
        unmount_disk(4, env.state)


def test_ext4_without_cap_sys_resource_changes_nothing(env, monkeypatch):
    """The kernel's ext4 online resize needs CAP_SYS_RESOURCE: refused before the image grows."""
    img = images.fs_image(env.path("disk.5"), "ext4")
    m = mount_disk(DiskSpec(5, img), env.mnt(5), env.state)
    monkeypatch.setattr(grow_mod, "has_capability", lambda cap, status=None: False)
    try:
        expect_refusal(5, 96 * MiB, env.state, errno.EPERM, "CAP_SYS_RESOURCE", "disk 5")
        assert_unchanged_and_mounted(env, m, img, 64 * MiB)
        assert grow_disk(5, 64 * MiB, env.state).actions == ()
    finally:
        unmount_disk(5, env.state)


def test_btrfs_below_256_mib_is_refused_first(env):
    images.need("mkfs.btrfs", "btrfs")
    img = images.fs_image(env.path("disk.6"), "btrfs", 160)
    m = mount_disk(DiskSpec(6, img), env.mnt(6), env.state)
    try:
        expect_refusal(6, 192 * MiB, env.state, errno.EINVAL, "less than 256 MiB")
        assert_unchanged_and_mounted(env, m, img, 160 * MiB)
    finally:
        unmount_disk(6, env.state)


def test_failing_tool_leaves_the_disk_mounted_and_a_retry_finishes(env, monkeypatch):
    need_fs("xfs")
    fake = env.path("fakebin")
    os.makedirs(fake)
    with open(os.path.join(fake, "xfs_growfs"), "w") as f:
        f.write("#!/bin/sh\necho 'xfs_growfs: simulated failure' >&2\nexit 3\n")
    os.chmod(os.path.join(fake, "xfs_growfs"), 0o755)
    img = images.fs_image(env.path("disk.7"), "xfs")
    m = mount_disk(DiskSpec(7, img), env.mnt(7), env.state)
    before = fs_bytes(m.mountpoint)
    try:
        monkeypatch.setenv("PATH", f"{fake}:{os.environ['PATH']}")
        with pytest.raises(ToolError) as ei:
            grow_disk(7, 384 * MiB, env.state)
        e = ei.value
        assert e.errno == errno.EIO and e.returncode == 3 and e.argv[0] == "xfs_growfs"
        assert e.filename == m.mountpoint and "simulated failure" in str(e)
        # the layers below grew; the filesystem did not; all still mounted and recorded
        assert os.stat(img).st_size == loop_size(m.loop_device) == 384 * MiB
        assert oracle.fstype_at(m.mountpoint) == "xfs"
        assert fs_bytes(m.mountpoint) == before
        assert [d.disk_id for d in mounted_disks(env.state)] == [7]
        monkeypatch.undo()
        r = grow_disk(7, 384 * MiB, env.state)
        assert r.actions == ("xfs filesystem: 320 MiB -> 384 MiB (xfs_growfs)",)
        assert fs_bytes(m.mountpoint) >= before + 56 * MiB
    finally:
        monkeypatch.undo()
        unmount_disk(7, env.state)


def test_grow_from_another_process(env):
    """The driver's resize_disk runs in a later process than the deploy that mounted."""
    need_fs("xfs")
    img = images.fs_image(env.path("disk.8"), "xfs")
    m = mount_disk(DiskSpec(8, img), env.mnt(8), env.state)
    before = fs_bytes(m.mountpoint)
    try:
        code = ("import sys; from lxcone.storage import grow_disk; "
                "r = grow_disk(8, 336 << 20, sys.argv[1]); print(len(r.actions))")
        out = subprocess.run([sys.executable, "-c", code, env.state], check=True,
                             capture_output=True, text=True, timeout=60)
        assert out.stdout.strip() == "3"
        assert fs_bytes(m.mountpoint) >= before + 8 * MiB
    finally:
        unmount_disk(8, env.state)


# --- qcow2 ------------------------------------------------------------------------------------

def qemu_img_size(img: str, shared: bool) -> int:
    out = images.run("qemu-img", "info", *(["-U"] if shared else []), "--output", "json", img)
    return json.loads(out)["virtual-size"]


def test_qcow2_grows_through_the_daemon(env):
    need_fs("xfs")
    raw = images.fs_image(env.path("base.raw"), "xfs")
    img = images.qcow2(raw, env.path("disk.9"))
    m = mount_disk(DiskSpec(9, img), env.mnt(9), env.state)
    before = fs_bytes(m.mountpoint)
    held = Held(m.mountpoint)
    export = record(env, 9)["qsd"]["export"]
    try:
        r = grow_disk(9, 384 * MiB, env.state)
        assert (r.format, r.old_image_size, r.new_image_size) == ("qcow2", 320 * MiB, 384 * MiB)
        assert "block_resize" in r.actions[0] and "LOOP_SET_CAPACITY" in r.actions[1]
        assert r.new_fs_size == 384 * MiB
        assert os.stat(export).st_size == 384 * MiB  # the FUSE export shows it
        assert qemu_img_size(img, shared=True) == 384 * MiB
        assert loop_size(m.loop_device) == 384 * MiB
        assert fs_bytes(m.mountpoint) >= before + 56 * MiB
        data = held.finish()
        assert grow_disk(9, 384 * MiB, env.state).actions == ()
        expect_refusal(9, 352 * MiB, env.state, errno.EINVAL, "shrinking is not supported",
                       "384 MiB")
        assert qemu_img_size(img, shared=True) == 384 * MiB
    finally:
        if not held.f.closed:
            held.f.close()
        unmount_disk(9, env.state)
    assert qemu_img_size(img, shared=False) == 384 * MiB
    m2 = mount_disk(DiskSpec(9, img), env.mnt(9), env.state)
    try:
        with open(os.path.join(m2.mountpoint, "held"), "rb") as f:
            assert f.read() == data
        assert fs_bytes(m2.mountpoint) >= before + 56 * MiB
    finally:
        unmount_disk(9, env.state)


def test_qcow2_resized_by_qemu_img_before_mount(env):
    """``qemu-img resize`` ran while the disk was not mounted (it cannot while qsd holds the
    image): the loop already has the size, only the filesystem grows."""
    need_fs("btrfs")
    raw = images.fs_image(env.path("base.raw"), "btrfs", 256)
    img = images.qcow2(raw, env.path("disk.10"))
    images.run("qemu-img", "resize", "-q", img, "288M")
    m = mount_disk(DiskSpec(10, img), env.mnt(10), env.state)
    before = fs_bytes(m.mountpoint)
    try:
        # what oned's TM would try with the disk mounted: the daemon's lock refuses it
        res = subprocess.run(["qemu-img", "resize", "-q", img, "320M"], check=False,
                             capture_output=True, text=True)
        assert res.returncode != 0 and "lock" in res.stderr
        r = grow_disk(10, 288 * MiB, env.state)
        assert r.old_image_size == 288 * MiB
        assert r.actions == ("btrfs filesystem: 256 MiB -> 288 MiB (btrfs)",)
        assert fs_bytes(m.mountpoint) >= before + 24 * MiB
        assert grow_disk(10, 288 * MiB, env.state).actions == ()
    finally:
        unmount_disk(10, env.state)


# --- partitioned images ------------------------------------------------------------------------

@pytest.mark.parametrize(("label", "fs"), [("gpt", "btrfs"), ("dos", "xfs")])
def test_last_partition_grows(env, label, fs):
    need_fs(fs)
    images.need("sfdisk")
    part = images.fs_image(env.path(f"p2.{fs}"), fs, GROW_SIZES_MIB[fs])
    disk = env.path(f"disk.{label}")
    total = GROW_SIZES_MIB[fs] + 10
    images.partitioned(disk, label, [(8, None, "L"), (GROW_SIZES_MIB[fs], part, "L")],
                       total_mib=total)
    m = mount_disk(DiskSpec(11, disk), env.mnt(11), env.state)
    assert m.partition_device == f"{m.loop_device}p2"
    held = Held(m.mountpoint)
    before = fs_bytes(m.mountpoint)
    try:
        r = grow_disk(11, (total + 40) * MiB, env.state)
        kinds = [a.split(" ")[0] for a in r.actions]
        assert kinds == ["image:", m.loop_device + ":", "partition", m.partition_device + ":",
                         fs], r.actions
        assert "sfdisk" in r.actions[2] and "BLKPG_RESIZE_PARTITION" in r.actions[3]
        table = json.loads(images.run("sfdisk", "-J", disk))["partitiontable"]
        _p1, p2 = table["partitions"]
        with open(f"/sys/class/block/{os.path.basename(m.partition_device)}/size") as f:
            assert int(f.read()) == p2["size"]
        assert (p2["start"] + p2["size"]) * 512 > (total + 39) * MiB
        assert r.new_fs_size > r.old_fs_size + 38 * MiB
        assert fs_bytes(m.mountpoint) > before + 38 * MiB
        assert record(env, 11)["partition"]["size"] == p2["size"] * 512
        if label == "gpt":
            images.run("sfdisk", "--verify", disk)  # backup header moved to the new end
        held.finish()
        assert grow_disk(11, (total + 40) * MiB, env.state).actions == ()
    finally:
        if not held.f.closed:
            held.f.close()
        unmount_disk(11, env.state)


def test_partition_that_is_not_the_last_is_refused(env):
    need_fs("xfs")
    images.need("sfdisk")
    part = images.fs_image(env.path("p1.xfs"), "xfs")
    disk = env.path("disk.12")
    images.partitioned(disk, "gpt", [(320, part, "L"), (8, None, "L")], total_mib=330)
    m = mount_disk(DiskSpec(12, disk), env.mnt(12), env.state)
    assert m.partition_device == f"{m.loop_device}p1"
    table_before = images.run("sfdisk", "-d", disk)
    try:
        expect_refusal(12, 400 * MiB, env.state, errno.EOPNOTSUPP, "disk 12",
                       "partition 2 lies after partition 1", PARTITION_ONLY_LAST)
        assert_unchanged_and_mounted(env, m, disk, 330 * MiB)
        assert images.run("sfdisk", "-d", disk) == table_before
        # nothing to grow at the current size: not an error
        assert grow_disk(12, 330 * MiB, env.state).actions == ()
    finally:
        unmount_disk(12, env.state)


def test_primary_partition_before_an_empty_extended_one_is_refused(env):
    need_fs("xfs")
    images.need("sfdisk")
    part = images.fs_image(env.path("p1.xfs"), "xfs")
    disk = env.path("disk.18")
    images.partitioned(disk, "dos", [(320, part, "L"), (8, None, "E")], total_mib=330)
    m = mount_disk(DiskSpec(18, disk), env.mnt(18), env.state)
    try:
        expect_refusal(18, 400 * MiB, env.state, errno.EOPNOTSUPP,
                       "extended partition 2 lies after partition 1", PARTITION_ONLY_LAST)
        assert_unchanged_and_mounted(env, m, disk, 330 * MiB)
    finally:
        unmount_disk(18, env.state)


def test_qcow2_with_a_partition_table(env):
    """sfdisk edits the table through the FUSE export; the export, loop and partition follow."""
    need_fs("btrfs")
    images.need("sfdisk")
    part = images.fs_image(env.path("p1.btrfs"), "btrfs", 256)
    disk = env.path("disk.raw")
    images.partitioned(disk, "gpt", [(256, part, "L")], total_mib=260)
    img = images.qcow2(disk, env.path("disk.13"))
    m = mount_disk(DiskSpec(13, img), env.mnt(13), env.state)
    before = fs_bytes(m.mountpoint)
    try:
        r = grow_disk(13, 300 * MiB, env.state)
        assert len(r.actions) == 5 and "block_resize" in r.actions[0]
        assert r.new_fs_size > r.old_fs_size + 38 * MiB
        assert fs_bytes(m.mountpoint) >= before + 38 * MiB
        assert grow_disk(13, 300 * MiB, env.state).actions == ()
    finally:
        unmount_disk(13, env.state)
    out = env.path("back.raw")
    images.run("qemu-img", "convert", "-O", "raw", img, out)
    images.run("sfdisk", "--verify", out)
    assert os.stat(out).st_size == 300 * MiB


# --- what has nothing to grow, or must not --------------------------------------------------

def test_directory_disk_has_nothing_to_grow(env):
    src = env.path("dir.14")
    os.makedirs(src)
    mount_disk(DiskSpec(14, src), env.mnt(14), env.state)
    try:
        r = grow_disk(14, 1 << 30, env.state)
        assert (r.format, r.actions, r.old_image_size, r.new_fs_size) == ("dir", (), None, None)
        assert r.note and "nothing to grow" in r.note
    finally:
        unmount_disk(14, env.state)


def test_iso_and_read_only_disks_are_refused(env):
    ctx = env.path("ctx")
    os.makedirs(ctx)
    images.write_file(os.path.join(ctx, "context.sh"), "X=1\n")
    iso = images.iso(ctx, env.path("disk.15"))
    mount_disk(DiskSpec(15, iso), env.mnt(15), env.state)
    img = images.fs_image(env.path("disk.16"), "ext4")
    m = mount_disk(DiskSpec(16, img, readonly=True), env.mnt(16), env.state)
    try:
        size = os.stat(iso).st_size
        expect_refusal(15, 1 << 30, env.state, errno.EROFS, "disk 15", "ISO")
        assert os.stat(iso).st_size == size
        expect_refusal(16, 96 * MiB, env.state, errno.EROFS, "disk 16", "read-only")
        assert os.stat(img).st_size == loop_size(m.loop_device) == 64 * MiB
    finally:
        unmount_disk(16, env.state)
        unmount_disk(15, env.state)


def test_a_disk_unmounted_behind_our_back_is_not_grown(env):
    img = images.fs_image(env.path("disk.17"), "ext4")
    m = mount_disk(DiskSpec(17, img), env.mnt(17), env.state)
    try:
        subprocess.run(["umount", m.mountpoint], check=True)
        expect_refusal(17, 96 * MiB, env.state, errno.ENXIO, "disk 17",
                       "not mounted as recorded")
        assert os.stat(img).st_size == 64 * MiB
    finally:
        unmount_disk(17, env.state)
