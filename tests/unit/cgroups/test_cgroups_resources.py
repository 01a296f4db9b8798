"""Resources validation: impossible values raise ValueError naming the field, nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest
from cgroups_fakefs import FakeKernel, layout_of, make_v1_tree, make_v2_tree
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lxcone.cgroups import Resources, new_manager
from lxcone.cgroups.resources import CPU_QUOTA_MAX_US, INT64_MAX, PIDS_MAX

VALID = [
    Resources(),
    Resources(memory_limit_bytes=-1, memory_swap_limit_bytes=-1),
    Resources(memory_limit_bytes=1 << 30, memory_swap_limit_bytes=0),
    Resources(cpu_quota_us=50000, cpu_period_us=100000),
    Resources(cpu_quota_us=-1, cpu_period_us=1000),
    Resources(cpu_shares=2),
    Resources(cpu_shares=262144),
    Resources(cpu_weight=1),
    Resources(cpu_weight=10000),
    Resources(cpuset_cpus="0-1,3", cpuset_mems="0"),
    Resources(pids_limit=-1),
    Resources(pids_limit=0),
    Resources(pids_limit=PIDS_MAX),
    Resources(unified={"memory.high": "1G", "io.max": "8:0 rbps=1048576"}),
    Resources(unified={"hugetlb.2MB.max": "max", "cgroup.max.descendants": "10"}),
]

INVALID = [
    (Resources(memory_limit_bytes=0), "memory_limit_bytes"),
    (Resources(memory_limit_bytes=-2), "memory_limit_bytes"),
    (Resources(memory_limit_bytes=INT64_MAX + 1), "memory_limit_bytes"),
    (Resources(memory_swap_limit_bytes=-5), "memory_swap_limit_bytes"),
    (Resources(cpu_quota_us=999), "cpu_quota_us"),
    (Resources(cpu_quota_us=0), "cpu_quota_us"),
    (Resources(cpu_quota_us=CPU_QUOTA_MAX_US + 1), "cpu_quota_us"),
    (Resources(cpu_period_us=999), "cpu_period_us"),
    (Resources(cpu_period_us=1_000_001), "cpu_period_us"),
    (Resources(cpu_period_us=-1), "cpu_period_us"),
    (Resources(cpu_shares=1), "cpu_shares"),
    (Resources(cpu_shares=262145), "cpu_shares"),
    (Resources(cpu_weight=0), "cpu_weight"),
    (Resources(cpu_weight=10001), "cpu_weight"),
    (Resources(cpu_shares=1024, cpu_weight=100), "cpu_weight"),
    (Resources(cpuset_cpus=""), "cpuset_cpus"),
    (Resources(cpuset_cpus="1-0"), "cpuset_cpus"),
    (Resources(cpuset_mems="0,a"), "cpuset_mems"),
    (Resources(pids_limit=-2), "pids_limit"),
    (Resources(pids_limit=PIDS_MAX + 1), "pids_limit"),
    (Resources(unified={"memory/../x": "1"}), "unified"),
    (Resources(unified={"memory": "1"}), "unified"),
    (Resources(unified={"../cgroup.procs": "1"}), "unified"),
    (Resources(unified={"cgroup.procs": "1"}), "unified"),
    (Resources(unified={"cgroup.freeze": "1"}), "unified"),
    (Resources(unified={"memory.high": ""}), "unified"),
    (Resources(unified={"memory.high": "1\n2"}), "unified"),
]


@pytest.mark.parametrize("res", VALID)
def test_valid_resources(res: Resources) -> None:
    res.validate()


@pytest.mark.parametrize(("res", "field"), INVALID)
def test_invalid_resources_name_the_field(res: Resources, field: str) -> None:
    with pytest.raises(ValueError, match=f"Resources.{field}"):
        res.validate()


@pytest.mark.parametrize(
    "res",
    [Resources(memory_limit_bytes=True), Resources(cpu_quota_us=1.5)],  # type: ignore[arg-type]
)
def test_wrong_types_are_type_errors(res: Resources) -> None:
    with pytest.raises(TypeError):
        res.validate()


def test_resources_are_frozen_and_unified_is_copied() -> None:
    src = {"memory.high": "1G"}
    res = Resources(unified=src)
    src["memory.high"] = "garbage\n\n"
    assert res.unified["memory.high"] == "1G"
    with pytest.raises(TypeError):
        res.unified["x.y"] = "1"  # type: ignore[index]
    assert hash(res) == hash(Resources(unified={"other.key": "2"}))
    assert Resources().is_empty() and not res.is_empty()


# --- property: impossible values never reach the filesystem ------------------------------------

_bad_int = st.one_of(
    st.integers(max_value=-2), st.integers(min_value=INT64_MAX + 1, max_value=1 << 80)
)
_bad_resources = st.one_of(
    st.builds(Resources, memory_limit_bytes=st.one_of(_bad_int, st.just(0))),
    st.builds(Resources, memory_swap_limit_bytes=_bad_int),
    st.builds(
        Resources,
        cpu_quota_us=st.one_of(
            st.integers(min_value=0, max_value=999),
            st.integers(max_value=-2),
            st.integers(min_value=CPU_QUOTA_MAX_US + 1),
        ),
    ),
    st.builds(
        Resources,
        cpu_period_us=st.one_of(st.integers(max_value=999), st.integers(min_value=1_000_001)),
    ),
    st.builds(
        Resources,
        cpu_shares=st.one_of(st.integers(max_value=1), st.integers(min_value=262145)),
    ),
    st.builds(
        Resources,
        cpu_weight=st.one_of(st.integers(max_value=0), st.integers(min_value=10001)),
    ),
    st.builds(
        Resources,
        pids_limit=st.one_of(st.integers(max_value=-2), st.integers(min_value=PIDS_MAX + 1)),
    ),
    st.builds(
        Resources,
        cpuset_cpus=st.text(alphabet="0123456789-, x", max_size=12).filter(
            lambda s: not _valid_cpuset(s)
        ),
    ),
    st.builds(
        Resources,
        unified=st.dictionaries(
            st.text(alphabet="abc./", min_size=1, max_size=8).filter(lambda k: "/" in k),
            st.just("1"),
            min_size=1,
            max_size=2,
        ),
    ),
)
# A valid field next to the bad one: proves the check happens before the first write.
_valid_companion = st.sampled_from(
    [{}, {"memory_limit_bytes": 1 << 30}, {"pids_limit": 10}, {"cpuset_cpus": "0"}]
)


def _valid_cpuset(s: str) -> bool:
    try:
        Resources(cpuset_cpus=s).validate()
    except ValueError:
        return False
    return True


@settings(max_examples=150, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(bad=_bad_resources, companion=_valid_companion, kind=st.sampled_from(["v1", "v2"]))
def test_impossible_values_raise_before_any_write(
    tmp_path_factory: pytest.TempPathFactory,
    monkeypatch: pytest.MonkeyPatch,
    bad: Resources,
    companion: dict[str, object],
    kind: str,
) -> None:
    root: Path = tmp_path_factory.mktemp("cg") / "cgroup"
    tree = make_v2_tree(root) if kind == "v2" else make_v1_tree(root, unified=True)
    with monkeypatch.context() as mp:
        fk = FakeKernel(tree).install(mp)
        mgr = new_manager("lxcone", "one-1", layout_of(tree))
        mgr.create()
        before = len(fk.writes)
        res = Resources(
            **{**companion, **{k: v for k, v in vars(bad).items() if v not in (None, {})}}
        )
        with pytest.raises(ValueError, match=r"Resources\."):
            mgr.set(res)
        assert fk.writes[before:] == []
