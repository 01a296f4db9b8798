"""Fixtures for the cgroup kernel tests (helpers and the cleanup contract: cgroups_kernel_env)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest
from cgroups_kernel_env import CgroupEnv, force_cleanup, layout_or_skip


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> object:
    # Keep each phase's report on the item so the fixture knows whether the test body passed.
    rep = yield
    setattr(item, f"rep_{rep.when}", rep)
    return rep


@pytest.fixture
def cg(request: pytest.FixtureRequest) -> Iterator[CgroupEnv]:
    layout = layout_or_skip()
    env = CgroupEnv(layout=layout, parent=f"lxcone-test-{uuid.uuid4().hex[:12]}")
    try:
        yield env
    finally:
        # Frozen tasks cannot die: thaw first (force_cleanup does), then reap what we spawned.
        leaked = env.leftovers()
        force_cleanup(layout, env.parent)
        for p in env.procs:
            if p.poll() is None:
                p.kill()
            p.wait(timeout=10)
        if env.leftovers():
            pytest.fail(f"could not remove {env.leftovers()}")
        body = getattr(request.node, "rep_call", None)
        # A failed test body already reports; its leftovers are expected, not a second error.
        if leaked and body is not None and body.passed:
            pytest.fail(f"test leaked cgroups (force-removed now): {leaked}")
