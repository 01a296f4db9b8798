"""lxcone.cgroups.fs and errors: sanitised names, error messages, parsers, kept fds."""

from __future__ import annotations

import errno
import os
import pickle
from pathlib import Path

import pytest
from cgroups_fakefs import (
    V1_BLKIO_SERVICE_BYTES,
    V1_BLKIO_SERVICED,
    V1_CPU_STAT,
    V1_MEMORY_STAT,
    V2_IO_STAT,
    V2_MEMORY_STAT,
)
from hypothesis import given
from hypothesis import strategies as st

from lxcone.cgroups import CgroupError, CgroupParseError, fs


@pytest.mark.parametrize("name", ["", ".", "..", "a/b", "../memory.max", "/etc", "x\0y"])
def test_clean_name_refuses_anything_but_one_component(name: str) -> None:
    with pytest.raises(ValueError, match="invalid cgroup file name"):
        fs.clean_name(name)


@pytest.mark.parametrize("name", ["memory.max", "cgroup.procs", "hugetlb.2MB.max", "tasks"])
def test_clean_name_accepts_cgroup_file_names(name: str) -> None:
    assert fs.clean_name(name) == name


@given(st.text(min_size=1, max_size=20))
def test_clean_name_never_lets_a_path_escape(name: str) -> None:
    try:
        cleaned = fs.clean_name(name)
    except ValueError:
        return
    assert "/" not in cleaned and cleaned not in (".", "..") and "\0" not in cleaned


@given(st.text(max_size=12))
def test_parse_uint_gives_a_number_or_a_parse_error_never_anything_else(text: str) -> None:
    # "²".isdigit() is true and int("²") raises ValueError: a garbled file must still come
    # out as CgroupParseError (a stats reader records it and goes on).
    try:
        value = fs.parse_uint(text, "/x/memory.max")
    except CgroupParseError:
        return
    assert value is None or (isinstance(value, int) and value >= 0)


@pytest.mark.parametrize("text", ["\u00b2", "\u0663", "1\u00b2"])
def test_parse_uint_refuses_non_ascii_digits(text: str) -> None:
    with pytest.raises(CgroupParseError):
        fs.parse_uint(text, "/x/memory.max")


def test_write_error_carries_errno_path_and_value(tmp_path: Path) -> None:
    d = tmp_path / "memory" / "lxcone" / "one-1"
    d.mkdir(parents=True)
    # A read-only file gives a real errno from the real open(2).
    f = d / "memory.limit_in_bytes"
    f.write_text("0\n")
    f.chmod(0o444)
    if os.geteuid() == 0:
        # root ignores file modes; a missing file is the portable way to get a real errno.
        f.unlink()
        expect_errno = errno.ENOENT
    else:
        expect_errno = errno.EACCES
    with pytest.raises(CgroupError) as ei:
        fs.write_file(str(d), "memory.limit_in_bytes", "12x")
    e = ei.value
    assert e.errno == expect_errno
    assert e.filename == f"{d}/memory.limit_in_bytes"
    assert e.op == "write" and e.value == "12x"
    assert str(e) == (
        f"[Errno {expect_errno}] {os.strerror(expect_errno)}: write '12x' to "
        f"{d}/memory.limit_in_bytes"
    )


def test_cgroup_error_message_format_matches_the_contract() -> None:
    e = CgroupError(
        errno.EINVAL, "/sys/fs/cgroup/memory/lxcone/one-1/memory.limit_in_bytes", "write", "12x"
    )
    assert str(e) == (
        "[Errno 22] Invalid argument: write '12x' to "
        "/sys/fs/cgroup/memory/lxcone/one-1/memory.limit_in_bytes"
    )
    assert isinstance(e, OSError)


@pytest.mark.parametrize(
    ("err", "builtin"),
    [
        (errno.ENOENT, FileNotFoundError),
        (errno.EEXIST, FileExistsError),
        (errno.EACCES, PermissionError),
        (errno.EPERM, PermissionError),
        (errno.ESRCH, ProcessLookupError),
    ],
)
def test_cgroup_error_is_the_matching_builtin_subclass(err: int, builtin: type) -> None:
    e = CgroupError(err, "/x", "read")
    assert isinstance(e, builtin) and isinstance(e, CgroupError)
    assert e.errno == err


def test_cgroup_errors_pickle(tmp_path: Path) -> None:
    e = CgroupError(errno.ENOENT, "/x/memory.max", "write", "1")
    e2 = pickle.loads(pickle.dumps(e))
    assert type(e2) is type(e) and str(e2) == str(e) and e2.value == "1"
    p = CgroupParseError("/x/memory.stat", "garbage", "bad line")
    p2 = pickle.loads(pickle.dumps(p))
    assert type(p2) is CgroupParseError and str(p2) == str(p)


def test_parse_error_carries_path_and_content(tmp_path: Path) -> None:
    (tmp_path / "memory.current").write_text("12x\n")
    with pytest.raises(CgroupParseError) as ei:
        fs.read_uint(str(tmp_path), "memory.current")
    e = ei.value
    assert e.filename == f"{tmp_path}/memory.current"
    assert e.content == "12x\n"
    assert e.errno == errno.EINVAL and isinstance(e, CgroupError)
    assert "12x" in str(e) and str(tmp_path) in str(e)


def test_read_uint_max_is_none_and_negative_is_an_error(tmp_path: Path) -> None:
    (tmp_path / "pids.max").write_text("max\n")
    (tmp_path / "pids.current").write_text("17\n")
    (tmp_path / "cpu.cfs_quota_us").write_text("-1\n")
    assert fs.read_uint(str(tmp_path), "pids.max") is None
    assert fs.read_uint(str(tmp_path), "pids.current") == 17
    with pytest.raises(CgroupParseError):
        fs.read_uint(str(tmp_path), "cpu.cfs_quota_us")
    assert fs.read_int(str(tmp_path), "cpu.cfs_quota_us") == -1


def test_read_missing_file_is_file_not_found(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError) as ei:
        fs.read_file(str(tmp_path), "memory.max")
    assert isinstance(ei.value, CgroupError) and ei.value.op == "read"


def test_parse_keyed_real_v1_memory_stat() -> None:
    kv = fs.parse_keyed(V1_MEMORY_STAT, "memory.stat")
    assert len(kv) == 42
    assert kv["total_inactive_file"] == 577536
    assert kv["hierarchical_memory_limit"] == 9223372036854771712


def test_parse_keyed_subset_matches_full_parse_and_skips_prefixed_keys() -> None:
    for text in (V1_MEMORY_STAT, V2_MEMORY_STAT, V1_CPU_STAT):
        full = fs.parse_keyed(text, "x")
        keys = [*list(full)[:5], "missing_key"]
        assert fs.parse_keyed_subset(text, "x", keys) == {k: full[k] for k in keys if k in full}
    # "rss" must not match "rss_huge", and "file" must not match "file_mapped".
    assert fs.parse_keyed_subset("rss_huge 5\nrss 7\n", "x", ["rss"]) == {"rss": 7}
    assert fs.parse_keyed_subset(V2_MEMORY_STAT, "x", ["file"]) == {"file": 2957312}
    # First line without a leading newline.
    assert fs.parse_keyed_subset("anon 1\nfile 2", "x", ["anon", "file"]) == {"anon": 1, "file": 2}


@pytest.mark.parametrize("bad", ["key\n", "key x\n", "k 1\nbroken\n"])
def test_parse_keyed_rejects_malformed_lines(bad: str) -> None:
    with pytest.raises(CgroupParseError):
        fs.parse_keyed(bad, "/x/cpu.stat")


def test_parse_nested_keyed_io_stat() -> None:
    parsed = fs.parse_nested_keyed(V2_IO_STAT, "io.stat")
    assert parsed["254:0"] == {
        "rbytes": 1482752,
        "wbytes": 3276800,
        "rios": 96,
        "wios": 51,
        "dbytes": 0,
        "dios": 0,
    }
    assert fs.parse_nested_keyed("8:0 rbps=max wbps=1048576\n", "io.max") == {
        "8:0": {"rbps": None, "wbps": 1048576}
    }
    assert fs.parse_nested_keyed("", "io.stat") == {}
    with pytest.raises(CgroupParseError):
        fs.parse_nested_keyed("8:0 rbytes\n", "io.stat")


def test_parse_blkio_rwstat_sums_devices_and_skips_grand_total() -> None:
    assert fs.parse_blkio_rwstat(V1_BLKIO_SERVICE_BYTES, "x")["Write"] == 3276800
    assert fs.parse_blkio_rwstat(V1_BLKIO_SERVICED, "x")["Write"] == 51
    two = "8:0 Read 10\n8:0 Write 1\n8:16 Read 5\nTotal 16\n"
    assert fs.parse_blkio_rwstat(two, "x") == {"Read": 15, "Write": 1}
    assert fs.parse_blkio_rwstat("Total 0\n", "x") == {}
    with pytest.raises(CgroupParseError):
        fs.parse_blkio_rwstat("8:0 Read x\n", "x")


def test_kept_dir_rereads_fresh_content_with_one_fd(tmp_path: Path) -> None:
    f = tmp_path / "memory.current"
    f.write_text("1\n")
    with fs.KeptDir(str(tmp_path)) as kd:
        assert kd.read("memory.current") == "1\n"
        # Same size rewrite in place: a kept fd sees it (cgroupfs regenerates on every read).
        with open(f, "r+") as w:
            w.write("2\n")
        assert kd.read("memory.current") == "2\n"
        fds_before = len(os.listdir("/proc/self/fd"))
        for _ in range(10):
            kd.read("memory.current")
        assert len(os.listdir("/proc/self/fd")) == fds_before


def test_kept_dir_reads_files_bigger_than_one_page(tmp_path: Path) -> None:
    big = "".join(f"{i}\n" for i in range(5000))
    (tmp_path / "cgroup.procs").write_text(big)
    with fs.KeptDir(str(tmp_path)) as kd:
        assert kd.read("cgroup.procs") == big
        assert kd.read("cgroup.procs") == big


def test_kept_dir_missing_file_and_missing_dir_raise_cgroup_errors(tmp_path: Path) -> None:
    with fs.KeptDir(str(tmp_path)) as kd, pytest.raises(FileNotFoundError):
        kd.read("memory.current")
    with fs.KeptDir(str(tmp_path / "gone")) as kd:
        for _ in range(2):
            with pytest.raises(CgroupError) as ei:
                kd.read("memory.current")
            assert ei.value.errno == errno.ENOENT


def test_kept_dir_pins_the_directory_it_opened(tmp_path: Path) -> None:
    d = tmp_path / "one-1"
    d.mkdir()
    (d / "pids.current").write_text("3\n")
    kd = fs.KeptDir(str(d))
    assert kd.read("pids.current") == "3\n"
    # Replace the directory by a new one with the same name: the kept fd still reads the old
    # file, never the new cgroup's.
    os.rename(d, tmp_path / "old")
    d.mkdir()
    (d / "pids.current").write_text("9\n")
    assert kd.read("pids.current") == "3\n"
    kd.close()
    assert kd.read("pids.current") == "9\n"
    kd.close()


def test_make_dir_and_remove_dir(tmp_path: Path) -> None:
    p = str(tmp_path / "x")
    assert fs.make_dir(p) is True
    assert fs.make_dir(p) is False
    with pytest.raises(CgroupError) as ei:
        fs.make_dir(str(tmp_path / "a" / "b"))
    assert ei.value.errno == errno.ENOENT and ei.value.op == "mkdir"
    fs.remove_dir(p)
    with pytest.raises(FileNotFoundError):
        fs.remove_dir(p)


def test_read_pids(tmp_path: Path) -> None:
    (tmp_path / "cgroup.procs").write_text("1\n22\n333\n")
    assert fs.read_pids(str(tmp_path)) == [1, 22, 333]
    (tmp_path / "cgroup.procs").write_text("")
    assert fs.read_pids(str(tmp_path)) == []
