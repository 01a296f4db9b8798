"""Hot mount targets: normalised or refused with one sentence, before anything is touched."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as stz

from lxcone.runtime import Runtime, SpecError, check_mount_target


@pytest.mark.parametrize(("target", "norm"), [
    ("/media/3", "/media/3"),
    ("/media/3/", "/media/3"),
    ("//media//./3", "/media/3"),
    ("/mnt", "/mnt"),
    ("/devices/x", "/devices/x"),  # only /dev itself and below are refused
    ("/system", "/system"),
    ("/run/ctx", "/run/ctx"),
    ("/srv/a b", "/srv/a b"),
])
def test_good_targets_are_normalised(target, norm):
    assert check_mount_target(target) == norm


@pytest.mark.parametrize(("target", "why"), [
    ("media/3", "absolute"),
    ("", "absolute"),
    ("/", "container's /"),
    ("//./", "container's /"),
    ("/media/../etc", "'..'"),
    ("/..", "'..'"),
    ("/proc", "/proc"),
    ("/proc/sys/kernel", "/proc"),
    ("//sys/./fs", "/sys"),
    ("/dev", "/dev"),
    ("/dev/sda", "/dev"),
    ("/media/a\nb", "newlines"),
    ("/media/a\tb", "tabs"),
    ("/media/a\0b", "NUL"),
    ("/" + "a" * 5000, "too long"),
])
def test_bad_targets_are_refused_with_a_reason(target, why):
    with pytest.raises(SpecError, match=re.escape(why)):
        check_mount_target(target)


def test_non_strings_are_refused():
    with pytest.raises(SpecError):
        check_mount_target(None)  # type: ignore[arg-type]


@given(stz.lists(stz.sampled_from(["a", ".", "..", "", "proc", "dev", "x y"]), max_size=6))
def test_a_normalised_target_is_absolute_clean_and_stable(parts):
    target = "/" + "/".join(parts)
    try:
        norm = check_mount_target(target)
    except SpecError:
        return
    assert norm.startswith("/") and norm != "/"
    assert ".." not in norm.split("/") and "//" not in norm and not norm.endswith("/")
    assert norm.split("/")[1] not in ("proc", "sys", "dev")
    assert check_mount_target(norm) == norm


def test_runtime_validates_before_looking_for_the_container(tmp_path):
    rt = Runtime(str(tmp_path / "run"), "unused")
    for call in (lambda: rt.mount_into("nope", "/srv", "/proc/x"),
                 lambda: rt.umount_from("nope", "relative")):
        with pytest.raises(SpecError):
            call()
    assert not (tmp_path / "run").exists()
