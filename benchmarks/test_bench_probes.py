"""Monitoring probes: one MONITOR_VM + STATE_VM poll of a host with 100 containers.

LXCoNe: the two probe executables (remotes/im/lxcone-probes.d/vm/{monitor,status}) run as
onemonitord's client runs them: one process each, argv ``lxcone <host id> <host name>``, the
MONITOR_CONFIGURATION XML on stdin, stdout captured, no LXCONE_RUN_DIR. As on a host, they run
from a remotes tree (symlinks to this checkout's launcher) whose etc/vmm/lxcone/lxcone.toml is
the shipped one with run_dir set to the benchmark's run dir, so each run reads that file. 100
of our containers run meanwhile.

LXC: what OpenNebula's LXC driver pays per container per poll, ``lxc-info -n <c> -S`` for each
of 100 LXC 5.0 containers (busybox, private lxcpath, ``lxc.net.0.type = empty``), spawned one
after the other with their output captured. (ONE's real LXC probe does more: lxc-ls, lxc-info
twice per container and a 1 s sleep per container for its CPU figure; the loop is the floor.)

Both fleets run during both measurements, so each side's kernel sees the same host. The probes'
first run after a restart also parses every state.json (and imports json); it is measured
separately (``cold``, in extra_info) and the timed rounds are the steady state onemonitord sees
every 5 s (STATE_VM) and 30 s (MONITOR_VM). Target: ours <= 50 ms.

    .venv/bin/pytest benchmarks/test_bench_probes.py --benchmark-json=out/probes.json
"""

from __future__ import annotations

import os
import statistics
import subprocess
import time
from pathlib import Path

import harness
import peers
import pytest
from harness import record_tails, rounds

N = 10 if harness.QUICK else 100
R_OURS = rounds(30)
R_LXC = rounds(8)
PROBES = Path(__file__).resolve().parents[1] / "remotes" / "im" / "lxcone-probes.d"
XML = (b"<MONITOR_CONFIGURATION><DATASTORE_LOCATION><![CDATA[/var/lib/one//datastores]]>"
       b"</DATASTORE_LOCATION><PROBES_PERIOD><MONITOR_VM><![CDATA[30]]></MONITOR_VM><STATE_VM>"
       b"<![CDATA[5]]></STATE_VM><SYNC_STATE_VM><![CDATA[180]]></SYNC_STATE_VM></PROBES_PERIOD>"
       b"<HOST_ID>0</HOST_ID></MONITOR_CONFIGURATION>")
RESULTS: dict[str, float] = {}


def remotes_tree(root: Path, run_dir: Path) -> Path:
    """<root>/im/lxcone-probes.d/vm/{monitor,status}/... -> this checkout's launcher, and
    <root>/etc/vmm/lxcone/lxcone.toml: the shipped file with our run_dir."""
    for group in ("vm/monitor", "vm/status"):
        d = root / "im" / "lxcone-probes.d" / group
        d.mkdir(parents=True, exist_ok=True)
        link = d / f"lxcone-{group.replace('/', '-')}"
        if not link.is_symlink():
            link.symlink_to(PROBES / "lxcone-probe")
    sample = (PROBES.parents[1] / "etc" / "vmm" / "lxcone" / "lxcone.toml").read_text()
    assert '\nrun_dir = "/run/lxcone"\n' in sample
    cfg = root / "etc" / "vmm" / "lxcone" / "lxcone.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    cfg.write_text(sample.replace('\nrun_dir = "/run/lxcone"\n', f'\nrun_dir = "{run_dir}"\n'))
    return root / "im" / "lxcone-probes.d"


class Fleet:
    def __init__(self, ours: harness.Ours, lxc: peers.Lxc, bench_id: str,
                 workdir: Path) -> None:
        self.ours = ours
        self.lxc = lxc
        self.ours_names = [f"one-{i}" for i in range(N)]
        self.lxc_names = [f"lxb{bench_id}-p{i}" for i in range(N)]
        self.probes = remotes_tree(workdir / "var-tmp-one", ours.run_dir)
        self.env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        self.state_dir = ours.run_dir / ".monitor"

    def probe(self, group: str) -> bytes:
        exe = self.probes / group / f"lxcone-{group.replace('/', '-')}"
        r = subprocess.run([str(exe), "lxcone", "0", "node1"], input=XML, capture_output=True,
                           env=self.env, check=False)
        if r.returncode != 0:
            raise peers.PeerError(f"{exe} exited {r.returncode}: {r.stderr.decode()[-500:]}")
        return r.stdout

    def ours_poll(self) -> None:
        self.probe("vm/monitor")
        self.probe("vm/status")

    def lxc_info_loop(self) -> None:
        for name in self.lxc_names:
            r = subprocess.run(self.lxc.argv("lxc-info", name, "-S"), stdin=subprocess.DEVNULL,
                               capture_output=True, check=False)
            if r.returncode != 0:
                raise peers.PeerError(f"lxc-info {name} exited {r.returncode}")


@pytest.fixture(scope="module")
def fleet(ours, lxc, bench_id, workdir):
    f = Fleet(ours, lxc, bench_id, workdir)
    t0 = time.monotonic()
    try:
        for name in f.ours_names:
            ours.rt.run(ours.spec(name))
        for name in f.lxc_names:
            lxc.define(name)
            lxc.start(name)
        f.setup_s = time.monotonic() - t0
        yield f
    finally:
        for name in f.lxc_names:
            if (lxc.lxcpath / name).exists():
                lxc.ensure_stopped(name)
        for name in f.ours_names:
            ours.ensure_gone(name)
        peers.rm_tree(f.state_dir)
        peers.reap_orphans()


@pytest.mark.benchmark(group="probes")
def test_probes_lxcone(benchmark, fleet):
    # what each poll reports, checked once: every container, each probe exits 0
    peers.rm_tree(fleet.state_dir)
    t = time.perf_counter()
    fleet.ours_poll()
    cold = time.perf_counter() - t
    mon = fleet.probe("vm/monitor").decode().splitlines()
    assert len(mon) == N and all(line.startswith("VM = [ ID=") for line in mon)
    peers.rm_tree(fleet.state_dir)
    status = fleet.probe("vm/status").decode().splitlines()
    assert status[:2] == ["SYNC_STATE=yes", "MISSING_STATE=POWEROFF"] and len(status) == N + 2
    benchmark.extra_info.update(
        who="lxcone", primary=True, containers=N, cold_s=cold,
        what=f"vm/monitor + vm/status probe processes (python3 -I -S), {N} containers")
    benchmark.pedantic(fleet.ours_poll, setup=peers.reap_orphans, rounds=R_OURS, iterations=1,
                       warmup_rounds=1)
    record_tails(benchmark)
    RESULTS["lxcone"] = statistics.median(benchmark.stats.stats.data)
    # the parts, for the docs (not timed by pytest-benchmark)
    parts = {}
    for group in ("vm/monitor", "vm/status"):
        times = []
        for _ in range(rounds(15)):
            t = time.perf_counter()
            fleet.probe(group)
            times.append(time.perf_counter() - t)
        parts[group] = statistics.median(times)
    benchmark.extra_info["parts_median_s"] = parts


@pytest.mark.benchmark(group="probes")
def test_probes_lxc_info_loop(benchmark, fleet):
    out = subprocess.run(fleet.lxc.argv("lxc-info", fleet.lxc_names[0], "-S"),
                         capture_output=True, text=True, check=True).stdout
    assert "Memory use" in out or "CPU use" in out, out
    benchmark.extra_info.update(who="lxc", containers=N,
                                what=f"`lxc-info -n <c> -S` for each of {N} LXC containers")
    benchmark.pedantic(fleet.lxc_info_loop, setup=peers.reap_orphans, rounds=R_LXC,
                       iterations=1, warmup_rounds=1)
    record_tails(benchmark)
    RESULTS["lxc"] = statistics.median(benchmark.stats.stats.data)
    if "lxcone" in RESULTS:
        benchmark.extra_info["lxc_over_lxcone"] = RESULTS["lxc"] / RESULTS["lxcone"]


@pytest.mark.benchmark(group="probes")
def test_probes_interleaved(benchmark, fleet):
    """The same two loads interleaved A B A B in one loop (the fairest ratio on a busy host);
    the timed function is one LXCoNe poll, the LXC loop is timed by hand in between."""
    ours_t, lxc_t = [], []

    def one_round() -> None:
        t = time.perf_counter()
        fleet.lxc_info_loop()
        lxc_t.append(time.perf_counter() - t)
        peers.reap_orphans()

    def timed() -> None:
        t = time.perf_counter()
        fleet.ours_poll()
        ours_t.append(time.perf_counter() - t)

    benchmark.extra_info.update(who="lxcone", containers=N,
                                what="vm/monitor + vm/status, interleaved with the lxc-info loop")
    benchmark.pedantic(timed, setup=one_round, rounds=R_LXC, iterations=1, warmup_rounds=0)
    record_tails(benchmark)
    ours_m, lxc_m = statistics.median(ours_t), statistics.median(lxc_t)
    benchmark.extra_info.update(interleaved_lxc_median_s=lxc_m, interleaved_ours_median_s=ours_m,
                                lxc_over_lxcone=lxc_m / ours_m, load=os.getloadavg()[0])
    assert harness.QUICK or ours_m < lxc_m
