"""Where the runtime's own thread runs while a child it just spawned starts up.

A child made by posix_spawn is queued on its parent's CPU, and the parent, woken when the child
execs, keeps running there: the child only starts once the parent blocks, even with another CPU
idle. On our 2-vCPU VMs, a spawned process reached main 0.4-0.6 ms late that way while its parent
worked (benchmarks/profile_start.py; docs/architecture.md, "Start-up, step by step"). Moving the
parent to another CPU for its own work lets both run at once. Only the parent moves: pinning the
monitor's own child elsewhere too was tried and dropped (docs/architecture.md says why).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from lxcone import native


@contextlib.contextmanager
def off_current_cpu() -> Iterator[None]:
    """Run the block on any allowed CPU but the current one, then restore the affinity.

    Only the calling thread moves. With a single allowed CPU, or if the kernel refuses the
    move (a cpuset changed meanwhile), the block runs where it is."""
    allowed = os.sched_getaffinity(0)
    others = allowed - {native.current_cpu()}
    moved = False
    if others:
        try:
            os.sched_setaffinity(0, others)
            moved = True
        except OSError:
            pass  # EINVAL: none of them is usable any more; stay put
    try:
        yield
    finally:
        if moved:
            os.sched_setaffinity(0, allowed)
