"""Fixtures: fake v1 / co-mounted v1 / hybrid / v2 cgroupfs trees with a fake kernel."""

from __future__ import annotations

from pathlib import Path

import pytest
from cgroups_fakefs import FakeKernel, FakeTree, make_v1_tree, make_v2_tree


@pytest.fixture
def v1_tree(tmp_path: Path) -> FakeTree:
    return make_v1_tree(tmp_path / "cgroup")


@pytest.fixture
def comounted_tree(tmp_path: Path) -> FakeTree:
    return make_v1_tree(tmp_path / "cgroup", comounted=True)


@pytest.fixture
def hybrid_tree(tmp_path: Path) -> FakeTree:
    return make_v1_tree(tmp_path / "cgroup", unified=True)


@pytest.fixture
def v2_tree(tmp_path: Path) -> FakeTree:
    return make_v2_tree(tmp_path / "cgroup")


@pytest.fixture(params=["v1", "comounted", "hybrid", "v2"])
def any_tree(request: pytest.FixtureRequest, tmp_path: Path) -> FakeTree:
    if request.param == "v2":
        return make_v2_tree(tmp_path / "cgroup")
    return make_v1_tree(
        tmp_path / "cgroup",
        comounted=request.param == "comounted",
        unified=request.param == "hybrid",
    )


@pytest.fixture
def kernel(monkeypatch: pytest.MonkeyPatch) -> object:
    """Factory: kernel(tree) installs a FakeKernel for the test."""

    def install(tree: FakeTree) -> FakeKernel:
        return FakeKernel(tree).install(monkeypatch)

    return install
