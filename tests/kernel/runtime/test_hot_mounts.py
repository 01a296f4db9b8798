"""Hot mounts (Runtime.mount_into / umount_from) against the real kernel: what the guest sees,
ownership through the idmapping, read-only, busy mounts, hostile symlinks, and persistence
across a guest reboot and a stop/start. Every test gets its own rootfs (they create directories
in it and plant symlinks), and proves at teardown that no mount appeared on the host."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import threading
import uuid
from pathlib import Path

import pytest

from lxcone import native
from lxcone.images.busybox import build_rootfs
from lxcone.runtime import Bind, MountBusy, MountConflict, SpecError
from lxcone.runtime import state as st
from lxcone.testing.fixtures import mounts_under, needs_root
from lxcone.testing.helpers import busybox_spec as spec
from lxcone.testing.helpers import sh, wait_for

pytestmark = [pytest.mark.root, needs_root]


@pytest.fixture
def rootfs(tmp_path: Path) -> str:
    return str(build_rootfs(tmp_path / "rootfs"))


@pytest.fixture(autouse=True)
def no_host_mounts(tmp_path: Path):
    """Nothing a test mounts into a container (its rootfs and disks live under tmp_path) may
    show up in the host's mount table."""
    yield
    assert mounts_under(str(tmp_path)) == [], "a hot mount leaked into the host namespace"


@pytest.fixture
def disk(tmp_path: Path) -> Path:
    """A host directory standing for a mounted disk: a root-owned file and a uid-1000 file."""
    d = tmp_path / "disk"
    d.mkdir()
    (d / "hello").write_text("hi from the host\n")
    (d / "user").write_text("u\n")
    os.chown(d / "user", 1000, 1000)
    return d


def mounts_in(runtime, name: str, target: str) -> list[str]:
    """mountinfo lines of the container whose mount point is ``target``."""
    pid = runtime.state(name).pid
    with open(f"/proc/{pid}/mountinfo") as f:
        return [line for line in f if line.split()[4] == target]


def recorded(runtime, name: str) -> tuple[list[Bind], str]:
    d = runtime.run_dir / name
    return list(runtime.spec(name).binds), (d / "config").read_text()


def test_host_files_appear_inside_idmapped_like_a_deploy_time_bind(runtime, rootfs, disk,
                                                                   tmp_path):
    boot = tmp_path / "boot"
    boot.mkdir()
    runtime.run(spec(rootfs, binds=(Bind(str(boot), "/mnt/boot"),)))
    runtime.mount_into("ct1", str(disk), "/media/new/3")
    assert mounts_under(str(tmp_path)) == []

    assert sh(runtime, "ct1", "cat /media/new/3/hello") == "hi from the host\n"
    # Idmapped: the files keep their on-disk owners, seen through the container's id map.
    assert sh(runtime, "ct1", "stat -c '%u:%g' /media/new/3/hello /media/new/3/user").split() == [
        "0:0", "1000:1000"]
    sh(runtime, "ct1", "touch /media/new/3/made-inside /mnt/boot/made-inside")
    # What the container's root writes lands with the container's own ids on disk, exactly as
    # through the deploy-time bind (and the idmapped rootfs): no shifted 100000 on the disk.
    hot, deploy = os.stat(disk / "made-inside"), os.stat(boot / "made-inside")
    assert (hot.st_uid, hot.st_gid) == (deploy.st_uid, deploy.st_gid) == (0, 0)
    # The directories it created belong to the container's root, like the rest of its rootfs.
    assert sh(runtime, "ct1", "stat -c '%u:%g %a' /media/new") == "0:0 755\n"
    made = os.stat(os.path.join(rootfs, "media/new/3"))
    assert (made.st_uid, made.st_gid) == (0, 0) == (os.stat(rootfs).st_uid, os.stat(rootfs).st_gid)
    (line,) = mounts_in(runtime, "ct1", "/media/new/3")
    assert "idmapped" in line and " rw," in line
    binds, config = recorded(runtime, "ct1")
    assert Bind(str(disk), "/media/new/3", False) in binds
    assert f"bind 0 media/new/3\t{disk}\n" in config
    assert st.read_state(runtime.run_dir / "ct1")["mount_dirs"] == {"/media/new/3": "/media/new"}


def test_privileged_container_gets_a_plain_bind(runtime, rootfs, disk):
    runtime.run(spec(rootfs, privileged=True))
    runtime.mount_into("ct1", str(disk), "/srv/disks/3")
    assert sh(runtime, "ct1", "cat /srv/disks/3/hello") == "hi from the host\n"
    assert sh(runtime, "ct1", "stat -c '%u' /srv/disks/3/hello /srv/disks/3/user").split() == [
        "0", "1000"]
    sh(runtime, "ct1", "touch /srv/disks/3/made-inside")
    assert os.stat(disk / "made-inside").st_uid == 0
    (line,) = mounts_in(runtime, "ct1", "/srv/disks/3")
    assert "idmapped" not in line
    runtime.umount_from("ct1", "/srv/disks/3")
    assert mounts_in(runtime, "ct1", "/srv/disks/3") == []
    assert not os.path.exists(os.path.join(rootfs, "srv/disks"))  # it made /srv/disks: gone


def test_readonly_is_enforced(runtime, rootfs, disk):
    runtime.run(spec(rootfs))
    runtime.mount_into("ct1", str(disk), "/media/ro", readonly=True)
    assert sh(runtime, "ct1", "cat /media/ro/hello") == "hi from the host\n"
    r = runtime.exec("ct1", ["/bin/sh", "-c", "touch /media/ro/x"])
    assert r.returncode != 0 and b"Read-only" in r.stderr
    assert not (disk / "x").exists()
    (line,) = mounts_in(runtime, "ct1", "/media/ro")
    assert " ro," in line
    assert "bind 1 media/ro\t" in recorded(runtime, "ct1")[1]


def test_a_single_file_can_be_mounted_and_its_stand_in_is_removed(runtime, rootfs, disk):
    runtime.run(spec(rootfs))
    runtime.mount_into("ct1", str(disk / "hello"), "/etc/motd")
    assert sh(runtime, "ct1", "cat /etc/motd") == "hi from the host\n"
    runtime.umount_from("ct1", "/etc/motd")
    assert not os.path.exists(os.path.join(rootfs, "etc/motd"))


def test_detach_unmounts_removes_what_it_created_and_forgets_it(runtime, rootfs, disk):
    runtime.run(spec(rootfs))
    assert os.path.isdir(os.path.join(rootfs, "media"))
    runtime.mount_into("ct1", str(disk), "/media/disk/3")
    runtime.umount_from("ct1", "/media/disk/3")
    assert mounts_in(runtime, "ct1", "/media/disk/3") == []
    assert sh(runtime, "ct1", "ls -a /media").split() == [".", ".."]  # /media itself was there
    assert os.path.isdir(os.path.join(rootfs, "media"))
    binds, config = recorded(runtime, "ct1")
    assert binds == [] and "bind " not in config
    assert "mount_dirs" not in st.read_state(runtime.run_dir / "ct1")
    assert (disk / "hello").exists()  # the disk itself is untouched
    # Idempotent, also for a target that was never mounted.
    runtime.umount_from("ct1", "/media/disk/3")
    runtime.umount_from("ct1", "/media/never")


def test_detach_keeps_a_directory_that_existed_or_is_not_empty(runtime, rootfs, disk):
    runtime.run(spec(rootfs))
    runtime.mount_into("ct1", str(disk), "/mnt")  # /mnt exists in the rootfs
    runtime.mount_into("ct1", str(disk), "/media/a/b")
    sh(runtime, "ct1", "touch /media/a/guest-file")
    runtime.umount_from("ct1", "/mnt")
    runtime.umount_from("ct1", "/media/a/b")
    assert sh(runtime, "ct1", "ls -A /mnt") == ""
    assert sh(runtime, "ct1", "ls -A /media/a") == "guest-file\n"


def test_busy_mount_is_not_detached(runtime, rootfs, disk):
    runtime.run(spec(rootfs))
    runtime.mount_into("ct1", str(disk), "/media/3")
    pid = runtime.spawn("ct1", ["/bin/sh", "-c", "cd /media/3 && exec sleep 100"])
    try:
        here = os.stat(disk)

        def in_disk() -> bool:
            cwd = os.stat(f"/proc/{pid}/cwd")
            return (cwd.st_dev, cwd.st_ino) == (here.st_dev, here.st_ino)

        wait_for(in_disk, what="the process to cd into the disk")
        with pytest.raises(MountBusy) as e:
            runtime.umount_from("ct1", "/media/3")
        assert isinstance(e.value, OSError) and e.value.errno == 16
        assert "busy" in str(e.value) and "/media/3" in str(e.value) and "ct1" in str(e.value)
        # Still mounted, still recorded, still usable.
        assert len(mounts_in(runtime, "ct1", "/media/3")) == 1
        assert Bind(str(disk), "/media/3") in recorded(runtime, "ct1")[0]
        assert sh(runtime, "ct1", "cat /media/3/hello") == "hi from the host\n"
    finally:
        os.kill(pid, signal.SIGKILL)
        runtime.wait(pid)
    runtime.umount_from("ct1", "/media/3")
    assert mounts_in(runtime, "ct1", "/media/3") == []


def test_attach_is_idempotent_and_refuses_a_different_mount(runtime, rootfs, disk, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    runtime.run(spec(rootfs))
    runtime.mount_into("ct1", str(disk), "/media/3")
    runtime.mount_into("ct1", str(disk), "//media/./3/")  # the same target, spelt differently
    assert len(mounts_in(runtime, "ct1", "/media/3")) == 1
    assert recorded(runtime, "ct1")[0] == [Bind(str(disk), "/media/3")]
    with pytest.raises(MountConflict):
        runtime.mount_into("ct1", str(other), "/media/3")
    with pytest.raises(MountConflict):
        runtime.mount_into("ct1", str(disk), "/media/3", readonly=True)
    # A mount the runtime made itself (the /run tmpfs) is not covered either.
    with pytest.raises(MountConflict):
        runtime.mount_into("ct1", str(other), "/run")
    assert recorded(runtime, "ct1")[0] == [Bind(str(disk), "/media/3")]
    assert sh(runtime, "ct1", "cat /media/3/hello") == "hi from the host\n"


def test_bad_targets_and_sources_are_refused_and_not_recorded(runtime, rootfs, disk, tmp_path):
    runtime.run(spec(rootfs))
    for target in ("/proc/x", "/sys", "/dev/sda", "/", "media/3", "/media/../etc"):
        with pytest.raises(SpecError):
            runtime.mount_into("ct1", str(disk), target)
    with pytest.raises(SpecError, match="does not exist"):
        runtime.mount_into("ct1", str(tmp_path / "missing"), "/media/3")
    with pytest.raises(SpecError):
        runtime.mount_into("ct1", "relative/path", "/media/3")
    assert recorded(runtime, "ct1")[0] == []
    assert not os.path.exists(os.path.join(rootfs, "media/3"))


@pytest.mark.parametrize("privileged", [False, True], ids=["unprivileged", "privileged"])
@pytest.mark.parametrize("link", ["/etc", "../../../../../../../etc"], ids=["absolute", "dotdot"])
def test_hostile_symlinks_cannot_move_the_mount_out_of_the_container(runtime, rootfs, disk,
                                                                     privileged, link):
    name = f"lxcone-hot-{uuid.uuid4().hex[:8]}"
    runtime.run(spec(rootfs, privileged=privileged))
    sh(runtime, "ct1", f"rm -rf /media && ln -s {link} /media")
    try:
        runtime.mount_into("ct1", str(disk), f"/media/{name}")
        # It landed in the container's own /etc, inside the rootfs; the host's /etc is untouched.
        assert not os.path.exists(f"/etc/{name}")
        assert os.path.isdir(os.path.join(rootfs, "etc", name))
        assert sh(runtime, "ct1", f"cat /etc/{name}/hello") == "hi from the host\n"
        assert len(mounts_in(runtime, "ct1", f"/etc/{name}")) == 1
        assert not [m for m in mounts_under("/") if name in m]
        runtime.umount_from("ct1", f"/media/{name}")
        assert mounts_in(runtime, "ct1", f"/etc/{name}") == []
        assert not os.path.exists(os.path.join(rootfs, "etc", name))
    finally:
        if os.path.isdir(f"/etc/{name}"):  # only if the test failed: leave no trace on the host
            os.rmdir(f"/etc/{name}")


def test_hot_mounts_survive_a_guest_reboot(runtime, rootfs, disk, tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "o").write_text("o\n")
    s1 = runtime.run(spec(rootfs, hostname="rb"))
    runtime.mount_into("ct1", str(disk), "/media/3")
    runtime.mount_into("ct1", str(other), "/media/ro", readonly=True)
    runtime.mount_into("ct1", str(other), "/media/gone")
    runtime.umount_from("ct1", "/media/gone")
    runtime.exec("ct1", ["/bin/sh", "-c", "reboot"])
    wait_for(lambda: (runtime.state("ct1").pid or s1.pid) != s1.pid, timeout=15, what="new init")
    wait_for(lambda: runtime.console_log("ct1").count(b"lxcone busybox: rb up") == 2,
             what="second boot")
    s2 = runtime.state("ct1")
    assert s2.status == "running" and s2.monitor_pid == s1.monitor_pid
    assert sh(runtime, "ct1", "cat /media/3/hello /media/ro/o") == "hi from the host\no\n"
    r = runtime.exec("ct1", ["/bin/sh", "-c", "touch /media/ro/x"])
    assert r.returncode != 0 and b"Read-only" in r.stderr
    assert "idmapped" in mounts_in(runtime, "ct1", "/media/3")[0]
    assert mounts_in(runtime, "ct1", "/media/gone") == []
    # And it can be detached from the rebooted guest.
    runtime.umount_from("ct1", "/media/3")
    assert mounts_in(runtime, "ct1", "/media/3") == []


def test_hot_mounts_survive_stop_and_start_and_can_be_added_while_stopped(runtime, rootfs, disk,
                                                                         tmp_path):
    other = tmp_path / "other"
    other.mkdir()
    (other / "o").write_text("o\n")
    runtime.run(spec(rootfs))
    runtime.mount_into("ct1", str(disk), "/media/3")
    runtime.stop("ct1")
    runtime.mount_into("ct1", str(other), "/media/4")  # only recorded
    runtime.start("ct1")
    assert sh(runtime, "ct1", "cat /media/3/hello /media/4/o") == "hi from the host\no\n"
    runtime.umount_from("ct1", "/media/3")
    runtime.stop("ct1")
    runtime.umount_from("ct1", "/media/4")  # stopped: only forgotten
    runtime.start("ct1")
    assert mounts_in(runtime, "ct1", "/media/3") == mounts_in(runtime, "ct1", "/media/4") == []
    assert recorded(runtime, "ct1")[0] == []


def test_works_from_a_multithreaded_caller(runtime, rootfs, disk):
    """setns into a mount namespace is refused to a threaded process: the resident agent
    calls from a worker thread while others run, and only the C child may join."""
    runtime.run(spec(rootfs))
    stop = threading.Event()
    busy = [threading.Thread(target=stop.wait) for _ in range(3)]
    for t in busy:
        t.start()
    errors: list[BaseException] = []

    def work() -> None:
        try:
            runtime.mount_into("ct1", str(disk), "/media/3")
            runtime.umount_from("ct1", "/media/3")
            runtime.mount_into("ct1", str(disk), "/media/4")
        except BaseException as exc:
            errors.append(exc)

    try:
        worker = threading.Thread(target=work)
        worker.start()
        worker.join(30)
    finally:
        stop.set()
        for t in busy:
            t.join()
    assert not errors, errors
    assert threading.active_count() == 1
    assert sh(runtime, "ct1", "cat /media/4/hello; ls /media").split() == [
        "hi", "from", "the", "host", "4"]


def test_a_failed_step_names_call_path_and_errno_and_is_not_recorded(runtime, rootfs, disk):
    runtime.run(spec(rootfs))
    with pytest.raises(native.HotMountError) as e:
        runtime.mount_into("ct1", str(disk), "/etc/passwd/x")  # a file as parent directory
    assert e.value.errno == errno.ENOTDIR
    assert (e.value.call, e.value.filename) == ("open", "/etc/passwd/x")
    assert "[open]" in str(e.value) and "/etc/passwd/x" in str(e.value)
    assert recorded(runtime, "ct1")[0] == []
    assert "bind " not in recorded(runtime, "ct1")[1]


def test_native_errors_carry_errno_call_and_path(tmp_path):
    child = subprocess.Popen(["sleep", "100"])
    pidfd = native.pidfd_open(child.pid)
    try:
        child.kill()
        child.wait()
        with pytest.raises(native.HotMountError) as e:
            native.hot_umount(pidfd, "/media/3", join_userns=False)
        assert e.value.errno == errno.ESRCH and e.value.call == "setns(mnt)"
        assert isinstance(e.value, OSError) and "setns(mnt)" in str(e.value)
        tree = native.open_tree(str(tmp_path))
        try:
            with pytest.raises(native.HotMountError) as e:
                native.hot_mount(pidfd, tree, "/media/3", join_userns=True)
            assert e.value.errno == errno.ESRCH and e.value.call == "setns(mnt, user)"
        finally:
            os.close(tree)
    finally:
        os.close(pidfd)
