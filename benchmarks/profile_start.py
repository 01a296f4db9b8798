"""Where Runtime.start() spends its time: perf_counter marks around its phases.

    .venv/bin/python benchmarks/profile_start.py [--rounds 30] [--idle-ms 0]

Run as root. Starts and kills one busybox container per round in a private run dir and cgroup
parent, primes the cgroup write lock before each round like the benchmarks do (docs/benchmarks.md),
and prints the median of each phase. Not a benchmark: the marks wrap internals.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time

from lxcone.images.busybox import STOP_SIGNAL, build_rootfs
from lxcone.runtime import ContainerSpec, Runtime
from lxcone.runtime import container as impl


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=30)
    ap.add_argument("--idle-ms", type=float, default=0.0, help="quiet time before each round")
    a = ap.parse_args()
    work = tempfile.mkdtemp(prefix="lxcone-prof-")
    rt = Runtime(os.path.join(work, "run"), f"lxcone-prof-{os.getpid()}", None)
    marks: dict[str, float] = {}
    spawn, read_line = os.posix_spawn, impl._read_line

    def timed_spawn(*args, **kw):
        marks["spawn"] = time.perf_counter()
        pid = spawn(*args, **kw)
        marks["spawned"] = time.perf_counter()
        return pid

    def timed_read(fd):
        line = read_line(fd)
        marks["pid" if line.startswith("pid") else "running"] = time.perf_counter()
        return line

    impl.os.posix_spawn, impl._read_line = timed_spawn, timed_read
    phases: dict[str, list[float]] = {}
    try:
        rootfs = build_rootfs(os.path.join(work, "rootfs"))
        rt.create(ContainerSpec(name="p", rootfs=str(rootfs), stop_signal=STOP_SIGNAL))
        for _ in range(a.rounds):
            time.sleep(a.idle_ms / 1000)
            with open("/sys/fs/cgroup/pids/cgroup.procs", "w") as f:  # prime the write lock
                f.write(str(os.getpid()))
            t0 = time.perf_counter()
            rt.start("p")
            t1 = time.perf_counter()
            for name, start, end in (("python before the spawn", t0, marks["spawn"]),
                                     ("posix_spawn (monitor)", marks["spawn"], marks["spawned"]),
                                     ("monitor up, cgroups made meanwhile, clone3, maps",
                                      marks["spawned"], marks["pid"]),
                                     ("child: mounts + pivot_root + execve", marks["pid"],
                                      marks["running"]),
                                     ("return", marks["running"], t1), ("total", t0, t1)):
                phases.setdefault(name, []).append((end - start) * 1000)
            rt.kill("p")
    finally:
        impl.os.posix_spawn, impl._read_line = spawn, read_line
        for s in rt.list():
            rt.delete(s.name, force=True)
        for h in os.listdir("/sys/fs/cgroup"):
            d = os.path.join("/sys/fs/cgroup", h, rt.cgroup_parent)
            if os.path.isdir(d):
                os.rmdir(d)
        shutil.rmtree(work, ignore_errors=True)
    for name, values in phases.items():
        print(f"{name:38} median {statistics.median(values):7.3f} ms")


if __name__ == "__main__":
    main()
