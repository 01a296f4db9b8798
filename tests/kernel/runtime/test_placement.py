"""placement.off_current_cpu on the real scheduler (this machine has 2 CPUs; CI's too)."""

from __future__ import annotations

import os
import threading

import pytest

from lxcone import native
from lxcone.runtime import placement

needs_two = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2,
                               reason="needs 2 allowed CPUs: the block cannot move")


def _in_thread(fn):
    """Run fn in a fresh thread (the move is per thread: the test runner's stays untouched)."""
    out: dict = {}

    def run():
        try:
            out["value"] = fn()
        except BaseException as exc:  # re-raised in the caller
            out["error"] = exc

    t = threading.Thread(target=run)
    t.start()
    t.join()
    if "error" in out:
        raise out["error"]
    return out["value"]


@needs_two
def test_the_block_runs_off_the_cpu_it_was_entered_on_and_affinity_is_restored():
    def probe():
        before_mask = os.sched_getaffinity(0)
        cpu = native.current_cpu()
        with placement.off_current_cpu():
            inside = native.current_cpu()
            inside_mask = os.sched_getaffinity(0)
        return cpu, inside, inside_mask, before_mask, os.sched_getaffinity(0)

    cpu, inside, inside_mask, before, after = _in_thread(probe)
    assert inside != cpu
    assert cpu not in inside_mask
    assert after == before


def test_a_single_allowed_cpu_stays_where_it_is():
    def probe():
        cpu = native.current_cpu()
        os.sched_setaffinity(0, {cpu})
        with placement.off_current_cpu():
            inside = native.current_cpu()
            inside_mask = os.sched_getaffinity(0)
        return cpu, inside, inside_mask, os.sched_getaffinity(0)

    cpu, inside, inside_mask, after = _in_thread(probe)
    assert inside == cpu
    assert inside_mask == after == {cpu}


@needs_two
def test_affinity_is_restored_when_the_block_raises():
    def probe():
        before = os.sched_getaffinity(0)
        with pytest.raises(KeyError), placement.off_current_cpu():
            raise KeyError("boom")
        return before, os.sched_getaffinity(0)

    before, after = _in_thread(probe)
    assert after == before
