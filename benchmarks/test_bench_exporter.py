"""lxcone-exporter scrape cost at 100 and 500 containers, and the exporter's memory.

Every container is ours (busybox, unprivileged) with one veth on the benchmark bridge, like an
OpenNebula VM with one NIC: ~34 series each. The fleet grows from 100 to 500 inside one module
(module-scoped fixtures, so pytest runs all 100-container rows first) and is removed at the end.

Three ways to look at one scrape:

- ``collect()`` + ``generate_latest`` in this process: prometheus_client's own renderer;
- ``render_text()`` in this process: the renderer the HTTP server uses (exposition.py);
- the real ``lxcone-exporter`` process answering HTTP GETs with ``Accept-Encoding: gzip`` as
  Prometheus sends them: wall time per scrape (the benchmark), and the exporter's own CPU time
  (utime+stime from /proc/<pid>/stat over all rounds) and VmRSS.

The in-process rows use ``time.process_time`` as the timer: the figures are CPU seconds.
Targets (docs/exporter.md): <= 0.1 ms CPU per container per scrape for what the exporter serves
(recorded as ``meets_target``; the test fails only at twice that, a regression tripwire),
exporter RSS <= 50 MB at 500 containers (asserted). 500 containers: ``--run-slow``.
"""

from __future__ import annotations

import http.client
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import harness
import peers
import pytest
from harness import QUICK, rounds

N_SMALL, N_LARGE = (10, 500) if QUICK else (100, 500)
TARGET_CPU_US = 100.0  # per container per scrape: reported (meets_target), not asserted
TARGET_RSS_MB = 50.0  # asserted
# A regression tripwire, not the target: CPU figures on a shared 2-vCPU VM move by +-15 %
# between runs, so failing at the target itself would only report the neighbours' load.
FAIL_CPU_US = 2 * TARGET_CPU_US
EXPORTER = Path(sys.executable).with_name("lxcone-exporter")
TICK = os.sysconf("SC_CLK_TCK")


class Fleet:
    """``one-<i>`` containers with a veth ``one-<i>-0`` each (no address: counters only)."""

    def __init__(self, ours: harness.Ours) -> None:
        self.ours = ours
        self.names: list[str] = []

    def grow(self, n: int) -> None:
        from lxcone.netns import NicSpec

        for i in range(len(self.names), n):
            name = f"one-{i}"
            spec = self.ours.spec(name).with_changes(
                nics=(NicSpec(host_name=f"{name}-0", bridge=harness.BRIDGE),))
            self.ours.rt.run(spec)
            self.names.append(name)

    def cleanup(self) -> None:
        for name in reversed(self.names):
            self.ours.ensure_gone(name)
        self.names.clear()


@pytest.fixture(scope="module")
def fleet(ours: harness.Ours) -> Iterator[Fleet]:
    f = Fleet(ours)
    yield f
    f.cleanup()


@pytest.fixture(scope="module", params=[N_SMALL, pytest.param(N_LARGE, marks=pytest.mark.slow)],
                ids=lambda n: f"{n}ct")
def fleet_size(request: pytest.FixtureRequest, fleet: Fleet) -> int:
    t0 = time.monotonic()
    fleet.grow(request.param)
    print(f"\nfleet: {request.param} containers ({time.monotonic() - t0:.1f} s to grow)")
    return request.param


@pytest.fixture
def collector(ours: harness.Ours) -> Iterator[object]:
    from exporter import CgroupCollector

    c = CgroupCollector(ours.run_dir)
    yield c
    c.close()


def _per_container(benchmark, n: int) -> float:
    """Mean CPU µs per container per scrape from a process_time-timed benchmark."""
    return benchmark.stats.stats.mean / n * 1e6


def _series(text: str) -> int:
    return sum(1 for line in text.splitlines() if line and not line.startswith("#"))


@pytest.mark.benchmark(group="exporter", timer=time.process_time)
def test_exporter_cpu_render_text(benchmark, fleet_size: int, collector) -> None:
    """What the HTTP server renders: CgroupCollector.render_text(), CPU time."""
    text = collector.render_text()  # first scrape opens the kept fds
    assert collector.tracked == fleet_size
    benchmark.pedantic(lambda: collector.render_text().encode(), rounds=rounds(30),
                       iterations=1, warmup_rounds=1)
    us = _per_container(benchmark, fleet_size)
    benchmark.extra_info.update(who="lxcone", containers=fleet_size, series=_series(text),
                                cpu_us_per_container=round(us, 1), target_us=TARGET_CPU_US,
                                meets_target=us <= TARGET_CPU_US,
                                what="render_text(): kept-fd reads + fast text renderer, "
                                     "CPU s per scrape")
    print(f"\nrender_text: {fleet_size} containers, {_series(text)} series, "
          f"{us:.1f} µs CPU per container per scrape")
    if not QUICK:
        assert us <= FAIL_CPU_US


@pytest.mark.benchmark(group="exporter", timer=time.process_time)
def test_exporter_cpu_collect_generate_latest(benchmark, fleet_size: int, collector) -> None:
    """The same collector through prometheus_client: collect() + generate_latest(), CPU time."""
    from prometheus_client import CollectorRegistry, generate_latest

    reg = CollectorRegistry(auto_describe=False)
    reg.register(collector)
    generate_latest(reg)
    benchmark.pedantic(lambda: generate_latest(reg), rounds=rounds(20), iterations=1,
                       warmup_rounds=1)
    us = _per_container(benchmark, fleet_size)
    benchmark.extra_info.update(who="lxcone", containers=fleet_size,
                                cpu_us_per_container=round(us, 1),
                                what="collect() + prometheus_client.generate_latest(), CPU s "
                                     "per scrape (information: not what the server renders)")
    print(f"\ncollect+generate_latest: {fleet_size} containers, {us:.1f} µs CPU per container "
          "per scrape")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat", "rb") as f:
        rest = f.read().rsplit(b")", 1)[1].split()
    return int(rest[11]) + int(rest[12])  # utime + stime, all threads


def _status_kib(pid: int, key: str) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(key)


@pytest.mark.benchmark(group="exporter")
def test_exporter_process_http_scrape(benchmark, fleet_size: int, ours: harness.Ours,
                                      workdir: Path) -> None:
    """The lxcone-exporter process: wall time per HTTP scrape, its CPU per scrape, its RSS."""
    port = _free_port()
    log = workdir / f"exporter-{fleet_size}.log"
    with open(log, "wb") as out:
        p = subprocess.Popen([str(EXPORTER), "--listen", f"127.0.0.1:{port}", "--run-dir",
                              str(ours.run_dir)], stdout=out, stderr=out)
    try:
        conn = None
        for _ in range(100):
            try:
                conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
                conn.connect()
                break
            except OSError:
                time.sleep(0.05)
        assert conn is not None and p.poll() is None, log.read_text()
        sizes = []

        def scrape() -> None:
            # What Prometheus sends (it asks for OpenMetrics first; text 0.0.4 is accepted).
            conn.request("GET", "/metrics", headers={
                "Accept-Encoding": "gzip",
                "Accept": "application/openmetrics-text;version=1.0.0;q=0.75,"
                          "text/plain;version=0.0.4;q=0.5,*/*;q=0.1"})
            r = conn.getresponse()
            body = r.read()
            assert r.status == 200
            sizes.append(len(body))

        scrape()
        scrape()  # the first one opened every kept fd
        n = rounds(50 if fleet_size <= 100 else 30)
        t0 = _cpu_ticks(p.pid)
        benchmark.pedantic(scrape, rounds=n, iterations=1, warmup_rounds=0)
        cpu_s = (_cpu_ticks(p.pid) - t0) / TICK
        rss_mb = _status_kib(p.pid, "VmRSS") / 1024
        hwm_mb = _status_kib(p.pid, "VmHWM") / 1024
        fds = len(os.listdir(f"/proc/{p.pid}/fd"))
        us = cpu_s / n / fleet_size * 1e6
        benchmark.extra_info.update(
            who="lxcone", containers=fleet_size, cpu_us_per_container=round(us, 1),
            exporter_cpu_ms_per_scrape=round(cpu_s / n * 1e3, 2), rss_mb=round(rss_mb, 1),
            hwm_mb=round(hwm_mb, 1), open_fds=fds, gzip_bytes=sizes[-1],
            target_us=TARGET_CPU_US, meets_target=us <= TARGET_CPU_US,
            target_rss_mb=TARGET_RSS_MB,
            what="lxcone-exporter process, HTTP GET /metrics with gzip: wall per scrape; "
                 "exporter utime+stime per scrape")
        print(f"\nlxcone-exporter: {fleet_size} containers: {cpu_s / n * 1e3:.1f} ms CPU per "
              f"scrape = {us:.1f} µs per container; wall median "
              f"{benchmark.stats.stats.median * 1e3:.1f} ms; RSS {rss_mb:.1f} MB "
              f"(peak {hwm_mb:.1f}); {fds} fds; {sizes[-1]} bytes gzipped")
        if not QUICK:
            assert us <= FAIL_CPU_US
        assert rss_mb <= TARGET_RSS_MB
        conn.close()
    finally:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait()
        peers.reap_orphans()
    assert p.returncode == 0, log.read_text()
