"""The probes' view of the run dir, against lxcone.monitor.inventory (the reference)."""

from __future__ import annotations

import json
import os
import sys

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lxcone.monitor import inventory
from lxcone.monitor.rundir import (
    CREATED,
    FROZEN,
    RUNNING,
    STOPPED,
    StateCache,
    parse_state,
    scan,
    vm_id_of,
)

from .conftest import FakeHost


@given(st.text(max_size=12))
def test_vm_id_of_agrees_with_inventory(suffix: str) -> None:
    for name in (f"one-{suffix}", suffix):
        assert vm_id_of(name) == inventory.vm_id_of(name)


@pytest.mark.parametrize(("name", "vm_id"), [
    ("one-0", 0), ("one-12", 12), ("one-007", None), ("one-12\n", None), ("one-", None),
    ("one-1a", None), ("one--1", None), ("one-+1", None), ("one-\u0661\u0662", None),
    ("ONE-1", None), ("xone-1", None), ("one-1 ", None),
])
def test_only_canonical_deploy_ids_are_vms(name: str, vm_id: int | None) -> None:
    assert vm_id_of(name) == vm_id
    assert inventory.vm_id_of(name) == vm_id


def test_statuses(fake_host: FakeHost) -> None:
    fake_host.add("one-1", "running")
    fake_host.add("one-2", "stopped")
    fake_host.add("one-3", "created")
    fake_host.add("one-4", "running")
    fake_host.managers["one-4"].freeze()
    fake_host.add("one-5", "rebooting")
    fake_host.add("one-6", "vanished")
    found = scan(str(fake_host.run_dir), StateCache())
    got = {c.name: (c.status, c.pid) for c in found.containers}
    me = os.getpid()
    assert got == {"one-1": (RUNNING, me), "one-2": (STOPPED, None), "one-3": (CREATED, None),
                   "one-4": (FROZEN, me), "one-5": (RUNNING, None), "one-6": (STOPPED, None)}
    assert found.skipped == 0


def test_foreign_and_broken_entries_are_skipped(v1_host: FakeHost) -> None:
    run = v1_host.run_dir
    v1_host.add("one-1")
    v1_host.add("web")  # a container, but not an OpenNebula VM
    (run / "one-2").mkdir()  # being created: no state.json yet
    (run / "one-3").mkdir()
    (run / "one-3" / "state.json").write_text('{"spec": {"name": "one-3"}, "cgroup_pa')  # torn
    (run / "one-4").write_text("a file, not a container dir")
    (run / "one-5").mkdir()
    (run / "one-5" / "state.json").write_text(json.dumps({"spec": [], "cgroup_paths": {}}))
    (run / "one-6").mkdir()
    (run / "one-6" / "state.json").write_text(json.dumps(
        {"spec": {}, "cgroup_paths": {"memory": "relative"}}))
    v1_host.add("one-7")
    (run / "one-7" / "init").write_text("not numbers\n")
    (run / "one-8").symlink_to("/nonexistent")
    (run / ".monitor").mkdir()
    (run / 'one-9"\n').mkdir()
    found = scan(str(run), StateCache())
    assert [c.name for c in found.containers] == ["one-1"]
    assert found.skipped == 7  # one-2 .. one-8 (hostile names never reach the reader)
    everything = scan(str(run), StateCache(), only_vms=False)
    assert [c.name for c in everything.containers] == ["one-1", "web"]


def test_matches_inventory(v1_host: FakeHost) -> None:
    for name, status in [("one-1", "running"), ("one-2", "stopped"), ("one-3", "created"),
                         ("one-4", "vanished"), ("web", "running")]:
        v1_host.add(name, status, nics=[{"host_name": f"{name}-0", "guest_name": "eth0"}])
    (v1_host.run_dir / "one-9").mkdir()
    ref = {c.name: c for c in inventory.list_containers(v1_host.run_dir)}
    ours = {c.name: c for c in scan(str(v1_host.run_dir), StateCache(), only_vms=False,
                                    freezer=False).containers}
    assert set(ref) == set(ours)
    for name, r in ref.items():
        o = ours[name]
        assert (o.vm_id, o.pid, o.cgroup_paths) == (r.vm_id, r.pid, r.cgroup_paths)
        assert (o.status in (RUNNING, FROZEN)) == r.running


def test_missing_or_unlistable_run_dir(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert scan(str(tmp_path / "nope"), StateCache()).containers == []
    (tmp_path / "file").write_text("")
    assert scan(str(tmp_path / "file"), StateCache()).containers == []

    def denied(path: str) -> list[str]:
        raise PermissionError(13, "Permission denied", path)

    monkeypatch.setattr(os, "listdir", denied)
    with pytest.raises(PermissionError):
        scan(str(tmp_path), StateCache())


def test_unreadable_entries_are_counted_as_denied(v1_host: FakeHost,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    v1_host.add("one-1")
    v1_host.add("one-2")
    real_stat = os.stat

    def stat(path, *a, **kw):
        if "one-2" in str(path):
            raise PermissionError(13, "Permission denied", path)
        return real_stat(path, *a, **kw)

    monkeypatch.setattr(os, "stat", stat)
    found = scan(str(v1_host.run_dir), StateCache())
    assert [c.name for c in found.containers] == ["one-1"] and found.denied == 1


def test_state_json_is_parsed_once_until_it_changes(v1_host: FakeHost,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    v1_host.add("one-1", disks=[{"id": 0, "path": "/var/lib/one/datastores/0/1/disk.0"}])
    v1_host.add("one-2")
    cache = StateCache()
    scan(str(v1_host.run_dir), cache)
    saved = cache.dump()
    assert set(saved) == {"one-1", "one-2"}

    parsed = []
    import lxcone.monitor.rundir as rd

    real = rd.parse_state
    monkeypatch.setattr(rd, "parse_state", lambda data: parsed.append(1) or real(data))
    cache2 = StateCache(saved)
    found = scan(str(v1_host.run_dir), cache2)
    assert parsed == []  # nothing changed: no read, no json
    assert found.containers[0].disks == ((0, "/var/lib/one/datastores/0/1/disk.0"),)
    # the runtime rewrites state.json (tmp + rename): new inode, parsed again
    p = v1_host.run_dir / "one-2" / "state.json"
    state = json.loads(p.read_text())
    state["disks"] = [{"id": 3, "path": "/d3"}]
    tmp = p.with_name("state.json.tmp")
    tmp.write_text(json.dumps(state))
    os.rename(tmp, p)
    cache3 = StateCache(cache2.dump())
    found = scan(str(v1_host.run_dir), cache3)
    assert parsed == [1]
    assert found.containers[1].disks == ((3, "/d3"),)
    # a deleted container leaves the cache
    import shutil

    shutil.rmtree(v1_host.run_dir / "one-1")
    cache4 = StateCache(cache3.dump())
    scan(str(v1_host.run_dir), cache4)
    assert set(cache4.dump()) == {"one-2"}


@pytest.mark.parametrize("entries", [None, [], "x", {"one-1": "garbage"}, {"one-1": [1, 2]},
                                     {"one-1": [1, 2, 3, "notadict", []]}])
def test_a_corrupt_cache_is_ignored(v1_host: FakeHost, entries: object) -> None:
    v1_host.add("one-1")
    found = scan(str(v1_host.run_dir), StateCache(entries))
    assert [c.name for c in found.containers] == ["one-1"]


def test_disks_shape() -> None:
    base = {"spec": {}, "cgroup_paths": {"memory": "/m"}}
    good = [{"id": 0, "path": "/a"}, {"id": 2, "path": "/b/c", "extra": 1}]
    bad = [{"id": -1, "path": "/a"}, {"id": True, "path": "/a"}, {"id": "1", "path": "/a"},
           {"id": 1, "path": "rel"}, {"id": 1}, "x", {"id": 1, "path": "/a\0b"}]
    parsed = parse_state(json.dumps({**base, "disks": good + bad}).encode())
    assert parsed == ({"memory": "/m"}, ((0, "/a"), (2, "/b/c")))
    assert parse_state(json.dumps({**base, "disks": "nope"}).encode())[1] == ()
    assert parse_state(json.dumps(base).encode())[1] == ()


def test_rundir_imports_stay_lean() -> None:
    """The probes' modules must not pull in json/re/dataclasses/pathlib/typing at import time
    (each costs milliseconds on every probe run)."""
    import subprocess

    code = ("import sys; sys.path.insert(0, sys.argv[1]); import lxcone.monitor.probes; "
            "bad = {'json', 're', 'dataclasses', 'pathlib', 'typing', 'cffi', 'pyroute2', "
            "'lxcone.cgroups', 'lxcone.runtime', 'xml', 'contextlib'} & set(sys.modules); "
            "print(sorted(bad))")
    root = os.path.dirname(os.path.dirname(os.path.abspath(inventory.__file__)))
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code, os.path.dirname(root)],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out == "[]"
