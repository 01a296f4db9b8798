"""The README's main job: `lxcone demo` passes all its checks and leaves nothing behind."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile

import pytest

from lxcone.testing.fixtures import (
    cgroup_dirs_named,
    monitor_pids,
    needs_root,
    root_netns_links,
)

pytestmark = [pytest.mark.root, needs_root]


def test_demo_passes_and_cleans_up():
    before_links = root_netns_links()
    lxcone = os.path.join(os.path.dirname(sys.executable), "lxcone")
    p = subprocess.run([lxcone, "demo"], capture_output=True, text=True, timeout=120, check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "demo: all checks passed" in p.stdout
    assert "FAIL" not in p.stdout
    assert not monitor_pids(tempfile.gettempdir() + "/lxcone-demo-")
    assert root_netns_links() == before_links
    # names only the demo uses: other suites may create netns of their own meanwhile
    netns = os.listdir("/run/netns") if os.path.isdir("/run/netns") else []
    assert not [n for n in netns if n.startswith("lxcone-demo-")]
    assert not [d for d in os.listdir("/sys/fs/cgroup/memory") if d.startswith("lxcone-demo-")]
    assert not cgroup_dirs_named("lxcone-demo")
