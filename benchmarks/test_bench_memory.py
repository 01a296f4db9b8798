"""Idle host memory per container beyond the container's own processes, and 200 containers.

What is counted, the same way for both runtimes:
- user memory: PSS of the per-container host process (``lxcone-monitor`` / ``[lxc monitor]``),
  from /proc/PID/smaps_rollup, taken after the containers have idled for a while;
- kernel memory: the growth of ``memory.kmem.usage_in_bytes`` in the memory cgroup this
  benchmark runs in (read only; the machine put us there) while the N containers were started,
  plus, for LXC, the kmem of each ``lxc.monitor.<name>`` cgroup its monitor moves itself to.
  This is everything the kernel charged outside the containers' own cgroups: monitor task,
  stack, page tables, fds, pipes, the cgroup directories, the run-dir files, and the
  namespaces the monitor cloned (they are charged to whoever calls clone()), so it is an
  upper bound on the runtime's own kernel overhead.
The container's own cgroup (``memory.usage_in_bytes`` of its payload cgroup) is shown for
information; it is not overhead.

The containers are started from this pytest process (never a short-lived subprocess: pid 1
here does not reap orphans, and the runtime reaps the monitors it spawned). Each benchmark
round starts one more container, so the timing doubles as "start with k containers running".
"""

from __future__ import annotations

import os
import signal
import statistics
import time

import harness
import peers
import pytest
from harness import QUICK, record_tails, rounds

N_MEM = rounds(10, quick=2)
N_SCALE = rounds(200, quick=5)
IDLE_S = 0.5 if QUICK else 3.0


def kmem(memcg: str) -> int:
    return peers.read_int(os.path.join(memcg, "memory.kmem.usage_in_bytes"))


def usage(memcg: str) -> int:
    return peers.read_int(os.path.join(memcg, "memory.usage_in_bytes"))


def summarize(pss: list[dict[str, int]], kmem_delta: int, extra_kmem: list[int],
              payload: list[int], n: int) -> dict:
    """Per-container figures in bytes (medians over the N monitors)."""
    pss_total = [p["Pss"] for p in pss]
    kernel = (kmem_delta + sum(extra_kmem)) / n
    out = {
        "n": n,
        "monitor_pss_median": statistics.median(pss_total),
        "monitor_pss_min": min(pss_total),
        "monitor_pss_max": max(pss_total),
        "monitor_pss_anon_median": statistics.median(p.get("Pss_Anon", 0) for p in pss),
        "monitor_pss_file_median": statistics.median(p.get("Pss_File", 0) for p in pss),
        "monitor_rss_median": statistics.median(p["Rss"] for p in pss),
        "kmem_own_memcg_delta_per_ct": kmem_delta / n,
        "kmem_monitor_memcg_per_ct": (sum(extra_kmem) / n) if extra_kmem else 0.0,
        "kernel_per_ct": kernel,
        "overhead_per_ct": statistics.median(pss_total) + kernel,
        "payload_memcg_usage_median": statistics.median(payload) if payload else None,
    }
    return out


def _warm_up_ours(ours: harness.Ours, name: str) -> None:
    # One start/stop first, so imports, caches and dentries exist before the baseline.
    ours.ensure_gone(name)
    ours.rt.run(ours.spec(name))
    ours.ensure_gone(name)


@pytest.mark.benchmark(group="memory")
def test_memory_idle_lxcone(benchmark, ours, names):
    names_ = [names.ours(f"m{i}") for i in range(N_MEM)]
    specs = iter([ours.spec(n) for n in names_])
    memcg = peers.own_memcg()
    try:
        _warm_up_ours(ours, names.ours("mw"))
        peers.reap_orphans()
        time.sleep(0.5)
        k0 = kmem(memcg)
        benchmark.extra_info.update(who="lxcone", what=f"Runtime.run() of container k+1 of "
                                    f"{N_MEM} while k run (memory run)")
        alone: dict[str, int] = {}

        def sample_first() -> None:
            # Before round 2: the first monitor is still the only one of this runtime, so its
            # file-backed pages are not yet shared (PSS falls as N grows).
            if alone or not (ours.run_dir / names_[0]).exists():
                return  # sampled already, or before round 1
            pid = ours.rt.state(names_[0]).monitor_pid
            if pid:
                alone.update(peers.smaps_rollup(pid))

        benchmark.pedantic(lambda: ours.rt.run(next(specs)), setup=sample_first, rounds=N_MEM,
                           iterations=1)
        record_tails(benchmark)
        time.sleep(IDLE_S)
        states = [ours.rt.state(n) for n in names_]
        assert all(s.status == "running" for s in states), states
        k1 = kmem(memcg)
        pss = [peers.smaps_rollup(s.monitor_pid) for s in states]
        extra = []
        mon_cgs = {peers.memcg_of(s.monitor_pid) for s in states}
        for cg in mon_cgs - {memcg, None}:
            extra.append(kmem(cg))  # only if the runtime moved its monitors somewhere else
        payload = [usage(peers.memcg_of(s.pid)) for s in states]
        mem = summarize(pss, k1 - k0, extra, payload, N_MEM)
        mem["monitor_pss_alone"] = alone.get("Pss")
        mem["monitor_memcgs"] = sorted(str(c) for c in mon_cgs)
        benchmark.extra_info["memory"] = mem
    finally:
        for n in names_:
            ours.ensure_gone(n)


@pytest.mark.benchmark(group="memory")
def test_memory_idle_lxc(benchmark, lxc, names):
    names_ = [names.lxc(f"m{i}") for i in range(N_MEM)]
    for n in names_:
        lxc.define(n)
    warm = names.lxc("mw")
    lxc.define(warm)
    it = iter(names_)
    memcg = peers.own_memcg()
    try:
        lxc.ensure_stopped(warm)
        lxc.start(warm)
        lxc.ensure_stopped(warm)
        time.sleep(0.5)
        k0 = kmem(memcg)
        benchmark.extra_info.update(who="lxc", what=f"lxc-start -d of container k+1 of "
                                    f"{N_MEM} while k run (memory run)")
        alone: dict[str, int] = {}

        def sample_first() -> None:
            if not alone and lxc.state(names_[0]) == "RUNNING":
                alone.update(peers.smaps_rollup(lxc.monitor_pid(names_[0])))

        benchmark.pedantic(lambda: lxc.start(next(it)), setup=sample_first, rounds=N_MEM,
                           iterations=1)
        record_tails(benchmark)
        time.sleep(IDLE_S)
        k1 = kmem(memcg)
        monitors = [lxc.monitor_pid(n) for n in names_]
        pss = [peers.smaps_rollup(p) for p in monitors]
        mon_cgs = [peers.memcg_of(p) for p in monitors]
        extra = [kmem(cg) for cg in mon_cgs if cg and cg != memcg]
        payload = [usage(peers.memcg_of(lxc.init_pid(n))) for n in names_]
        mem = summarize(pss, k1 - k0, extra, payload, N_MEM)
        mem["monitor_pss_alone"] = alone.get("Pss")
        mem["monitor_memcgs"] = sorted({str(c) for c in mon_cgs})[:3]
        mem["monitor_memcg_usage_median"] = statistics.median(
            usage(cg) for cg in mon_cgs if cg and cg != memcg) if extra else None
        benchmark.extra_info["memory"] = mem
    finally:
        for n in names_:
            lxc.ensure_stopped(n)


@pytest.mark.slow
@pytest.mark.benchmark(group="scale-200")
def test_scale_200_lxcone(benchmark, ours, names, host_netns):
    """Start N_SCALE containers with a veth each, idle, stop them all gracefully, and prove
    that nothing is left: every container stopped, every cgroup gone, no monitor process
    (live or zombie), no veth in the host netns."""
    names_ = [names.ours(f"z{i}") for i in range(N_SCALE)]
    specs = iter([ours.spec(n, nic=(f"lxz{i}", 40 + i % 200)) for i, n in enumerate(names_)])
    memcg = peers.own_memcg()
    info = benchmark.extra_info
    info.update(who="lxcone", what=f"Runtime.run() of container k+1 of {N_SCALE} while k run, "
                "veth on a bridge each")
    links_before = set(peers.netns_links(host_netns))
    try:
        _warm_up_ours(ours, names.ours("zw"))
        time.sleep(0.5)
        k0 = kmem(memcg)
        t0 = time.perf_counter()
        benchmark.pedantic(lambda: ours.rt.run(next(specs)), rounds=N_SCALE, iterations=1)
        info["start_all_wall_s"] = time.perf_counter() - t0
        record_tails(benchmark)
        time.sleep(IDLE_S)
        states = [ours.rt.state(n) for n in names_]
        info["running"] = sum(s.status == "running" for s in states)
        assert info["running"] == N_SCALE, [s for s in states if s.status != "running"][:3]
        k1 = kmem(memcg)
        pss = [peers.smaps_rollup(s.monitor_pid) for s in states]
        info["memory"] = summarize(pss, k1 - k0, [], [], N_SCALE)
        info["host_links_while_running"] = len(peers.netns_links(host_netns))
        monitors = [s.monitor_pid for s in states]

        # Graceful stop of all at once: the stop signal (SIGUSR2, busybox poweroff) to every
        # init, then wait for each; busybox's halt sequence alone takes about 2 s.
        t0 = time.perf_counter()
        for n in names_:
            ours.rt.kill(n, signal.SIGUSR2)
        deadline = time.monotonic() + 60
        pending = set(names_)
        while pending and time.monotonic() < deadline:
            pending = {n for n in pending if ours.rt.state(n).status != "stopped"}
            time.sleep(0.05)
        info["graceful_stop_all_wall_s"] = time.perf_counter() - t0
        info["not_stopped_after_60s"] = len(pending)
        # Runtime.stop() on each: the documented way to finish a stop.
        t0 = time.perf_counter()
        for n in names_:
            ours.rt.stop(n, timeout=10)
        info["stop_calls_wall_s"] = time.perf_counter() - t0
        info["monitor_zombies_after_stop"] = sum(peers.proc_state(p) == "Z" for p in monitors)
        info["cgroup_dirs_left_after_stop"] = sum(
            sum(os.path.isdir(os.path.join(d, e)) for e in os.listdir(d))
            for d in peers.cgroup_dirs(ours.cgroup_parent))
        for n in names_:
            ours.rt.delete(n)
        info["monitor_zombies_after_delete"] = sum(peers.proc_state(p) == "Z" for p in monitors)
        peers.reap_orphans()
        info["monitors_left"] = len(ours.monitors())
        info["cgroups_left"] = sum(peers.has_child_cgroups(d)
                                   for d in peers.cgroup_dirs(ours.cgroup_parent))
        time.sleep(0.2)
        info["host_links_left"] = sorted(set(peers.netns_links(host_netns)) - links_before)
        info["records_left"] = len(ours.rt.list())
        assert not pending, f"{len(pending)} containers did not power off within 60 s"
        assert info["monitors_left"] == 0
        assert info["cgroups_left"] == 0
        assert not info["host_links_left"]
        assert info["records_left"] == 0
        # Last, so the checks above still run: a zombie monitor is a monitor left behind too
        # (a resident agent would accumulate them; this process is a subreaper and reaped them).
        assert info["monitor_zombies_after_delete"] == 0, (
            f"{info['monitor_zombies_after_delete']} of {N_SCALE} lxcone-monitor processes were "
            "left as unreaped zombies by Runtime.stop() + Runtime.delete()")
    finally:
        for n in names_:
            ours.ensure_gone(n)
