"""Lifecycle latency, LXCoNe against LXC 5.0 and crun on the same host in the same run.

Every benchmark times exactly one step with ``benchmark.pedantic``: the setup (stop what the
previous round left, start what the step needs, then a short settle) is outside the timed
function. Groups put the peers side by side; ``report.py`` turns the JSON into the table.

Peers are driven the way their users drive them: LXC and crun through their CLIs (spawned from
this process with ``subprocess``), LXCoNe through its in-process Python API (what a resident
agent calls) and, separately, through the ``lxcone`` CLI with interpreter start-up included.
"""

from __future__ import annotations

import sys
from pathlib import Path

import harness
import pytest
from harness import bench, rounds

LXCONE_CLI = str(Path(sys.executable).with_name("lxcone"))

R_START = rounds(25)
R_EXEC = rounds(30)
R_KILL = rounds(25)
R_FREEZE_OURS = rounds(120, quick=5)
R_FREEZE_PEER = rounds(30)
R_BASE = rounds(30)


def cli_argv(ours: harness.Ours, *args: str) -> list[str]:
    return [LXCONE_CLI, "--run-dir", str(ours.run_dir), "--cgroup-parent", ours.cgroup_parent,
            "--host-netns", ours.host_netns, *args]


# -- baseline: the harness's own costs, common to the rows they apply to --------------------------

@pytest.mark.benchmark(group="baseline")
def test_baseline_spawn_true(benchmark, spawner):
    bench(benchmark, lambda: spawner.run(["/bin/true"]), None, R_BASE, "harness",
          "subprocess.run(/bin/true): the spawn floor every CLI row pays")


@pytest.mark.benchmark(group="baseline")
def test_baseline_nsenter_true(benchmark, spawner, lxc, host_netns):
    argv = [*lxc.nsenter(host_netns), "/bin/true"]
    bench(benchmark, lambda: spawner.run(argv), None, R_BASE, "harness",
          "nsenter --net --mount /bin/true: the prefix every LXC veth row pays")


@pytest.mark.benchmark(group="baseline")
def test_baseline_crun_server_true(benchmark, crun):
    bench(benchmark, crun.true_roundtrip, None, R_BASE, "harness",
          "/bin/true through the crun mount-namespace server: added to every crun row")


@pytest.mark.benchmark(group="baseline")
def test_baseline_lxcone_cli_list(benchmark, spawner, ours, workdir):
    empty = workdir / "empty-run"
    argv = [LXCONE_CLI, "--run-dir", str(empty), "list"]
    bench(benchmark, lambda: spawner.run(argv), None, R_BASE, "harness",
          "lxcone CLI doing nothing (list, empty run dir): interpreter + import floor")


# -- 1. start -> init running ---------------------------------------------------------------------

@pytest.mark.benchmark(group="start")
def test_start_lxc(benchmark, lxc, names):
    name = names.lxc("s")
    lxc.define(name)
    try:
        bench(benchmark, lambda: lxc.start(name), lambda: lxc.ensure_stopped(name), R_START,
              "lxc", "lxc-start -d (returns once RUNNING), net type empty")
        assert lxc.state(name) == "RUNNING"
    finally:
        lxc.ensure_stopped(name)


@pytest.mark.benchmark(group="start")
def test_start_crun(benchmark, crun, names):
    name = names.crun("s")
    crun.bundle(name)
    try:
        bench(benchmark, lambda: crun.create_start(name), lambda: crun.ensure_deleted(name),
              R_START, "crun", "crun create + crun start (/bin/sleep, empty netns)")
    finally:
        crun.ensure_deleted(name)


def _bench_ours_start(benchmark, ours, name, spec, what, idle=False, defined=True, **info):
    """defined: time Runtime.start() of a created container, the step lxc-start performs on a
    defined one; otherwise Runtime.run() (validate + record + start)."""
    if defined:
        def target():
            ours.rt.start(name)

        def setup():
            ours.ensure_created(spec)
    else:
        def target():
            ours.rt.run(spec)

        def setup():
            ours.ensure_gone(name)

    try:
        bench(benchmark, target, setup, R_START, "lxcone", what, idle=idle, **info)
        assert ours.rt.state(name).status == "running"
    finally:
        ours.ensure_gone(name)


@pytest.mark.benchmark(group="start")
def test_start_lxcone_unprivileged(benchmark, ours, names):
    name = names.ours("su")
    _bench_ours_start(benchmark, ours, name, ours.spec(name),
                      "Runtime.start() of a created container, unprivileged (userns + "
                      "idmapped rootfs), in-process API", primary=True)


@pytest.mark.benchmark(group="start")
def test_start_lxcone_run(benchmark, ours, names):
    name = names.ours("sr")
    _bench_ours_start(benchmark, ours, name, ours.spec(name),
                      "Runtime.run() = create (validate, record) + start, unprivileged",
                      defined=False)


@pytest.mark.benchmark(group="start")
def test_start_lxcone_privileged(benchmark, ours, names):
    name = names.ours("sp")
    _bench_ours_start(benchmark, ours, name, ours.spec(name, privileged=True),
                      "Runtime.start(), privileged (no userns), in-process API")


@pytest.mark.benchmark(group="start")
def test_start_lxcone_limits(benchmark, ours, names):
    name = names.ours("sl")
    _bench_ours_start(benchmark, ours, name, ours.spec(name, limits=True),
                      "Runtime.start(), unprivileged, with memory + CPU quota limits")


@pytest.mark.benchmark(group="start")
def test_start_lxcone_cli(benchmark, ours, spawner, names):
    name = names.ours("sc")
    argv = cli_argv(ours, "run", name, "--rootfs", ours.rootfs, "--stop-signal", "SIGUSR2")
    try:
        bench(benchmark, lambda: spawner.run(argv), lambda: ours.ensure_gone(name), R_START,
              "lxcone", "lxcone CLI run (fresh interpreter each time), unprivileged")
        assert ours.rt.state(name).status == "running"
    finally:
        ours.ensure_gone(name)


# -- start on an idle host: 100 ms of quiet before the step, cgroup write lock not primed -------

@pytest.mark.benchmark(group="start-idle")
def test_start_idle_lxc(benchmark, lxc, names):
    name = names.lxc("si")
    lxc.define(name)
    try:
        bench(benchmark, lambda: lxc.start(name), lambda: lxc.ensure_stopped(name), R_START,
              "lxc", "lxc-start -d after 100 ms idle", idle=True)
    finally:
        lxc.ensure_stopped(name)


@pytest.mark.benchmark(group="start-idle")
def test_start_idle_crun(benchmark, crun, names):
    name = names.crun("si")
    crun.bundle(name)
    try:
        bench(benchmark, lambda: crun.create_start(name), lambda: crun.ensure_deleted(name),
              R_START, "crun", "crun create + start after 100 ms idle", idle=True)
    finally:
        crun.ensure_deleted(name)


@pytest.mark.benchmark(group="start-idle")
def test_start_idle_lxcone(benchmark, ours, names):
    name = names.ours("si")
    _bench_ours_start(benchmark, ours, name, ours.spec(name),
                      "Runtime.start() of a created container, unprivileged, after 100 ms idle",
                      idle=True, primary=True)


# -- start with a veth on a bridge (information; the LXC anchor is 9.4 ms) ------------------------

@pytest.mark.benchmark(group="start-veth")
def test_start_veth_lxc(benchmark, lxc, names, host_netns):
    name = names.lxc("sv")
    lxc.define(name, netns=host_netns, bridge=harness.BRIDGE, pair="lxbl-sv",
               address=f"{harness.SUBNET}.20/24")
    try:
        bench(benchmark, lambda: lxc.start(name), lambda: lxc.ensure_stopped(name), R_START,
              "lxc", "nsenter lxc-start -d, veth on a bridge")
    finally:
        lxc.ensure_stopped(name)


@pytest.mark.benchmark(group="start-veth")
def test_start_veth_lxcone(benchmark, ours, names):
    name = names.ours("sv")
    _bench_ours_start(benchmark, ours, name, ours.spec(name, nic=("lxbo-sv", 21)),
                      "Runtime.start(), unprivileged, veth on a bridge")


# -- 2. start -> first exec inside ----------------------------------------------------------------

@pytest.mark.benchmark(group="start-exec")
def test_start_exec_lxc(benchmark, lxc, names):
    name = names.lxc("se")
    lxc.define(name)

    def target():
        lxc.start(name)
        lxc.attach(name, "/bin/true")

    try:
        bench(benchmark, target, lambda: lxc.ensure_stopped(name), R_START, "lxc",
              "lxc-start -d + lxc-attach -- /bin/true (no lxc-wait: -d already waits)")
    finally:
        lxc.ensure_stopped(name)


@pytest.mark.benchmark(group="start-exec")
def test_start_exec_crun(benchmark, crun, names):
    name = names.crun("se")
    crun.bundle(name)
    try:
        bench(benchmark, lambda: crun.create_start_exec(name, "/bin/true"),
              lambda: crun.ensure_deleted(name), R_START, "crun",
              "crun create + start + exec /bin/true")
    finally:
        crun.ensure_deleted(name)


@pytest.mark.benchmark(group="start-exec")
def test_start_exec_lxcone(benchmark, ours, names):
    name = names.ours("se")
    spec = ours.spec(name)

    def target():
        ours.rt.start(name)
        r = ours.rt.exec(name, ["/bin/true"])
        if r.returncode != 0:
            raise AssertionError(f"exec /bin/true returned {r.returncode}: {r.stderr!r}")

    try:
        # like lxc-start, on a container defined beforehand (Runtime.create in the setup)
        bench(benchmark, target, lambda: ours.ensure_created(spec), R_START, "lxcone",
              "Runtime.start() + Runtime.exec(['/bin/true']), unprivileged, in-process",
              primary=True)
    finally:
        ours.ensure_gone(name)


@pytest.mark.benchmark(group="start-exec")
def test_start_exec_lxcone_cli(benchmark, ours, spawner, names):
    name = names.ours("sx")
    run = cli_argv(ours, "run", name, "--rootfs", ours.rootfs, "--stop-signal", "SIGUSR2")
    ex = cli_argv(ours, "exec", name, "--", "/bin/true")

    def target():
        spawner.run(run)
        spawner.run(ex)

    try:
        bench(benchmark, target, lambda: ours.ensure_gone(name), R_START, "lxcone",
              "lxcone CLI run + lxcone CLI exec -- /bin/true (two fresh interpreters)")
    finally:
        ours.ensure_gone(name)


# -- exec into a running container (information) --------------------------------------------------

@pytest.mark.benchmark(group="exec")
def test_exec_lxc(benchmark, lxc, names):
    name = names.lxc("x")
    lxc.define(name)
    lxc.ensure_stopped(name)
    lxc.start(name)
    try:
        bench(benchmark, lambda: lxc.attach(name, "/bin/true"), None, R_EXEC, "lxc",
              "lxc-attach -- /bin/true")
    finally:
        lxc.ensure_stopped(name)


@pytest.mark.benchmark(group="exec")
def test_exec_crun(benchmark, crun, names):
    name = names.crun("x")
    crun.bundle(name)
    crun.ensure_deleted(name)
    crun.create_start(name)
    try:
        bench(benchmark, lambda: crun.exec(name, "/bin/true"), None, R_EXEC, "crun",
              "crun exec /bin/true")
    finally:
        crun.ensure_deleted(name)


@pytest.mark.benchmark(group="exec")
def test_exec_lxcone(benchmark, ours, names):
    name = names.ours("x")
    ours.ensure_gone(name)
    ours.rt.run(ours.spec(name))

    def target():
        r = ours.rt.exec(name, ["/bin/true"])
        if r.returncode != 0:
            raise AssertionError(f"exec /bin/true returned {r.returncode}: {r.stderr!r}")

    try:
        bench(benchmark, target, None, R_EXEC, "lxcone", "Runtime.exec(['/bin/true'])")
    finally:
        ours.ensure_gone(name)


# -- 3. kill-stop ---------------------------------------------------------------------------------

@pytest.mark.benchmark(group="kill-veth")
def test_kill_veth_lxc(benchmark, lxc, names, host_netns):
    name = names.lxc("kv")
    lxc.define(name, netns=host_netns, bridge=harness.BRIDGE, pair="lxbl-kv",
               address=f"{harness.SUBNET}.30/24")

    def setup():
        lxc.ensure_stopped(name)
        lxc.start(name)

    try:
        bench(benchmark, lambda: lxc.stop_kill(name), setup, R_KILL, "lxc",
              "nsenter lxc-stop -k, veth on a bridge")
    finally:
        lxc.ensure_stopped(name)


@pytest.mark.benchmark(group="kill-veth")
def test_kill_veth_lxcone(benchmark, ours, names):
    name = names.ours("kv")
    spec = ours.spec(name, nic=("lxbo-kv", 31))

    def setup():
        ours.ensure_gone(name)
        ours.rt.run(spec)

    def target():
        ours.kill(name)

    try:
        bench(benchmark, target, setup, R_KILL, "lxcone",
              "Runtime.kill() (SIGKILL, waits until gone, cgroups removed, host veth off the "
              "bridge and renamed; the kernel deletes the pair with the netns), veth on a bridge",
              primary=True)
        assert ours.rt.state(name).status == "stopped"
    finally:
        ours.ensure_gone(name)


@pytest.mark.benchmark(group="kill")
def test_kill_lxc(benchmark, lxc, names):
    name = names.lxc("k")
    lxc.define(name)

    def setup():
        lxc.ensure_stopped(name)
        lxc.start(name)

    try:
        bench(benchmark, lambda: lxc.stop_kill(name), setup, R_KILL, "lxc",
              "lxc-stop -k, net type empty")
    finally:
        lxc.ensure_stopped(name)


@pytest.mark.benchmark(group="kill")
def test_kill_crun(benchmark, crun, names):
    name = names.crun("k")
    crun.bundle(name)

    def setup():
        crun.ensure_deleted(name)
        crun.create_start(name)

    try:
        bench(benchmark, lambda: crun.delete_force(name), setup, R_KILL, "crun",
              "crun delete -f (running container)")
    finally:
        crun.ensure_deleted(name)


@pytest.mark.benchmark(group="kill")
def test_kill_lxcone(benchmark, ours, names):
    name = names.ours("k")
    spec = ours.spec(name)

    def setup():
        ours.ensure_gone(name)
        ours.rt.run(spec)

    try:
        bench(benchmark, lambda: ours.kill(name), setup, R_KILL, "lxcone",
              "Runtime.kill(), no NIC")
    finally:
        ours.ensure_gone(name)


# -- 4. freeze / thaw -----------------------------------------------------------------------------

class _Checked:
    """Counts rounds whose timed step returned before the state it promised was reached."""

    def __init__(self) -> None:
        self.bad = 0
        self.pending = False


@pytest.mark.benchmark(group="freeze")
def test_freeze_lxcone(benchmark, ours, names):
    name = names.ours("f")
    ours.ensure_gone(name)
    ours.rt.run(ours.spec(name))
    chk = _Checked()

    def setup():
        st = ours.rt.state(name).status
        if chk.pending and st != "frozen":
            chk.bad += 1  # freeze() returned but the container was not FROZEN
        chk.pending = False
        if st == "frozen":
            ours.rt.thaw(name)

    def target():
        ours.rt.freeze(name)
        chk.pending = True

    try:
        bench(benchmark, target, setup, R_FREEZE_OURS, "lxcone", "Runtime.freeze()",
              primary=True)
        if chk.pending and ours.rt.state(name).status != "frozen":
            chk.bad += 1
        benchmark.extra_info["not_frozen_on_return"] = chk.bad
    finally:
        ours.ensure_gone(name)


@pytest.mark.benchmark(group="freeze")
def test_freeze_lxc(benchmark, lxc, names):
    name = names.lxc("f")
    lxc.define(name)
    lxc.ensure_stopped(name)
    lxc.start(name)

    def setup():
        if lxc.state(name) == "FROZEN":
            lxc.unfreeze(name)

    try:
        bench(benchmark, lambda: lxc.freeze(name), setup, R_FREEZE_PEER, "lxc", "lxc-freeze")
    finally:
        if lxc.state(name) == "FROZEN":
            lxc.unfreeze(name)
        lxc.ensure_stopped(name)


@pytest.mark.benchmark(group="freeze")
def test_freeze_crun(benchmark, crun, names):
    name = names.crun("f")
    crun.bundle(name)
    crun.ensure_deleted(name)
    crun.create_start(name)
    paused = [False]

    def setup():
        if paused[0]:
            crun.resume(name)

    def target():
        crun.pause(name)
        paused[0] = True

    try:
        bench(benchmark, target, setup, R_FREEZE_PEER, "crun", "crun pause")
    finally:
        if paused[0]:
            crun.resume(name)
        crun.ensure_deleted(name)


@pytest.mark.benchmark(group="thaw")
def test_thaw_lxcone(benchmark, ours, names):
    name = names.ours("t")
    ours.ensure_gone(name)
    ours.rt.run(ours.spec(name))

    def setup():
        if ours.rt.state(name).status != "frozen":
            ours.rt.freeze(name)

    try:
        bench(benchmark, lambda: ours.rt.thaw(name), setup, R_FREEZE_OURS, "lxcone",
              "Runtime.thaw()", primary=True)
        assert ours.rt.state(name).status == "running"
    finally:
        ours.ensure_gone(name)


@pytest.mark.benchmark(group="thaw")
def test_thaw_lxc(benchmark, lxc, names):
    name = names.lxc("t")
    lxc.define(name)
    lxc.ensure_stopped(name)
    lxc.start(name)

    def setup():
        if lxc.state(name) != "FROZEN":
            lxc.freeze(name)

    try:
        bench(benchmark, lambda: lxc.unfreeze(name), setup, R_FREEZE_PEER, "lxc", "lxc-unfreeze")
    finally:
        if lxc.state(name) == "FROZEN":
            lxc.unfreeze(name)
        lxc.ensure_stopped(name)


@pytest.mark.benchmark(group="thaw")
def test_thaw_crun(benchmark, crun, names):
    name = names.crun("t")
    crun.bundle(name)
    crun.ensure_deleted(name)
    crun.create_start(name)
    paused = [False]

    def setup():
        if not paused[0]:
            crun.pause(name)
            paused[0] = True

    def target():
        crun.resume(name)
        paused[0] = False

    try:
        bench(benchmark, target, setup, R_FREEZE_PEER, "crun", "crun resume")
    finally:
        if paused[0]:
            crun.resume(name)
        crun.ensure_deleted(name)


# -- hot mount (information): bind a host directory into a running container and back ----------

R_HOTMOUNT = rounds(30)


@pytest.mark.parametrize("ballast_mib", [0, 400], ids=["caller-as-is", "caller-400MiB"])
@pytest.mark.benchmark(group="hot-mount")
def test_hot_mount_lxcone(benchmark, ours, names, workdir, ballast_mib):
    """Runtime.mount_into + umount_from; with 400 MiB more resident in the caller, which a
    helper that copied the caller's page tables (a fork) would pay for (docs/architecture.md)."""
    name = names.ours("hm")
    src = workdir / f"hot-src-{ballast_mib}"
    src.mkdir(exist_ok=True)
    ours.ensure_gone(name)
    ours.rt.run(ours.spec(name))
    ballast = bytearray(ballast_mib << 20)
    for i in range(0, len(ballast), 4096):  # touched: resident, with page tables
        ballast[i] = 1

    def target():
        ours.rt.mount_into(name, str(src), "/mnt/hot")
        ours.rt.umount_from(name, "/mnt/hot")

    try:
        bench(benchmark, target, None, R_HOTMOUNT, "lxcone",
              f"Runtime.mount_into + umount_from, caller RSS +{ballast_mib} MiB")
    finally:
        del ballast
        ours.ensure_gone(name)
