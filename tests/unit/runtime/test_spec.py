"""Spec validation: every bad field is refused with one sentence, before any kernel work."""

from __future__ import annotations

import os
import string

import pytest
from hypothesis import given, settings
from hypothesis import strategies as stz

from lxcone.cgroups import Resources
from lxcone.runtime.spec import Bind, ContainerSpec, IdMap, SpecError, _resolve_in_root, validate


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory) -> str:
    root = tmp_path_factory.mktemp("fakeroot")
    (root / "bin").mkdir()
    (root / "sbin").mkdir()
    busybox = root / "bin" / "busybox"
    busybox.write_text("#!/bin/sh\n")
    busybox.chmod(0o755)
    (root / "sbin" / "init").symlink_to("/bin/busybox")  # absolute: must resolve in the root
    (root / "bin" / "noexec").write_text("")
    return str(root)


def test_a_good_spec_passes(rootfs):
    validate(ContainerSpec(name="one-42", rootfs=rootfs))


@pytest.mark.parametrize(("change", "words"), [
    ({"name": ""}, "name"),
    ({"name": "../x"}, "name"),
    ({"name": "a" * 65}, "name"),
    ({"name": "one-1\n"}, "name"),  # "$" in a regex accepts a trailing newline: found by hypothesis
    ({"hostname": "host\n"}, "hostname"),
    ({"hostname": "-bad"}, "hostname"),
    ({"rootfs": "relative/path"}, "absolute"),
    ({"rootfs": "/"}, "host's /"),
    ({"rootfs": "/no/such/dir"}, "does not exist"),
    ({"init": ("sbin/init",)}, "absolute path"),
    ({"init": ("/sbin/missing",)}, "does not exist"),
    ({"init": ("/bin/noexec",)}, "not executable"),
    ({"env": ("NOEQUALS",)}, "NAME=value"),
    ({"env": ("A=b\nc",)}, "NAME=value"),
    ({"id_map": IdMap(host_uid=0)}, "host_uid"),
    ({"id_map": IdMap(size=3)}, "size"),
    ({"binds": (Bind("relative", "/x"),)}, "absolute"),
    ({"binds": (Bind("/etc", "/"),)}, "inside the container"),
    ({"binds": (Bind("/etc", "/a/../../etc"),)}, "without '..'"),
    ({"binds": (Bind("/no/such/source", "/x"),)}, "does not exist"),
    ({"resources": Resources(memory_limit_bytes=-7)}, "memory"),
    ({"stop_signal": 0}, "signal"),
])
def test_each_bad_field_is_named(rootfs, change, words):
    spec = ContainerSpec(name="ct", rootfs=rootfs).with_changes(**change)
    with pytest.raises(SpecError, match=words):
        validate(spec)


def test_init_symlinks_resolve_inside_the_rootfs(rootfs):
    assert _resolve_in_root(rootfs, "/sbin/init") == os.path.join(rootfs, "bin/busybox")
    # ".." cannot climb out of the root
    assert _resolve_in_root(rootfs, "/../../bin/busybox") == os.path.join(rootfs, "bin/busybox")


def test_spec_round_trips_through_json_dict(rootfs):
    spec = ContainerSpec(name="ct", rootfs=rootfs, binds=(Bind("/etc", "/mnt/etc", True),),
                         resources=Resources(memory_limit_bytes=1 << 30, pids_limit=100))
    assert ContainerSpec.from_dict(spec.to_dict()) == spec


def test_unknown_fields_in_a_stored_spec_are_refused(rootfs):
    d = ContainerSpec(name="ct", rootfs=rootfs).to_dict()
    d["surprise"] = 1
    with pytest.raises(SpecError, match="surprise"):
        ContainerSpec.from_dict(d)


hostile = stz.text(alphabet=string.printable + "é/\\$`;|&\0", min_size=0, max_size=80)


NAME_CHARS = set(string.ascii_letters + string.digits + "._-")


@settings(max_examples=300, deadline=None)
@given(name=hostile)
def test_hostile_names_are_refused(rootfs, name):
    # independent oracle: 1-64 of [A-Za-z0-9._-], starting with a letter or digit
    ok = 0 < len(name) <= 64 and set(name) <= NAME_CHARS and name[0].isalnum()
    spec = ContainerSpec(name=name, rootfs=rootfs, hostname="ok")
    if ok:
        validate(spec)
    else:
        with pytest.raises(SpecError, match="name"):
            validate(spec)


@settings(max_examples=200, deadline=None)
@given(args=stz.lists(hostile, min_size=1, max_size=3))
def test_init_arguments_with_newlines_are_refused(rootfs, args):
    spec = ContainerSpec(name="ct", rootfs=rootfs, init=("/sbin/init", *args))
    if any("\n" in a or "\0" in a for a in args):
        with pytest.raises(SpecError):
            validate(spec)
    else:
        validate(spec)
