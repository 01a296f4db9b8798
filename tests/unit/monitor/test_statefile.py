"""The probes' state file: round trip, atomic replacement, corruption reads as "no state"."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lxcone.monitor import statefile

STATE = {"v": 1, "last": 1700000000.5, "vms": {"one-1": [1, "RUNNING", 0]},
         "cpu": {"one-1": [123, 456789, 1000]}, "cache": {"one-1": [1, 2, 3, {"memory": "/x"}, []]}}


def test_round_trip(tmp_path: Path) -> None:
    p = str(tmp_path / "s" / "vm-status-0.state")
    assert statefile.save(p, STATE) is None
    assert statefile.load(p) == STATE
    assert os.listdir(tmp_path / "s") == ["vm-status-0.state"]  # no temporary left
    assert (os.stat(p).st_mode & 0o777) == 0o600


def test_missing_dir_gets_the_run_dir_mode(tmp_path: Path) -> None:
    p = tmp_path / "run" / ".monitor" / "x.state"
    assert statefile.save(str(p), {"a": 1}) is None
    assert (os.stat(tmp_path / "run").st_mode & 0o777) == 0o711
    assert (os.stat(tmp_path / "run" / ".monitor").st_mode & 0o777) == 0o700


@pytest.mark.parametrize("damage", ["truncate", "flip", "empty", "magic", "garbage", "notdict",
                                    "directory", "symlink"])
def test_corruption_reads_as_no_state(tmp_path: Path, damage: str) -> None:
    p = tmp_path / "x.state"
    statefile.save(str(p), STATE)
    data = p.read_bytes()
    if damage == "truncate":
        p.write_bytes(data[:-7])
    elif damage == "flip":
        p.write_bytes(data[:-3] + bytes([data[-3] ^ 0x40]) + data[-2:])
    elif damage == "empty":
        p.write_bytes(b"")
    elif damage == "magic":
        p.write_bytes(b"X" + data[1:])
    elif damage == "garbage":
        p.write_bytes(os.urandom(300))
    elif damage == "notdict":
        statefile.save(str(p), STATE)
        import binascii
        import marshal
        body = marshal.dumps([1, 2, 3])
        p.write_bytes(statefile.MAGIC + binascii.crc32(body).to_bytes(4, "big") + body)
    elif damage == "directory":
        p.unlink()
        p.mkdir()
    elif damage == "symlink":  # never followed: another user's file is not our state
        target = tmp_path / "elsewhere.state"
        p.rename(target)
        p.symlink_to(target)
    assert statefile.load(str(p)) is None


@settings(max_examples=200)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_never_raise(tmp_path_factory: pytest.TempPathFactory, data: bytes) -> None:
    p = tmp_path_factory.mktemp("h") / "x.state"
    p.write_bytes(statefile.MAGIC + data)
    assert statefile.load(str(p)) in (None,) or isinstance(statefile.load(str(p)), dict)


def test_unwritable_dir_is_reported_not_raised(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    err = statefile.save(str(blocker / "x.state"), {"a": 1})
    assert err and "cannot save probe state" in err
