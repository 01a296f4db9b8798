"""Fake hosts for the probe tests: a run dir whose containers have cgroups in the fake cgroupfs
trees of tests/unit/cgroups (v1, co-mounted v1, hybrid, v2) and init records that point at
this very test process (so /proc says they run), or at a dead pid."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "cgroups"))

from cgroups_fakefs import (
    LAYOUTS,
    FakeKernel,
    FakeTree,
    layout_of,
    make_tree,
    write_files,
)

from lxcone.cgroups import new_manager


def own_starttime(pid: int | None = None) -> int:
    data = Path(f"/proc/{pid or os.getpid()}/stat").read_bytes()
    return int(data[data.rindex(b")") + 2:].split()[19])


def dead_pid() -> int:
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


class FakeHost:
    """A run dir + a fake cgroup tree; ``add()`` records containers like the runtime does."""

    def __init__(self, tmp: Path, tree: FakeTree, kind: str) -> None:
        self.run_dir = tmp / "run"
        self.run_dir.mkdir()
        self.tree = tree
        self.kind = kind
        self.managers: dict[str, object] = {}
        self.helpers: list[subprocess.Popen] = []

    def add(self, name: str, status: str = "running", disks: list | None = None,
            files: dict[str, dict[str, str]] | None = None, nics: list | None = None) -> dict:
        """Record container ``name``; ``status``: running | stopped | created | rebooting |
        vanished (init dead, no exit file, no monitor). ``files``: {controller: {file: text}}
        written into its cgroup dirs. Returns its cgroup paths."""
        mgr = new_manager("lxcone", name, layout_of(self.tree))
        mgr.create()
        self.managers[name] = mgr
        for ctrl, content in (files or {}).items():
            write_files(mgr.paths[ctrl], content)
        d = self.run_dir / name
        d.mkdir()
        state = {"spec": {"name": name, "nics": nics or []}, "cgroup_paths": dict(mgr.paths),
                 "host_netns": None}
        if disks is not None:
            state["disks"] = disks
        (d / "state.json").write_text(json.dumps(state, indent=1, sort_keys=True))
        (d / "config").write_text("")
        if status == "running":
            (d / "init").write_text(f"{os.getpid()} {own_starttime()} {os.getpid()}\n")
        elif status in ("stopped", "vanished"):
            (d / "init").write_text(f"{dead_pid()} 1 {dead_pid()}\n")
            if status == "stopped":
                (d / "exit").write_text("exited 0\n")
        elif status == "rebooting":
            # init gone, no exit file, but its lxcone-monitor is alive (restarting init)
            mon = subprocess.Popen(["lxcone-monitor", str(d / "config"), "-f"],
                                   executable="/usr/bin/tail", stdout=subprocess.DEVNULL)
            self.helpers.append(mon)
            (d / "init").write_text(f"{dead_pid()} 1 {mon.pid}\n")
        elif status != "created":
            raise ValueError(status)
        return dict(mgr.paths)

    def close(self) -> None:
        for p in self.helpers:
            p.kill()
            p.wait()



@pytest.fixture(params=LAYOUTS)
def fake_host(request: pytest.FixtureRequest, tmp_path: Path,
              monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHost]:
    tree = make_tree(request.param, tmp_path / "cgroup")
    FakeKernel(tree).install(monkeypatch)
    host = FakeHost(tmp_path, tree, request.param)
    monkeypatch.setenv("LXCONE_RUN_DIR", str(host.run_dir))
    monkeypatch.setenv("LXCONE_MONITOR_STATE_DIR", str(tmp_path / "state"))
    yield host
    host.close()


@pytest.fixture
def v1_host(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[FakeHost]:
    tree = make_tree("v1", tmp_path / "cgroup")
    FakeKernel(tree).install(monkeypatch)
    host = FakeHost(tmp_path, tree, "v1")
    monkeypatch.setenv("LXCONE_RUN_DIR", str(host.run_dir))
    monkeypatch.setenv("LXCONE_MONITOR_STATE_DIR", str(tmp_path / "state"))
    yield host
    host.close()
