"""snapshot_create / snapshot_revert / snapshot_delete on scratch file datastores made in the test:
an xfs one (reflink) and an ext4 one (sparse-copy fallback), both loop-mounted with mount_disk."""

from __future__ import annotations

import errno
import json
import os
from collections.abc import Iterator

import pytest

from lxcone.storage import (
    DiskSpec,
    InvalidSnapshotId,
    StorageError,
    mount_disk,
    snapshot_create,
    snapshot_delete,
    snapshot_revert,
    unmount_disk,
)
from lxcone.testing import images
from lxcone.testing.fixtures import needs_root

pytestmark = [pytest.mark.root, needs_root]

DS_DISK_ID = 90


@pytest.fixture(params=["xfs", "ext4"])
def datastore(request, env) -> Iterator[tuple[str, str]]:
    """(datastore dir, its fs): a loop-mounted xfs (reflink=1, mkfs.xfs's default) or ext4."""
    fs = request.param
    img = images.fs_image(env.path(f"ds.{fs}"), fs, 320 if fs == "xfs" else 256)
    ds_state = env.path("ds-state")
    m = mount_disk(DiskSpec(DS_DISK_ID, img), env.path("ds"), ds_state)
    yield m.mountpoint, fs
    unmount_disk(DS_DISK_ID, ds_state, lazy=True)


def manifest(snap_dir: str, snap_id: str) -> dict:
    with open(os.path.join(snap_dir, snap_id, "manifest.json")) as f:
        return json.load(f)


def read(path: str) -> str | None:
    try:
        with open(path) as f:
            return f.read()
    except FileNotFoundError:
        return None


def test_raw_snapshot_create_revert_delete(env, datastore):
    ds, fs = datastore
    vm = os.path.join(ds, "0", "7")
    os.makedirs(vm)
    disk = DiskSpec(0, images.fs_image(os.path.join(vm, "disk.0"), "ext4", 128))
    snaps = os.path.join(vm, "snap")
    mnt = env.mnt(0)

    m = mount_disk(disk, mnt, env.state)
    images.write_file(os.path.join(mnt, "before"), "kept\n")
    # the disk is mounted (a frozen container): flushed through syncfs, then copied
    snapshot_create([disk], "0", snaps, {0: m.mountpoint})
    entry = manifest(snaps, "0")["disks"][0]
    assert entry["method"] == ("reflink" if fs == "xfs" else "sparse-copy")
    assert entry["format"] == "raw" and entry["size"] == os.stat(disk.source).st_size
    copy = os.stat(os.path.join(snaps, "0", "disk.0"))
    assert copy.st_blocks * 512 < copy.st_size  # holes kept either way
    images.write_file(os.path.join(mnt, "after"), "must vanish\n")

    with pytest.raises(StorageError) as ei:  # still mounted: refused, nothing changed
        snapshot_revert([disk], "0", snaps)
    assert ei.value.errno == errno.EBUSY and "unmount it first" in str(ei.value)
    unmount_disk(0, env.state)

    snapshot_revert([disk], "0", snaps)
    m = mount_disk(disk, mnt, env.state)
    assert read(os.path.join(mnt, "before")) == "kept\n"
    assert read(os.path.join(mnt, "after")) is None
    images.write_file(os.path.join(mnt, "second"), "in snapshot 1\n")
    snapshot_create([disk], "1", snaps, {0: m.mountpoint})
    unmount_disk(0, env.state)

    snapshot_delete("0", snaps)
    assert sorted(os.listdir(snaps)) == ["1"]
    snapshot_delete("0", snaps)  # idempotent
    with pytest.raises(StorageError) as ei:
        snapshot_revert([disk], "0", snaps)
    assert ei.value.errno == errno.ENOENT
    snapshot_revert([disk], "1", snaps)  # the other snapshot is intact
    m = mount_disk(disk, mnt, env.state)
    assert read(os.path.join(mnt, "second")) == "in snapshot 1\n"
    unmount_disk(0, env.state)
    snapshot_delete("1", snaps)
    assert os.listdir(snaps) == []


def test_qcow2_and_dir_disks_in_one_snapshot(env):
    base = images.fs_image(env.path("raw"), "ext4")
    q = DiskSpec(1, images.qcow2(base, env.path("disk.1")))
    d = DiskSpec(2, env.path("disk.2"))
    os.makedirs(os.path.join(d.source, "etc"))
    images.write_file(os.path.join(d.source, "etc", "motd"), "v1\n")
    os.symlink("/etc/motd", os.path.join(d.source, "motd-link"))
    snaps = env.path("snaps")

    mq = mount_disk(q, env.mnt(1), env.state)
    md = mount_disk(d, env.mnt(2), env.state)
    images.write_file(os.path.join(mq.mountpoint, "q"), "q1\n")
    snapshot_create([q, d], "s", snaps, {1: mq.mountpoint, 2: md.mountpoint})
    methods = {e["disk_id"]: (e["format"], e["method"]) for e in manifest(snaps, "s")["disks"]}
    assert methods[1][0] == "qcow2" and methods[2] == ("dir", "tree-copy")
    images.write_file(os.path.join(mq.mountpoint, "q"), "q2\n")
    images.write_file(os.path.join(md.mountpoint, "etc", "motd"), "v2\n")
    images.write_file(os.path.join(md.mountpoint, "new"), "x\n")

    for spec in (q, d):  # the daemon holds the qcow2, the bind holds the dir
        with pytest.raises(StorageError) as ei:
            snapshot_revert([spec], "s", snaps)
        assert ei.value.errno == errno.EBUSY
    unmount_disk(1, env.state)
    unmount_disk(2, env.state)
    snapshot_revert([q, d], "s", snaps)
    images.run("qemu-img", "check", "-q", q.source)
    mq = mount_disk(q, env.mnt(1), env.state)
    assert read(os.path.join(mq.mountpoint, "q")) == "q1\n"
    unmount_disk(1, env.state)
    assert read(os.path.join(d.source, "etc", "motd")) == "v1\n"
    assert not os.path.exists(os.path.join(d.source, "new"))
    assert os.readlink(os.path.join(d.source, "motd-link")) == "/etc/motd"
    assert sorted(os.listdir(env.root)) == ["disk.1", "disk.2", "mnt", "raw", "snaps", "state"]
    snapshot_delete("s", snaps)


def test_snapshot_errors(env):
    img = DiskSpec(0, images.fs_image(env.path("disk.0"), "ext4", 16))
    snaps = env.path("snaps")
    for bad in ("../x", "a/b", "..", ".hidden", ""):
        with pytest.raises(InvalidSnapshotId):
            snapshot_create([img], bad, snaps)
        with pytest.raises(InvalidSnapshotId):
            snapshot_delete(bad, snaps)
    snapshot_create([img], "0", snaps)
    with pytest.raises(StorageError) as ei:
        snapshot_create([img], "0", snaps)
    assert ei.value.errno == errno.EEXIST
    with pytest.raises(StorageError) as ei:
        snapshot_revert([DiskSpec(5, img.source)], "0", snaps)
    assert ei.value.errno == errno.ENOENT and "disk 5 is not in this snapshot" in str(ei.value)
    with pytest.raises(StorageError) as ei:  # a missing source: nothing half-copied is left
        snapshot_create([img, DiskSpec(1, env.path("gone"))], "1", snaps)
    assert ei.value.errno == errno.ENOENT
    assert sorted(os.listdir(snaps)) == ["0"]
    with pytest.raises(ValueError):
        snapshot_create([img, img], "2", snaps)
    snapshot_delete("0", snaps)
    snapshot_delete("never-existed", snaps)
    snapshot_delete("0", env.path("no-such-dir"))
