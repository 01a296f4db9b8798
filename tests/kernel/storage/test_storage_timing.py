"""Timing of mount_disk/unmount_disk per format (printed, not asserted: figures for
docs/storage.md). Run alone with ``pytest tests/kernel/storage/test_storage_timing.py -s -q``."""

from __future__ import annotations

import os
import statistics
import time

import pytest

from lxcone.storage import (
    DiskSpec,
    mount_disk,
    snapshot_create,
    snapshot_delete,
    snapshot_revert,
    unmount_disk,
)
from lxcone.testing import images
from lxcone.testing.fixtures import needs_root

pytestmark = [pytest.mark.root, needs_root]


def measure(env, spec: DiskSpec, rounds: int) -> tuple[list[float], list[float]]:
    mount_ms, unmount_ms = [], []
    for _ in range(rounds):
        t0 = time.perf_counter()
        mount_disk(spec, env.mnt(spec.disk_id), env.state)
        t1 = time.perf_counter()
        unmount_disk(spec.disk_id, env.state)
        t2 = time.perf_counter()
        mount_ms.append((t1 - t0) * 1000)
        unmount_ms.append((t2 - t1) * 1000)
    return mount_ms, unmount_ms


def report(capsys, what: str, mount_ms: list[float], unmount_ms: list[float]) -> None:
    with capsys.disabled():
        print(f"\n[storage timing] {what}: mount median {statistics.median(mount_ms):.2f} ms "
              f"(min {min(mount_ms):.2f}, max {max(mount_ms):.2f}); unmount median "
              f"{statistics.median(unmount_ms):.2f} ms (min {min(unmount_ms):.2f}, "
              f"max {max(unmount_ms):.2f}); n={len(mount_ms)}")


def test_timing_raw_ext4(env, busybox_rootfs, capsys):
    img = images.fs_image(env.path("disk.0"), "ext4", 1024, populate=busybox_rootfs)
    measure(env, DiskSpec(0, img), 2)  # warm the page cache and the loop devices
    report(capsys, "raw ext4 (1 GiB sparse, busybox rootfs)", *measure(env, DiskSpec(0, img), 20))
    # the same with the tools, as OpenNebula's LXC driver and LXC setups do it
    mnt = env.mnt(0)
    os.makedirs(mnt)
    mount_ms, unmount_ms = [], []
    for _ in range(20):
        t0 = time.perf_counter()
        dev = images.run("losetup", "-f", "--show", img).strip()
        images.run("mount", dev, mnt)
        t1 = time.perf_counter()
        images.run("umount", mnt)
        images.run("losetup", "-d", dev)
        t2 = time.perf_counter()
        mount_ms.append((t1 - t0) * 1000)
        unmount_ms.append((t2 - t1) * 1000)
    os.rmdir(mnt)
    report(capsys, "same image with losetup + mount / umount + losetup -d", mount_ms, unmount_ms)


@pytest.mark.parametrize("fmt", ["partitioned", "qcow2", "dir", "iso"])
def test_timing_other_formats(env, busybox_rootfs, capsys, fmt):
    if fmt == "partitioned":
        part = images.fs_image(env.path("p1"), "ext4", 256, populate=busybox_rootfs)
        src = env.path("disk.1")
        images.partitioned(src, "gpt", [(256, part, "L")], total_mib=300)
    elif fmt == "qcow2":
        raw = images.fs_image(env.path("raw"), "ext4", 1024, populate=busybox_rootfs)
        src = images.qcow2(raw, env.path("disk.1"))
    elif fmt == "dir":
        src = busybox_rootfs
    else:
        ctx = env.path("ctx")
        os.makedirs(ctx)
        images.write_file(os.path.join(ctx, "context.sh"), "HOSTNAME=vm\n")
        src = images.iso(ctx, env.path("disk.1"))
    spec = DiskSpec(1, src)
    measure(env, spec, 1)
    report(capsys, fmt, *measure(env, spec, 20 if fmt != "qcow2" else 10))


@pytest.mark.parametrize("ds_fs", ["xfs", "ext4"])
def test_timing_snapshots(env, busybox_rootfs, capsys, ds_fs):
    """1 GiB raw ext4 disk with ~100 MiB of data on an xfs (reflink) or ext4 (copy) datastore."""
    ds_img = images.fs_image(env.path(f"ds.{ds_fs}"), ds_fs, 4096)
    ds = mount_disk(DiskSpec(90, ds_img), env.path("ds"), env.path("ds-state")).mountpoint
    try:
        disk = DiskSpec(0, images.fs_image(os.path.join(ds, "disk.0"), "ext4", 1024,
                                           populate=busybox_rootfs))
        m = mount_disk(disk, env.mnt(0), env.state)
        # not "data": the shared busybox rootfs may hold a /data mount point made by another test
        with open(os.path.join(m.mountpoint, "timing-payload.bin"), "wb") as f:
            f.write(os.urandom(100 << 20))
        snaps = os.path.join(ds, "snap")
        create, revert, delete = [], [], []
        for i in range(5):
            t0 = time.perf_counter()
            snapshot_create([disk], str(i), snaps, {0: m.mountpoint})
            create.append((time.perf_counter() - t0) * 1000)
        unmount_disk(0, env.state)
        for i in range(5):
            t0 = time.perf_counter()
            snapshot_revert([disk], str(i), snaps)
            revert.append((time.perf_counter() - t0) * 1000)
        for i in range(5):
            t0 = time.perf_counter()
            snapshot_delete(str(i), snaps)
            delete.append((time.perf_counter() - t0) * 1000)
        with capsys.disabled():
            print(f"\n[storage timing] snapshots on {ds_fs} datastore (1 GiB disk, ~110 MiB "
                  f"data): create median {statistics.median(create):.2f} ms (first, with the "
                  f"syncfs of 100 MiB: {create[0]:.1f}), revert median "
                  f"{statistics.median(revert):.2f} ms, delete median "
                  f"{statistics.median(delete):.2f} ms (n=5)")
    finally:
        unmount_disk(0, env.state)
        unmount_disk(90, env.path("ds-state"))
