"""CgroupCollector against fake cgroup trees and a fake run dir, through a fresh registry.

Every test reads the exposition text back with prometheus_client.parser, so names, types,
labels and values are checked as Prometheus would see them.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import time
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from exporter import collector as collector_mod
from exporter.exposition import clean_text
from exporter.metrics import ERROR_KINDS, METRICS, STATES
from lxcone.cgroups import from_paths
from lxcone.monitor import inventory

from .conftest import MEM_USAGE as MEM
from .conftest import FakeHost, counters

Key = tuple[str, frozenset]


def parse(text: str) -> tuple[dict[str, str], dict[Key, float]]:
    """(family name -> type, (sample name, labels) -> value)."""
    types, values = {}, {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            key = (s.name, frozenset(s.labels.items()))
            assert key not in values, f"duplicate series {key}"
            values[key] = s.value
    return types, values


def scrape(registry: CollectorRegistry) -> dict[Key, float]:
    return parse(generate_latest(registry).decode())[1]


def series(values: dict[Key, float], name: str, **labels: str) -> dict[frozenset, float]:
    """The series of ``name`` whose labels include ``labels``."""
    want = set(labels.items())
    return {lbl: v for (n, lbl), v in values.items() if n == name and want <= lbl}


def one(values: dict[Key, float], name: str, **labels: str) -> float:
    found = series(values, name, **labels)
    assert len(found) == 1, f"{name}{labels}: {found}"
    return next(iter(found.values()))


def test_running_container_all_metrics_with_types_units_and_labels(
        host: FakeHost, registry: CollectorRegistry) -> None:
    host.add("one-7", nics=(("one-7-0", "eth0"), ("one-7-1", "eth1")))
    host.collector(registry)
    text = generate_latest(registry).decode()
    types, values = parse(text)
    # Every family is exposed with the declared type (counters parse back without _total).
    for m in METRICS:
        fam = m.name[: -len("_total")] if m.type == "counter" else m.name
        assert types[fam] == m.type, m.name
    exp = host.expected
    ident = {"one_vm_id": "7"}
    checks = {
        "lxcone_container_cpu_usage_seconds_total": exp["cpu_usage"],
        "lxcone_container_cpu_user_seconds_total": exp["cpu_user"],
        "lxcone_container_cpu_system_seconds_total": exp["cpu_system"],
        "lxcone_container_cpu_cfs_periods_total": exp["periods"],
        "lxcone_container_cpu_cfs_throttled_periods_total": exp["throttled"],
        "lxcone_container_cpu_cfs_throttled_seconds_total": exp["throttled_s"],
        "lxcone_container_memory_usage_bytes": exp["usage"],
        "lxcone_container_memory_working_set_bytes": exp["working_set"],
        "lxcone_container_memory_rss_bytes": exp["rss"],
        "lxcone_container_memory_cache_bytes": exp["cache"],
        "lxcone_container_memory_swap_bytes": exp["swap"],
        "lxcone_container_spec_memory_limit_bytes": exp["limit"],
        "lxcone_container_oom_events_total": exp["oom"],
        "lxcone_container_tasks": exp["tasks"],
        "lxcone_container_spec_tasks_limit": exp["tasks_limit"],
        "lxcone_container_fs_reads_bytes_total": exp["rbytes"],
        "lxcone_container_fs_writes_bytes_total": exp["wbytes"],
        "lxcone_container_fs_reads_total": exp["rios"],
        "lxcone_container_fs_writes_total": exp["wios"],
    }
    for name, want in checks.items():
        found = series(values, name)
        assert list(found) == [frozenset(ident.items())], name  # identity label only
        assert next(iter(found.values())) == pytest.approx(want), name
    assert one(values, "lxcone_container_info", one_vm_id="7", deploy_id="one-7") == 1
    states = series(values, "lxcone_container_state", one_vm_id="7")
    assert {dict(k)["state"]: v for k, v in states.items()} == {
        "created": 0, "running": 1, "frozen": 0, "stopped": 0}
    start = one(values, "lxcone_container_start_time_seconds", one_vm_id="7")
    assert abs(start - time.time()) < 60  # its init (a sleep) started just now
    assert one(values, "lxcone_node_containers", state="running") == 1
    assert one(values, "lxcone_exporter_scrape_success") == 1
    for kind in ERROR_KINDS:
        assert one(values, "lxcone_exporter_collect_errors_total", kind=kind) == 0
    # The HELP text of a unit-suffixed metric survives.
    assert "# HELP lxcone_container_memory_usage_bytes Memory charged" in text


def test_network_counters_are_guest_view_per_configured_nic(
        v1_host: FakeHost, registry: CollectorRegistry) -> None:
    ct = v1_host.add("one-3", nics=(("one-3-0", "eth0"), ("one-3-1", "eth1")))
    # The guest also made 50 interfaces of its own: they must not become series.
    v1_host.net[ct.init.pid] = {"eth0": counters(100), "eth1": counters(200),
                                **{f"dummy{i}": counters(1) for i in range(50)}}
    v1_host.collector(registry)
    values = scrape(registry)
    rx = series(values, "lxcone_container_network_receive_bytes_total")
    assert {dict(k)["interface"]: v for k, v in rx.items()} == {"eth0": 100, "eth1": 200}
    names = ["receive_bytes", "receive_packets", "receive_errors", "receive_packets_dropped",
             "transmit_bytes", "transmit_packets", "transmit_errors", "transmit_packets_dropped"]
    for i, n in enumerate(names):
        assert one(values, f"lxcone_container_network_{n}_total", one_vm_id="3",
                   interface="eth1") == 200 + i
    info = series(values, "lxcone_container_network_info", one_vm_id="3")
    assert {(dict(k)["interface"], dict(k)["host_interface"]) for k in info} == {
        ("eth0", "one-3-0"), ("eth1", "one-3-1")}
    # Host interface names appear only in the _info metric.
    for (name, labels), _ in values.items():
        if name != "lxcone_container_network_info":
            assert "host_interface" not in dict(labels), name


def test_nic_missing_in_guest_gives_info_but_no_counters(
        v1_host: FakeHost, registry: CollectorRegistry) -> None:
    v1_host.add("one-4", nics=(("one-4-0", "eth0"),))  # net dev says nothing (renamed, gone)
    v1_host.collector(registry)
    values = scrape(registry)
    assert series(values, "lxcone_container_network_receive_bytes_total") == {}
    assert one(values, "lxcone_container_network_info", interface="eth0") == 1


def test_states_created_stopped_frozen_and_node_counts(
        host: FakeHost, registry: CollectorRegistry) -> None:
    host.add("one-1")
    fz = host.add("one-2")
    host.add("one-3", running=False)  # created, never started
    host.add("one-4", running=False, stopped=True)
    host.freeze(fz)
    host.collector(registry)
    values = scrape(registry)

    def state(vm: str) -> str:
        on = [dict(k)["state"] for k, v in
              series(values, "lxcone_container_state", one_vm_id=vm).items() if v == 1]
        assert len(on) == 1
        return on[0]

    assert [state(v) for v in "1234"] == ["running", "frozen", "created", "stopped"]
    assert {s: one(values, "lxcone_node_containers", state=s) for s in STATES} == {
        "created": 1, "running": 1, "frozen": 1, "stopped": 1}
    # Not running: identity and state only, no stats.
    assert series(values, "lxcone_container_cpu_usage_seconds_total", one_vm_id="3") == {}
    assert series(values, "lxcone_container_start_time_seconds", one_vm_id="4") == {}
    assert one(values, "lxcone_container_info", one_vm_id="4") == 1
    # Frozen containers still report their usage.
    assert one(values, "lxcone_container_memory_usage_bytes", one_vm_id="2") == MEM


def test_non_opennebula_container_is_identified_by_deploy_id(
        v1_host: FakeHost, registry: CollectorRegistry) -> None:
    v1_host.add("web")
    v1_host.add("one-12")
    v1_host.add("one-012")  # not the canonical spelling: must not collide with VM 12
    v1_host.collector(registry)
    values = scrape(registry)
    usage = series(values, "lxcone_container_memory_usage_bytes")
    assert set(usage) == {frozenset({("deploy_id", "web")}), frozenset({("one_vm_id", "12")}),
                          frozenset({("deploy_id", "one-012")})}
    assert one(values, "lxcone_container_info", deploy_id="web") == 1
    assert "one_vm_id" not in dict(next(iter(series(values, "lxcone_container_info",
                                                       deploy_id="web"))))


def test_hostile_names_are_escaped_and_valid_utf8(
        v1_host: FakeHost, registry: CollectorRegistry) -> None:
    nasty = 'evil"}\\ \n{x="1' + os.fsdecode(b"\xff\xfe")
    guest = 'et"h\\0'
    ct = v1_host.add(nasty, nics=(("one-9-0", guest),))
    v1_host.net[ct.init.pid] = {guest: counters(5)}
    c = v1_host.collector(registry)
    for text in (generate_latest(registry).decode(), c.render_text()):
        values = parse(text)[1]
        want = clean_text(nasty)
        assert "\ufffd" in want and '"' in want and "\n" in want
        assert one(values, "lxcone_container_info", deploy_id=want) == 1
        assert one(values, "lxcone_container_network_receive_bytes_total", deploy_id=want,
                   interface=guest) == 5
        # One line per sample: the newline in the name did not split a line.
        assert one(values, "lxcone_container_tasks", deploy_id=want) == 3


def test_fast_renderer_equals_generate_latest(
        host: FakeHost, registry: CollectorRegistry) -> None:
    ct = host.add("one-5", nics=(("one-5-0", "eth0"),))
    host.net[ct.init.pid] = {"eth0": counters(10**15)}
    host.add("web\\x", running=False, stopped=True)
    c = host.collector(registry)
    slow_types, slow = parse(generate_latest(registry).decode())
    fast_types, fast = parse(c.render_text())
    assert slow_types == fast_types
    dur = "lxcone_exporter_scrape_duration_seconds"
    assert {k for k in slow if k[0] != dur} == {k for k in fast if k[0] != dur}
    for k, v in slow.items():
        if k[0] != dur:
            assert fast[k] == pytest.approx(v, rel=1e-15), k


@pytest.mark.parametrize("flush_every", [1, 2, 1000])
def test_rows_rendered_during_the_scrape_give_the_same_text(
        v1_host: FakeHost, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch,
        flush_every: int) -> None:
    """render_chunks() renders the rows every FLUSH_EVERY containers: wherever the flushes fall,
    the text is generate_latest's, each family in one piece, in METRICS order."""
    for i in range(5):
        ct = v1_host.add(f"one-{i}", nics=((f"one-{i}-0", "eth0"),))
        v1_host.net[ct.init.pid] = {"eth0": counters(i * 100)}
    v1_host.add("web", running=False, stopped=True)
    v1_host.add("one-9", running=False)
    v1_host.age()
    c = v1_host.collector(registry)
    monkeypatch.setattr(collector_mod, "FLUSH_EVERY", flush_every)
    text = c.render_text()
    dur = "lxcone_exporter_scrape_duration_seconds"
    slow_types, slow = parse(generate_latest(registry).decode())
    fast_types, fast = parse(text)
    assert slow_types == fast_types
    assert {k: v for k, v in slow.items() if k[0] != dur} == \
        {k: v for k, v in fast.items() if k[0] != dur}
    heads = [line.split()[2] for line in text.splitlines() if line.startswith("# TYPE ")]
    assert heads == [m.name for m in METRICS]
    names = [line.split("{")[0].split()[0] for line in text.splitlines() if line[0] != "#"]
    assert [n for i, n in enumerate(names) if i == 0 or n != names[i - 1]] == \
        [m.name for m in METRICS if m.name in set(names)]  # each family contiguous


def test_describe_does_no_io(v1_host: FakeHost, monkeypatch: pytest.MonkeyPatch) -> None:
    v1_host.add("one-1")
    reg = CollectorRegistry(auto_describe=True)

    def boom(*a: object) -> None:
        raise AssertionError("registration must not scrape")

    monkeypatch.setattr(collector_mod.CgroupCollector, "scrape", boom)
    c = v1_host.collector(reg)  # registers: describe() only
    assert {m.name for m in c.describe()} >= {"lxcone_container_info"}


def test_missing_run_dir_is_an_empty_host(tmp_path: Path, registry: CollectorRegistry) -> None:
    collector_mod.CgroupCollector(tmp_path / "none", registry=registry)
    values = scrape(registry)
    assert one(values, "lxcone_exporter_scrape_success") == 1
    assert one(values, "lxcone_node_containers", state="running") == 0


def test_unlistable_run_dir_reports_failure(tmp_path: Path, registry: CollectorRegistry) -> None:
    (tmp_path / "file").write_text("")
    collector_mod.CgroupCollector(tmp_path / "file", registry=registry)
    assert one(scrape(registry), "lxcone_exporter_scrape_success") == 0


def test_garbage_entries_are_skipped_and_counted_once(
        v1_host: FakeHost, registry: CollectorRegistry) -> None:
    v1_host.add("one-1")
    (v1_host.run_dir / "junk").mkdir()  # no state.json: not a container, not an error
    (v1_host.run_dir / "stray-file").write_text("x")
    bad = v1_host.run_dir / "one-2"
    bad.mkdir()
    (bad / "state.json").write_text("{not json")
    v1_host.age()
    v1_host.collector(registry)
    for _ in range(3):
        values = scrape(registry)
        assert one(values, "lxcone_node_containers", state="running") == 1
    assert one(values, "lxcone_exporter_collect_errors_total", kind="inventory") == 1


def test_container_vanishing_mid_scrape_is_skipped_not_fatal(
        host: FakeHost, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    host.add("one-1")
    gone = host.add("one-2")
    host.add("one-3")
    real = inventory.read_container

    def read_then_vanish(ct_dir: Path):
        info = real(ct_dir)
        if ct_dir.name == "one-2":
            # Deleted right after its record was read: cgroups and run dir entry go away.
            for p in gone.paths.values():
                shutil.rmtree(p, ignore_errors=True)
            shutil.rmtree(ct_dir)
        return info

    monkeypatch.setattr(collector_mod.inventory, "read_container", read_then_vanish)
    host.collector(registry)
    values = scrape(registry)
    assert set(series(values, "lxcone_container_info")) == {
        frozenset({("one_vm_id", "1"), ("deploy_id", "one-1")}),
        frozenset({("one_vm_id", "3"), ("deploy_id", "one-3")})}
    assert one(values, "lxcone_exporter_collect_errors_total", kind="vanished") == 1
    assert one(values, "lxcone_container_tasks", one_vm_id="3") == 3


def test_cgroup_file_errors_give_partial_stats_and_are_counted(
        v1_host: FakeHost, registry: CollectorRegistry) -> None:
    ct = v1_host.add("one-1")
    Path(ct.paths["memory"], "memory.stat").write_text("total_rss x\n")  # unparsable
    v1_host.collector(registry)
    values = scrape(registry)
    assert series(values, "lxcone_container_memory_rss_bytes") == {}
    assert one(values, "lxcone_container_memory_usage_bytes", one_vm_id="1") == MEM
    assert one(values, "lxcone_exporter_collect_errors_total", kind="cgroup") == 1


def _fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def test_readers_are_kept_and_closed_when_the_container_goes(
        host: FakeHost, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    cts = [host.add(f"one-{i}") for i in range(3)]
    host.age()
    c = host.collector(registry)
    before = _fds()
    scrape(registry)
    kept = _fds() - before
    assert kept, "no fds kept: nothing is re-read with pread"
    opened = []
    real_open = os.open

    def counting_open(*a, **kw):
        opened.append(a[0])
        return real_open(*a, **kw)

    monkeypatch.setattr(os, "open", counting_open)
    scrape(registry)
    monkeypatch.undo()
    assert opened == [], "a second scrape must only pread the kept fds"
    assert _fds() - before == kept
    # Delete one container (record and cgroups): its fds are closed at the next scrape.
    shutil.rmtree(cts[0].ct_dir)
    values = scrape(registry)
    assert len(_fds() - before) < len(kept)
    assert c.tracked == 2
    assert series(values, "lxcone_container_info", one_vm_id="0") == {}
    c.close()
    assert _fds() - before == set()


def test_stop_and_restart_rebuild_the_reader(
        host: FakeHost, registry: CollectorRegistry) -> None:
    ct = host.add("one-1")
    host.collector(registry)
    assert one(scrape(registry), "lxcone_container_state", one_vm_id="1", state="running") == 1
    host.stop(ct)  # init exits: seen through its pidfd, without any file changing first
    (ct.ct_dir / "exit").unlink()
    values = scrape(registry)
    assert one(values, "lxcone_container_state", one_vm_id="1", state="stopped") == 1
    assert series(values, "lxcone_container_tasks") == {}
    # Start again: the same cgroup paths, recreated (the old kept fds would read old files),
    # and a new init.
    for p in set(ct.paths.values()):
        shutil.rmtree(p)
    from_paths(ct.paths).create()
    host.write_stats(ct.paths)
    pids_dir = ct.paths["pids"] if "pids" in ct.paths else ct.paths["unified"]
    Path(pids_dir, "pids.current").write_text("9\n")
    host.write_init(ct, host.spawn_init().pid)
    values = scrape(registry)
    assert one(values, "lxcone_container_state", one_vm_id="1", state="running") == 1
    assert one(values, "lxcone_container_tasks", one_vm_id="1") == 9


def test_reboot_inside_container_follows_the_new_init(
        v1_host: FakeHost, registry: CollectorRegistry) -> None:
    ct = v1_host.add("one-1", nics=(("one-1-0", "eth0"),))
    v1_host.net[ct.init.pid] = {"eth0": counters(1)}
    v1_host.collector(registry)
    assert one(scrape(registry), "lxcone_container_network_receive_bytes_total") == 1
    # The monitor restarts init (same cgroups, same netns); the old init is gone.
    new = v1_host.spawn_init()
    v1_host.net[new.pid] = {"eth0": counters(2)}
    ct.init.kill()
    ct.init.wait()
    v1_host.write_init(ct, new.pid)
    values = scrape(registry)
    assert one(values, "lxcone_container_network_receive_bytes_total") == 2
    assert one(values, "lxcone_container_state", state="running") == 1


def test_out_of_fds_rebuilds_the_reader_later(
        v1_host: FakeHost, registry: CollectorRegistry, monkeypatch: pytest.MonkeyPatch) -> None:
    v1_host.add("one-1")
    c = v1_host.collector(registry)
    real_open = os.open
    fail = {"on": True}

    def emfile(path, flags, mode=0o777, *, dir_fd=None):
        if fail["on"] and path == "memory.stat":
            raise OSError(errno.EMFILE, os.strerror(errno.EMFILE), path)
        return real_open(path, flags, mode, dir_fd=dir_fd)

    monkeypatch.setattr(os, "open", emfile)
    values = scrape(registry)
    assert series(values, "lxcone_container_memory_rss_bytes") == {}
    assert one(values, "lxcone_exporter_collect_errors_total", kind="cgroup") >= 1
    fail["on"] = False
    values = scrape(registry)
    assert one(values, "lxcone_container_memory_rss_bytes", one_vm_id="1") == 2191360
    assert c.tracked == 1


def test_record_changed_in_the_same_clock_tick_is_not_missed(
        v1_host: FakeHost, registry: CollectorRegistry) -> None:
    ct = v1_host.add("one-1")
    # Scraped within the racy window of its last change (a future mtime is always inside it,
    # however slow this machine is).
    mtime = time.time_ns() + 5_000_000_000
    os.utime(ct.ct_dir, ns=(mtime, mtime))
    v1_host.collector(registry)
    assert series(scrape(registry), "lxcone_container_network_info") == {}
    # A NIC is hot-plugged (state.json renamed into place) but the directory's mtime does not
    # move (same coarse clock tick as the previous change): the racy rule still catches it.
    state = json.loads((ct.ct_dir / "state.json").read_text())
    state["spec"]["nics"] = [{"host_name": "one-1-0", "guest_name": "eth0"}]
    (ct.ct_dir / "state.json.tmp").write_text(json.dumps(state))
    os.rename(ct.ct_dir / "state.json.tmp", ct.ct_dir / "state.json")
    os.utime(ct.ct_dir, ns=(mtime, mtime))
    assert one(scrape(registry), "lxcone_container_network_info", interface="eth0") == 1
