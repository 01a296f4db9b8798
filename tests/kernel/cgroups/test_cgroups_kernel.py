"""Real cgroups on this host's kernel (v1, hybrid or v2, whatever is mounted), as root.

Wall-clock figures (freeze/thaw latency, StatsReader cost) are printed, never asserted.
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from cgroups_kernel_env import CgroupEnv

from lxcone.cgroups import CgroupError, CgroupManager, Resources, StatsReader, new_manager

pytestmark = [
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root"),
]

NAME = "one-1"
BUSY_LOOP = "import sys\nsys.stdin.readline()\nwhile True: pass\n"


def _manager(cg: CgroupEnv) -> CgroupManager:
    mgr = new_manager(cg.parent, NAME, cg.layout)
    mgr.create()
    return mgr


def _teardown(mgr: CgroupManager, *procs: subprocess.Popen[bytes]) -> None:
    for p in procs:
        if p.poll() is None:
            p.kill()
        p.wait(timeout=10)
    mgr.destroy()
    mgr.remove_parent_if_empty()
    assert not mgr.exists()


def _cgroup_lines(pid: int) -> dict[str, str]:
    """/proc/<pid>/cgroup as {controllers: path} ("" for the unified line)."""
    out = {}
    for line in Path(f"/proc/{pid}/cgroup").read_text().splitlines():
        _, ctrls, path = line.split(":", 2)
        out[ctrls] = path
    return out


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime (fields 14 and 15)


def _v1(cg: CgroupEnv) -> bool:
    return cg.layout.mode != "v2"


def _file(mgr: CgroupManager, cg: CgroupEnv, ctrl: str, v1_name: str, v2_name: str) -> str:
    if _v1(cg):
        return Path(mgr.paths[ctrl], v1_name).read_text().strip()
    return Path(mgr.paths["unified"], v2_name).read_text().strip()


def _pcts(samples: list[float]) -> tuple[float, float, float]:
    s = sorted(samples)
    return s[len(s) // 2], s[min(len(s) - 1, int(len(s) * 0.99))], s[-1]


def test_apply_places_a_task_in_every_hierarchy(cg: CgroupEnv) -> None:
    mgr = _manager(cg)
    p = cg.spawn()
    mgr.apply(p.pid)
    want = f"/{cg.parent}/{NAME}"
    lines = _cgroup_lines(p.pid)
    if _v1(cg):
        for ctrls, path in lines.items():
            if ctrls == "":
                assert path == (want if cg.layout.mode == "hybrid" else path)
            else:
                assert path == want, (ctrls, path)
        # v1 cpuset: the new levels inherited cpus/mems, or the attach would have failed.
        root_cpus = Path(cg.layout.v1["cpuset"], "cpuset.cpus").read_text()
        assert Path(mgr.paths["cpuset"], "cpuset.cpus").read_text() == root_cpus
        assert Path(mgr.paths["cpuset"]).parent.joinpath("cpuset.mems").read_text().strip()
    else:
        assert lines[""] == want
    assert mgr.pids() == [p.pid]
    for d in set(mgr.paths.values()):
        assert Path(d, "cgroup.procs").read_text().split() == [str(p.pid)]
    mgr.create()  # idempotent on a live cgroup
    _teardown(mgr, p)


def test_set_limits_reach_the_kernel_files(cg: CgroupEnv) -> None:
    mgr = _manager(cg)
    has_swap = (
        os.path.exists(f"{mgr.paths['memory']}/memory.memsw.limit_in_bytes")
        if _v1(cg)
        else os.path.exists(f"{mgr.paths['unified']}/memory.swap.max")
    )
    mgr.set(
        Resources(
            memory_limit_bytes=256 << 20,
            memory_swap_limit_bytes=(64 << 20) if has_swap else None,
            cpu_quota_us=50000,
            cpu_period_us=100000,
            cpu_weight=100,
            cpuset_cpus="0",
            cpuset_mems="0",
            pids_limit=64,
        )
    )
    assert _file(mgr, cg, "memory", "memory.limit_in_bytes", "memory.max") == str(256 << 20)
    if has_swap:
        assert _file(mgr, cg, "memory", "memory.memsw.limit_in_bytes", "memory.swap.max") == str(
            (320 << 20) if _v1(cg) else (64 << 20)
        )
    if _v1(cg):
        assert _file(mgr, cg, "cpu", "cpu.cfs_quota_us", "") == "50000"
        assert _file(mgr, cg, "cpu", "cpu.shares", "") == "1024"
    else:
        assert _file(mgr, cg, "cpu", "", "cpu.max") == "50000 100000"
        assert _file(mgr, cg, "cpu", "", "cpu.weight") == "100"
    assert _file(mgr, cg, "cpuset", "cpuset.cpus", "cpuset.cpus") == "0"
    assert _file(mgr, cg, "pids", "pids.max", "pids.max") == "64"
    st = mgr.stats()
    assert st.errors == []
    assert st.memory_limit_bytes == 256 << 20 and st.pids_limit == 64
    # Lower memory again (v1: memory before memsw) and lift everything.
    mgr.set(Resources(memory_limit_bytes=128 << 20))
    mgr.set(
        Resources(
            memory_limit_bytes=-1,
            memory_swap_limit_bytes=-1 if has_swap else None,
            cpu_quota_us=-1,
            pids_limit=-1,
        )
    )
    assert mgr.stats().memory_limit_bytes is None
    assert mgr.stats().pids_limit is None
    _teardown(mgr)


def test_a_value_the_kernel_refuses_gives_errno_path_and_value(cg: CgroupEnv) -> None:
    mgr = _manager(cg)
    with pytest.raises(CgroupError) as ei:
        mgr.set(Resources(cpuset_cpus="4000"))  # valid syntax, no such CPU here
    e = ei.value
    # cpulist_parse: ERANGE beyond nr_cpu_ids; EINVAL for CPUs the parent does not have.
    assert e.errno in (errno.ERANGE, errno.EINVAL)
    assert e.filename.endswith(f"/{cg.parent}/{NAME}/cpuset.cpus")
    assert str(e) == f"[Errno {e.errno}] {os.strerror(e.errno)}: write '4000' to {e.filename}"
    _teardown(mgr)


def test_memory_hog_is_oom_killed_at_the_limit(cg: CgroupEnv) -> None:
    mgr = _manager(cg)
    has_swap = _v1(cg) and os.path.exists(f"{mgr.paths['memory']}/memory.memsw.limit_in_bytes")
    mgr.set(Resources(memory_limit_bytes=64 << 20, memory_swap_limit_bytes=0 if has_swap else None))
    hog = (
        "import sys\nsys.stdin.readline()\nb = []\n"
        "for _ in range(1024): b.append(bytearray(1 << 20))\n"  # 1 GiB, zero-filled = touched
        "print('survived', flush=True)\n"
    )
    p = cg.spawn(hog, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    mgr.apply(p.pid)
    assert p.stdin is not None
    p.stdin.write(b"go\n")
    p.stdin.flush()
    out, _ = p.communicate(timeout=60)
    assert p.returncode == -9, (p.returncode, out)
    st = mgr.stats()
    assert st.oom_events is not None and st.oom_events > 0
    _teardown(mgr, p)


def test_cpu_quota_throttles_a_busy_loop(cg: CgroupEnv) -> None:
    mgr = _manager(cg)
    mgr.set(Resources(cpu_quota_us=50000, cpu_period_us=100000))
    p = cg.spawn(BUSY_LOOP, stdin=subprocess.PIPE)
    mgr.apply(p.pid)
    before = mgr.stats()
    t0 = time.monotonic()
    assert p.stdin is not None
    p.stdin.write(b"go\n")
    p.stdin.flush()
    time.sleep(1.5)
    after = mgr.stats()
    wall = time.monotonic() - t0
    assert after.errors == [] and before.cpu_usage_ns is not None
    assert after.cpu_usage_ns is not None and after.cpu_nr_throttled is not None
    share = (after.cpu_usage_ns - before.cpu_usage_ns) / (wall * 1e9)
    print(f"\nquota 50%: busy loop got {share:.2f} CPU, throttled {after.cpu_nr_throttled} times")
    # Loose bounds: other suites load this host; the quota is the upper bound that matters.
    assert 0.05 < share < 0.75
    assert after.cpu_nr_throttled > 0
    _teardown(mgr, p)


def test_freeze_stops_progress_and_thaw_resumes(cg: CgroupEnv) -> None:
    mgr = _manager(cg)
    p = cg.spawn(BUSY_LOOP, stdin=subprocess.PIPE)
    mgr.apply(p.pid)
    assert p.stdin is not None
    p.stdin.write(b"go\n")
    p.stdin.flush()
    time.sleep(0.1)
    assert mgr.freezer_state() == "THAWED"
    mgr.freeze()
    assert mgr.freezer_state() == "FROZEN"
    t1 = _cpu_ticks(p.pid)
    time.sleep(0.3)
    assert _cpu_ticks(p.pid) == t1  # no progress while frozen
    mgr.thaw()
    assert mgr.freezer_state() == "THAWED"
    time.sleep(0.3)
    assert _cpu_ticks(p.pid) > t1
    _teardown(mgr, p)


def _freeze_thaw_cycles(mgr: CgroupManager, n: int) -> tuple[list[float], list[float]]:
    freeze, thaw = [], []
    for _ in range(n):
        t0 = time.perf_counter()
        mgr.freeze()
        t1 = time.perf_counter()
        mgr.thaw()
        t2 = time.perf_counter()
        freeze.append(t1 - t0)
        thaw.append(t2 - t1)
    return freeze, thaw


def test_freeze_thaw_latency_over_200_cycles(
    cg: CgroupEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    mgr = _manager(cg)
    sleeper = cg.spawn()
    mgr.apply(sleeper.pid)
    results = {"1 sleeping task": _freeze_thaw_cycles(mgr, 200)}
    busy = cg.spawn(BUSY_LOOP, stdin=subprocess.PIPE)
    mgr.apply(busy.pid)
    assert busy.stdin is not None
    busy.stdin.write(b"go\n")
    busy.stdin.flush()
    results["1 sleeping + 1 busy task"] = _freeze_thaw_cycles(mgr, 200)
    with capsys.disabled():
        for what, (freeze, thaw) in results.items():
            f50, f99, fmax = _pcts(freeze)
            t50, t99, tmax = _pcts(thaw)
            print(
                f"\n[{cg.layout.mode}] freeze/thaw x200 ({what}): "
                f"freeze p50 {f50 * 1e6:.0f} us p99 {f99 * 1e6:.0f} us max {fmax * 1e6:.0f} us; "
                f"thaw p50 {t50 * 1e6:.0f} us p99 {t99 * 1e6:.0f} us max {tmax * 1e6:.0f} us; "
                f"loadavg {os.getloadavg()[0]:.1f}"
            )
    assert mgr.freezer_state() == "THAWED"
    _teardown(mgr, sleeper, busy)


def test_stats_reader_over_a_live_then_vanished_cgroup(
    cg: CgroupEnv, capsys: pytest.CaptureFixture[str]
) -> None:
    mgr = _manager(cg)
    p = cg.spawn()
    mgr.apply(p.pid)
    with StatsReader(mgr) as reader, StatsReader(mgr, ("usage",)) as fast:
        live = reader.read()
        assert live.errors == []
        assert live.pids_current == 1
        assert live.memory_usage_bytes is not None and live.cpu_usage_ns is not None
        assert fast.read().errors == []
        timings = {}
        for name, groups in (
            ("usage", ("usage",)),
            ("cpu+memory", ("cpu", "memory")),
            ("cpu+memory+memory_stat", ("cpu", "memory", "memory_stat")),
            ("all", ("cpu", "memory", "memory_stat", "pids", "io")),
        ):
            with StatsReader(mgr, groups) as r:
                r.read()
                t0 = time.perf_counter()
                for _ in range(2000):
                    r.read()
                timings[name] = (time.perf_counter() - t0) / 2000 * 1e6
        with capsys.disabled():
            print(
                f"\n[{cg.layout.mode}] StatsReader.read(): "
                + ", ".join(f"{k} {v:.1f} us" for k, v in timings.items())
            )
        p.kill()
        p.wait()
        mgr.destroy()
        gone = reader.read()  # must not raise
        assert gone.errors
        # kernfs deactivates open files of a removed cgroup: ENODEV (ENOENT for never-opened)
        assert {e.errno for e in gone.errors} <= {errno.ENODEV, errno.ENOENT}
        assert fast.read().errors
    mgr.remove_parent_if_empty()
    assert not mgr.exists()


def test_destroy_with_a_living_task_fails_then_succeeds_once_killed(cg: CgroupEnv) -> None:
    mgr = _manager(cg)
    p = cg.spawn()
    mgr.apply(p.pid)
    t0 = time.monotonic()
    with pytest.raises(CgroupError) as ei:
        mgr.destroy(timeout=0.3)
    assert ei.value.errno == errno.EBUSY
    assert time.monotonic() - t0 < 5
    assert mgr.exists()
    p.kill()
    p.wait()
    mgr.destroy()  # EBUSY right after the exit is retried with backoff
    assert not mgr.exists()
    mgr.destroy()  # idempotent
    mgr.remove_parent_if_empty()


def test_from_paths_in_another_process(cg: CgroupEnv) -> None:
    mgr = _manager(cg)
    p = cg.spawn()
    mgr.apply(p.pid)
    code = (
        "import json, sys\n"
        "from lxcone.cgroups import from_paths\n"
        "m = from_paths(json.loads(sys.argv[1]))\n"
        "print(json.dumps({'pids': m.pids(), 'state': m.freezer_state()}))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, json.dumps(mgr.paths)],
        check=True,
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout
    assert json.loads(out) == {"pids": [p.pid], "state": "THAWED"}
    _teardown(mgr, p)
