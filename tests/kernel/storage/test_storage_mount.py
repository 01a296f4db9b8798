"""mount_disk / unmount_disk / mounted_disks against the real kernel: every format, read-only,
idempotence, another process, busy filesystems, and failures that must leave nothing behind
(the env fixture's oracle checks loops, partitions, mounts and qemu-storage-daemon after each)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import subprocess
import sys

import pytest

from lxcone.storage import (
    DiskBusy,
    DiskSpec,
    MountedDisk,
    StorageError,
    mount_disk,
    mounted_disks,
    unmount_disk,
)
from lxcone.testing import images
from lxcone.testing.fixtures import needs_root

from . import storage_oracle as oracle

pytestmark = [pytest.mark.root, needs_root]


def sha(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def assert_gone(env, m: MountedDisk) -> None:
    """Everything mount_disk made for ``m`` is gone (the fixture re-checks the whole dir)."""
    assert oracle.fstype_at(m.mountpoint) is None
    assert not os.path.exists(m.mountpoint), "mount point made by mount_disk not removed"
    assert not os.path.exists(os.path.join(env.state, f"disk.{m.disk_id}.json"))
    assert oracle.loops_under(str(env.root)) == {}
    if m.partition_device:
        assert not os.path.exists(f"/sys/class/block/{os.path.basename(m.partition_device)}")
    if m.qsd_pid:
        assert not oracle.process_alive(m.qsd_pid)
        assert [n for n in os.listdir(env.state) if n.startswith(f"disk.{m.disk_id}.")] == []


def assert_read_only(path: str) -> None:
    with pytest.raises(OSError) as ei, open(path, "w"):
        pass
    assert ei.value.errno == errno.EROFS


def py(*code_and_args: str) -> subprocess.CompletedProcess[str]:
    """Run Python code in a fresh interpreter (another process, as the driver's next action)."""
    return subprocess.run([sys.executable, "-c", *code_and_args], check=False,
                          capture_output=True, text=True, timeout=60)


# --- formats ----------------------------------------------------------------------------------

@pytest.mark.parametrize("fs", ["ext4", "xfs", "btrfs", "ext2", "ext3"])
def test_raw_image_mounts_writes_and_unmounts(env, busybox_rootfs, fs):
    """Also OpenNebula's volatile disks (TYPE=fs): a freshly formatted image, mounted as is."""
    populate = busybox_rootfs if fs in ("ext4", "btrfs") else None
    img = images.fs_image(env.path(f"disk.0.{fs}"), fs, populate=populate)
    m = mount_disk(DiskSpec(0, img), env.mnt(0), env.state)
    assert (m.format, m.fs_type, m.readonly, m.partition_device, m.qsd_pid) == \
        ("raw", fs, False, None, None)
    assert m.loop_device and oracle.loops_under(str(env.root)) == \
        {os.path.basename(m.loop_device): img}
    assert oracle.fstype_at(m.mountpoint) in (fs, "ext4")  # ext2/3 may be served by ext4
    assert not oracle.loop_readonly(m.loop_device)
    if populate:
        assert os.path.isfile(os.path.join(m.mountpoint, "bin", "busybox"))
    images.write_file(os.path.join(m.mountpoint, "hello"), "world\n")
    assert mounted_disks(env.state) == [m]
    unmount_disk(0, env.state)
    assert_gone(env, m)
    assert mounted_disks(env.state) == []
    m2 = mount_disk(DiskSpec(0, img, format="raw", fs_type=fs), env.mnt(0), env.state)
    with open(os.path.join(m2.mountpoint, "hello")) as f:
        assert f.read() == "world\n"
    unmount_disk(0, env.state)
    assert_gone(env, m2)


@pytest.mark.parametrize("label", ["dos", "gpt"])
def test_partitioned_image_one_ext4_partition(env, busybox_rootfs, label):
    part = images.fs_image(env.path("p1.ext4"), "ext4", 48, populate=busybox_rootfs)
    disk = env.path(f"disk.{label}")
    images.partitioned(disk, label, [(48, part, "L")], total_mib=64)
    before = oracle.loop_partitions()
    m = mount_disk(DiskSpec(1, disk), env.mnt(1), env.state)
    assert m.fs_type == "ext4" and m.partition_device == f"{m.loop_device}p1"
    assert os.path.isfile(os.path.join(m.mountpoint, "bin", "busybox"))
    assert oracle.loop_partitions() - before == {os.path.basename(m.partition_device)}
    unmount_disk(1, env.state)
    assert_gone(env, m)
    assert oracle.loop_partitions() - before == set()


@pytest.mark.parametrize("label", ["dos", "gpt"])
def test_partition_rule_and_explicit_partition(env, label):
    xfs = images.fs_image(env.path("p2.xfs"), "xfs")
    ext = images.fs_image(env.path("p3.ext4"), "ext4", 16)
    disk = env.path("disk.multi")
    # p1: raw space without a filesystem, p2: xfs, p3: ext4
    images.partitioned(disk, label, [(8, None, "L"), (320, xfs, "L"), (16, ext, "L")],
                       total_mib=400)
    m = mount_disk(DiskSpec(2, disk), env.mnt(2), env.state)
    assert (m.fs_type, m.partition_device) == ("xfs", f"{m.loop_device}p2")
    unmount_disk(2, env.state)
    assert_gone(env, m)
    m = mount_disk(DiskSpec(2, disk, partition=3, readonly=True), env.mnt(2), env.state)
    assert (m.fs_type, m.partition_device) == ("ext4", f"{m.loop_device}p3")
    unmount_disk(2, env.state)
    assert_gone(env, m)
    for bad in (1, 4):  # no filesystem / no such partition
        with pytest.raises(StorageError) as ei:
            mount_disk(DiskSpec(2, disk, partition=bad), env.mnt(2), env.state)
        assert ei.value.errno in (errno.EMEDIUMTYPE, errno.ENXIO)
        assert not os.path.exists(env.mnt(2))


def kernel_has(fs: str) -> bool:
    with open("/proc/filesystems") as f:
        return fs in f.read().split()


def test_vfat_whole_device_is_not_mistaken_for_an_mbr(env):
    img = images.fs_image(env.path("fat.img"), "vfat")
    if not kernel_has("vfat"):  # the project's kernels: a clear error before any loop exists
        e = expect_failure(env, DiskSpec(3, img), "check filesystem", errno.ENODEV)
        assert "no vfat driver" in str(e)
        return
    m = mount_disk(DiskSpec(3, img), env.mnt(3), env.state)
    assert (m.fs_type, m.partition_device) == ("vfat", None)
    unmount_disk(3, env.state)
    assert_gone(env, m)


def test_qcow2_through_qemu_storage_daemon(env, busybox_rootfs):
    raw = images.fs_image(env.path("base.raw"), "ext4", populate=busybox_rootfs)
    img = images.qcow2(raw, env.path("disk.4"))
    m = mount_disk(DiskSpec(4, img), env.mnt(4), env.state)
    assert (m.format, m.fs_type) == ("qcow2", "ext4") and m.qsd_pid
    assert oracle.process_alive(m.qsd_pid) and oracle.qsd_under(str(env.root)) == [m.qsd_pid]
    export = os.path.join(env.state, "disk.4.export")
    assert oracle.fstype_at(export) == "fuse"
    assert oracle.loops_under(str(env.root)) == {os.path.basename(m.loop_device): export}
    assert os.path.isfile(os.path.join(m.mountpoint, "bin", "busybox"))
    images.write_file(os.path.join(m.mountpoint, "in-qcow2"), "yes\n")
    unmount_disk(4, env.state)
    assert_gone(env, m)
    images.run("qemu-img", "check", "-q", img)  # consistent after the daemon's shutdown
    m = mount_disk(DiskSpec(4, img, format="qcow2", readonly=True), env.mnt(4), env.state)
    assert oracle.loop_readonly(m.loop_device)
    with open(os.path.join(m.mountpoint, "in-qcow2")) as f:
        assert f.read() == "yes\n"
    assert_read_only(os.path.join(m.mountpoint, "nope"))
    unmount_disk(4, env.state)
    assert_gone(env, m)


def test_qcow2_with_a_backing_file(env):
    raw = images.fs_image(env.path("base.raw"), "ext4")
    base = images.qcow2(raw, env.path("base.qcow2"))
    top = images.qcow2(None, env.path("disk.5"), backing=base)
    m = mount_disk(DiskSpec(5, top), env.mnt(5), env.state)
    images.write_file(os.path.join(m.mountpoint, "top-only"), "x\n")
    unmount_disk(5, env.state)
    assert_gone(env, m)
    base_sum = sha(base)
    m = mount_disk(DiskSpec(5, top), env.mnt(5), env.state)
    assert os.path.exists(os.path.join(m.mountpoint, "top-only"))
    unmount_disk(5, env.state)
    assert sha(base) == base_sum  # writes went to the overlay only


def test_directory_bind_mount_and_readonly(env):
    src = env.path("disk.6")
    os.makedirs(os.path.join(src, "etc"))
    images.write_file(os.path.join(src, "etc", "hostname"), "vm6\n")
    m = mount_disk(DiskSpec(6, src), env.mnt(6), env.state)
    assert (m.format, m.loop_device, m.qsd_pid) == ("dir", None, None) and m.fs_type
    images.write_file(os.path.join(m.mountpoint, "new"), "through the bind\n")
    assert os.path.exists(os.path.join(src, "new"))
    unmount_disk(6, env.state)
    assert_gone(env, m)
    m = mount_disk(DiskSpec(6, src, readonly=True), env.mnt(6), env.state)
    assert "ro" in oracle.mount_options_at(m.mountpoint)
    with open(os.path.join(m.mountpoint, "etc", "hostname")) as f:
        assert f.read() == "vm6\n"
    assert_read_only(os.path.join(m.mountpoint, "etc", "hostname"))
    unmount_disk(6, env.state)
    assert_gone(env, m)
    assert sorted(os.listdir(src)) == ["etc", "new"]


def test_iso_context_disk_is_read_only(env):
    ctx = env.path("context")
    os.makedirs(ctx)
    images.write_file(os.path.join(ctx, "context.sh"), "HOSTNAME='vm7'\nETH0_IP='10.0.0.7'\n")
    os.symlink("context.sh", os.path.join(ctx, "ssh-link"))
    os.makedirs(os.path.join(ctx, "sub"))
    images.write_file(os.path.join(ctx, "sub", "Init_Script.With.Long-Name.sh"), "#!/bin/sh\n")
    iso = images.iso(ctx, env.path("disk.7"))
    m = mount_disk(DiskSpec(7, iso), env.mnt(7), env.state)  # readonly not even asked for
    assert (m.format, m.fs_type, m.readonly) == ("iso", "iso9660", True)
    assert "ro" in oracle.mount_options_at(m.mountpoint)
    if kernel_has("iso9660"):
        assert oracle.loop_readonly(m.loop_device) and oracle.fstype_at(m.mountpoint) == "iso9660"
    else:  # extracted into the state dir and bound read-only, no loop
        assert m.loop_device is None and os.path.isdir(os.path.join(env.state, "disk.7.iso.d"))
    with open(os.path.join(m.mountpoint, "context.sh")) as f:
        assert "HOSTNAME='vm7'" in f.read()
    assert os.readlink(os.path.join(m.mountpoint, "ssh-link")) == "context.sh"
    assert os.path.isfile(os.path.join(m.mountpoint, "sub", "Init_Script.With.Long-Name.sh"))
    assert_read_only(os.path.join(m.mountpoint, "x"))
    unmount_disk(7, env.state)
    assert_gone(env, m)
    assert os.listdir(env.state) == []


def test_readonly_raw_is_really_read_only(env):
    img = images.fs_image(env.path("disk.8"), "ext4")
    before = sha(img)
    m = mount_disk(DiskSpec(8, img, readonly=True), env.mnt(8), env.state)
    assert m.readonly and oracle.loop_readonly(m.loop_device)
    assert "ro" in oracle.mount_options_at(m.mountpoint)
    assert_read_only(os.path.join(m.mountpoint, "x"))
    # not even root can flip it back: the loop device itself is read-only
    r = subprocess.run(["mount", "-o", "remount,rw", m.mountpoint], check=False,
                       capture_output=True)
    assert r.returncode != 0 and "ro" in oracle.mount_options_at(m.mountpoint)
    unmount_disk(8, env.state)
    assert_gone(env, m)
    assert sha(img) == before


# --- idempotence, other processes, busy -------------------------------------------------------

def test_mount_and_unmount_are_idempotent(env):
    img = images.fs_image(env.path("disk.9"), "ext4")
    m1 = mount_disk(DiskSpec(9, img), env.mnt(9), env.state)
    m2 = mount_disk(DiskSpec(9, img), env.mnt(9), env.state)
    assert m1 == m2
    assert oracle.mounts_under(str(env.root)) == [m1.mountpoint]
    assert len(oracle.loops_under(str(env.root))) == 1
    with pytest.raises(StorageError) as ei:  # same disk id elsewhere: refused, nothing added
        mount_disk(DiskSpec(9, img), env.mnt(99), env.state)
    assert ei.value.errno == errno.EBUSY and not os.path.exists(env.mnt(99))
    other = images.fs_image(env.path("other"), "ext4")
    with pytest.raises(StorageError) as ei:  # something else is mounted at that mount point
        mount_disk(DiskSpec(10, other), env.mnt(9), env.state)
    assert ei.value.errno == errno.EBUSY
    assert len(oracle.loops_under(str(env.root))) == 1
    unmount_disk(9, env.state)
    unmount_disk(9, env.state)
    unmount_disk(1234, env.state)
    unmount_disk(9, env.path("no-such-state-dir"))
    assert_gone(env, m1)


@pytest.mark.parametrize("fmt", ["raw", "qcow2"])
def test_one_image_under_two_disk_ids_is_refused(env, fmt):
    img = images.fs_image(env.path("img"), "ext4")
    if fmt == "qcow2":
        img = images.qcow2(img, env.path("img.qcow2"))
    m = mount_disk(DiskSpec(15, img), env.mnt(15), env.state)
    for ro in (False, True):  # a writer is mounted: neither a second writer nor a reader
        e = expect_failure(env, DiskSpec(16, img, readonly=ro), err=errno.EBUSY,
                           allowed_mounts=[m.mountpoint,
                                           os.path.join(env.state, "disk.15.export")],
                           allowed_loops=1, allowed_qsd=int(fmt == "qcow2"))
        assert e.step == ("check image" if fmt == "raw" else "qemu-storage-daemon")
    unmount_disk(15, env.state)
    m = mount_disk(DiskSpec(15, img, readonly=True), env.mnt(15), env.state)
    m2 = mount_disk(DiskSpec(16, img, readonly=True), env.mnt(16), env.state)  # readers share
    unmount_disk(15, env.state)
    unmount_disk(16, env.state)
    assert_gone(env, m)
    assert_gone(env, m2)


@pytest.mark.parametrize("fmt", ["raw", "qcow2", "dir", "partitioned"])
def test_unmount_from_another_process(env, fmt):
    if fmt == "dir":
        src = env.path("disk.11")
        os.makedirs(src)
    elif fmt == "partitioned":
        part = images.fs_image(env.path("p1"), "ext4", 16)
        src = env.path("disk.11")
        images.partitioned(src, "gpt", [(16, part, "L")], total_mib=32)
    else:
        src = images.fs_image(env.path("raw.11"), "ext4")
        if fmt == "qcow2":
            src = images.qcow2(src, env.path("disk.11"))
    m = mount_disk(DiskSpec(11, src), env.mnt(11), env.state)
    r = py("import sys\n"
           "from lxcone.storage import mounted_disks, unmount_disk\n"
           "assert [d.disk_id for d in mounted_disks(sys.argv[1])] == [11]\n"
           "unmount_disk(11, sys.argv[1])\n", env.state)
    assert r.returncode == 0, r.stderr
    assert_gone(env, m)


def test_mount_in_another_process_unmount_here(env):
    img = images.qcow2(images.fs_image(env.path("raw"), "ext4"), env.path("disk.12"))
    r = py("import sys\n"
           "from lxcone.storage import DiskSpec, mount_disk\n"
           "print(mount_disk(DiskSpec(12, sys.argv[1]), sys.argv[2], sys.argv[3]).qsd_pid)\n",
           img, env.mnt(12), env.state)
    assert r.returncode == 0, r.stderr
    [m] = mounted_disks(env.state)
    assert m.qsd_pid == int(r.stdout) and oracle.process_alive(m.qsd_pid)
    assert mount_disk(DiskSpec(12, img), env.mnt(12), env.state) == m  # idempotent across
    unmount_disk(12, env.state)
    assert_gone(env, m)


def test_busy_raw_unmount_raises_then_lazy_works(env):
    img = images.fs_image(env.path("disk.13"), "ext4")
    m = mount_disk(DiskSpec(13, img), env.mnt(13), env.state)
    busy = open(os.path.join(m.mountpoint, "open-file"), "w")  # noqa: SIM115 - kept open on purpose
    try:
        with pytest.raises(DiskBusy) as ei:
            unmount_disk(13, env.state)
        assert ei.value.errno == errno.EBUSY and isinstance(ei.value, StorageError)
        assert oracle.fstype_at(m.mountpoint) == "ext4" and mounted_disks(env.state) == [m]
        unmount_disk(13, env.state, lazy=True)
        assert oracle.fstype_at(m.mountpoint) is None and mounted_disks(env.state) == []
        # the detached filesystem lives on for the open file, and its loop with it
        assert oracle.loops_under(str(env.root)) == {os.path.basename(m.loop_device): img}
        busy.write("still writable\n")
    finally:
        busy.close()
    assert oracle.loops_under(str(env.root)) == {}  # autoclear on the last close
    assert_gone(env, m)


def test_busy_qcow2_lazy_unmount_keeps_the_daemon_until_released(env):
    img = images.qcow2(images.fs_image(env.path("raw"), "ext4"), env.path("disk.14"))
    m = mount_disk(DiskSpec(14, img), env.mnt(14), env.state)
    busy = os.open(m.mountpoint, os.O_RDONLY | os.O_DIRECTORY)
    try:
        with pytest.raises(DiskBusy):
            unmount_disk(14, env.state)
        unmount_disk(14, env.state, lazy=True)
        assert oracle.fstype_at(m.mountpoint) is None
        # the loop still reads through the export: the daemon and the record must stay
        assert oracle.process_alive(m.qsd_pid)
        assert [d.disk_id for d in mounted_disks(env.state)] == [14]
    finally:
        os.close(busy)
    unmount_disk(14, env.state)
    assert_gone(env, m)


# --- failures leave nothing behind ------------------------------------------------------------

def expect_failure(env, spec: DiskSpec, step: str | None = None, err: int | None = None,
                   state: str | None = None, allowed_mounts: list[str] | None = None,
                   allowed_loops: int = 0, allowed_qsd: int = 0) -> StorageError:
    """mount_disk fails with StorageError(step, err) and leaves nothing (beyond what the test
    itself has mounted: ``allowed_mounts``, ``allowed_loops``)."""
    state = state or env.state
    before_records = len(mounted_disks(state))
    with pytest.raises(StorageError) as ei:
        mount_disk(spec, env.mnt(spec.disk_id), state)
    e = ei.value
    assert isinstance(e, OSError) and e.errno and e.step and e.filename
    if step:
        assert e.step == step, e
    if err:
        assert e.errno == err, e
    assert not os.path.exists(env.mnt(spec.disk_id))
    assert len(mounted_disks(state)) == before_records
    allowed = allowed_mounts or []
    assert [p for p in oracle.mounts_under(str(env.root))
            if not p.startswith(env.path("tiny")) and p not in allowed] == []
    assert len(oracle.loops_under(str(env.root))) == allowed_loops
    assert len(oracle.qsd_under(str(env.root))) == allowed_qsd
    return e


def test_missing_image(env):
    expect_failure(env, DiskSpec(20, env.path("nope")), "stat source", errno.ENOENT)


def test_unknown_filesystem(env):
    img = images.sparse_file(env.path("zeros"), 32 << 20)
    e = expect_failure(env, DiskSpec(21, img), "detect filesystem", errno.EMEDIUMTYPE)
    assert "no known filesystem" in str(e)


def test_corrupt_image(env):
    img = images.fs_image(env.path("corrupt"), "ext4")
    with open(img, "r+b") as f:  # s_blocks_per_group = 0: magic intact, superblock broken
        f.seek(1024 + 0x20)
        f.write(bytes(4))
    e = expect_failure(env, DiskSpec(22, img), "mount")
    assert "ext4" in str(e)


def test_wrong_explicit_fs_type(env):
    img = images.fs_image(env.path("xfs-as-ext4"), "xfs")
    expect_failure(env, DiskSpec(23, img, fs_type="ext4"), "mount")


def test_qcow2_with_a_bad_backing_file(env):
    top = images.qcow2(None, env.path("disk.24"), backing=env.path("gone.qcow2"), unsafe=True)
    e = expect_failure(env, DiskSpec(24, top), "qemu-storage-daemon", errno.ENOENT)
    assert "gone.qcow2" in str(e)
    assert os.listdir(env.state) == []


def test_not_a_qcow2(env):
    img = images.fs_image(env.path("raw-called-qcow2"), "ext4")
    expect_failure(env, DiskSpec(25, img, format="qcow2"), "qemu-storage-daemon")


@pytest.mark.parametrize(("fmt", "nr_inodes", "step"), [
    ("raw", 1, "write record"),  # full before anything: the first record cannot be written
    ("raw", 2, "write record"),  # full after the first record: the loop is attached by then
    ("qcow2", 2, "qemu-storage-daemon"),  # no inode for the export file
    ("qcow2", 3, "qemu-storage-daemon"),  # qsd cannot write its pidfile
])
def test_full_state_dir(env, tiny_fs, fmt, nr_inodes, step):
    img = images.fs_image(env.path("img"), "ext4")
    if fmt == "qcow2":
        img = images.qcow2(img, env.path("img.qcow2"))
    state = tiny_fs("tiny", nr_inodes)
    e = expect_failure(env, DiskSpec(26, img), step, state=state)
    assert e.errno == errno.ENOSPC or "No space" in str(e) or fmt == "qcow2", e
    assert os.listdir(state) == []


def test_mountpoint_is_a_file(env):
    img = images.fs_image(env.path("img"), "ext4")
    os.makedirs(os.path.dirname(env.mnt(27)))
    images.write_file(env.mnt(27), "")
    with pytest.raises(StorageError) as ei:
        mount_disk(DiskSpec(27, img), env.mnt(27), env.state)
    assert ei.value.errno == errno.ENOTDIR and mounted_disks(env.state) == []
    os.unlink(env.mnt(27))


@pytest.mark.parametrize("killed_after", ["qsd.start", "disk._mount_fs"])
def test_killed_halfway_then_cleaned_from_the_record(env, killed_after):
    """A process SIGKILLed in the middle of mount_disk: the record lists what exists, the next
    unmount_disk (or mount_disk) finishes the job."""
    img = images.qcow2(images.fs_image(env.path("raw"), "ext4"), env.path("disk.28"))
    mod, func = killed_after.split(".")
    r = py("import os, signal, sys\n"
           f"import lxcone.storage.{mod} as mod\n"
           "from lxcone.storage import DiskSpec, mount_disk\n"
           f"orig = mod.{func}\n"
           "def dying(*a, **kw):\n"
           "    orig(*a, **kw)\n"
           "    os.kill(os.getpid(), signal.SIGKILL)\n"
           f"mod.{func} = dying\n"
           "mount_disk(DiskSpec(28, sys.argv[1]), sys.argv[2], sys.argv[3])\n",
           img, env.mnt(28), env.state)
    assert r.returncode == -9, r.stderr
    [m] = mounted_disks(env.state)
    assert oracle.qsd_under(str(env.root))  # the daemon outlived its starter
    with open(os.path.join(env.state, "disk.28.json")) as f:
        record = json.load(f)
    assert record["state"] == "mounting"
    # the next mount_disk tears the half-done one down and mounts afresh
    m2 = mount_disk(DiskSpec(28, img), env.mnt(28), env.state)
    assert len(oracle.qsd_under(str(env.root))) == 1
    assert oracle.mounts_under(str(env.root)).count(m2.mountpoint) == 1
    unmount_disk(28, env.state)
    assert_gone(env, m2)
    assert m.disk_id == 28
