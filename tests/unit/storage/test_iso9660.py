"""The ISO 9660 extractor (fallback for kernels without iso9660): images made by genisoimage with
Rock Ridge, Joliet only and plain names, and hostile/garbage images (hypothesis)."""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lxcone.storage import iso9660
from lxcone.storage.partitions import file_reader

TOOL = shutil.which("genisoimage") or shutil.which("xorrisofs")
needs_tool = pytest.mark.skipif(TOOL is None, reason="needs genisoimage or xorriso")


def make_iso(tmp_path, *opts: str) -> str:
    src = tmp_path / "ctx"
    (src / "sub").mkdir(parents=True)
    (src / "context.sh").write_text("HOSTNAME='vm'\n")
    os.chmod(src / "context.sh", 0o640)
    (src / "sub" / "Mixed_Case.long-name.sh").write_text("#!/bin/sh\n")
    (src / "big").write_bytes(os.urandom(5000))
    os.symlink("context.sh", src / "link")
    out = str(tmp_path / "ctx.iso")
    subprocess.run([TOOL, "-quiet", "-V", "CONTEXT", *opts, "-o", out, str(src)], check=True,
                   capture_output=True)
    return out


def extract(iso: str, dest: str) -> int:
    fd = os.open(iso, os.O_RDONLY)
    try:
        return iso9660.extract(file_reader(fd), os.fstat(fd).st_size, dest)
    finally:
        os.close(fd)


@needs_tool
def test_rock_ridge_names_modes_symlinks(tmp_path) -> None:
    iso = make_iso(tmp_path, "-J", "-R")
    dest = tmp_path / "out"
    assert extract(iso, str(dest)) == 5
    assert (dest / "context.sh").read_text() == "HOSTNAME='vm'\n"
    assert os.stat(dest / "context.sh").st_mode & 0o777 == 0o640
    assert (dest / "sub" / "Mixed_Case.long-name.sh").read_text() == "#!/bin/sh\n"
    assert (dest / "big").read_bytes() == (tmp_path / "ctx" / "big").read_bytes()
    assert os.readlink(dest / "link") == "context.sh"


@needs_tool
def test_joliet_only(tmp_path) -> None:
    iso = make_iso(tmp_path, "-J")
    dest = tmp_path / "out"
    extract(iso, str(dest))
    assert (dest / "sub" / "Mixed_Case.long-name.sh").exists()
    assert not (dest / "link").exists()  # plain ISO/Joliet have no symlinks


@needs_tool
def test_plain_names_are_lower_cased_like_the_kernel(tmp_path) -> None:
    iso = make_iso(tmp_path)
    dest = tmp_path / "out"
    extract(iso, str(dest))
    assert (dest / "context.sh").read_text() == "HOSTNAME='vm'\n"
    assert (dest / "big").exists()


def test_not_an_iso(tmp_path) -> None:
    with pytest.raises(iso9660.IsoError):
        iso9660.extract(lambda o, n: bytes(n), 1 << 20, str(tmp_path / "x"))


@needs_tool
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(st.lists(st.tuples(st.integers(16 * 2048, 40 * 2048), st.integers(0, 255)),
                min_size=1, max_size=12))
def test_corrupted_isos_only_raise_iso_errors(tmp_path, corrupt) -> None:
    iso = tmp_path / "ctx.iso"
    if not iso.exists():
        make_iso(tmp_path, "-J", "-R")
    data = bytearray(iso.read_bytes())
    for off, val in corrupt:
        if off < len(data):
            data[off] = val
    dest = tmp_path / "out"
    shutil.rmtree(dest, ignore_errors=True)
    with contextlib.suppress(iso9660.IsoError):
        iso9660.extract(lambda o, n: bytes(data[o:o + n]), len(data), str(dest))
    # whatever was written stays inside dest
    for root, dirs, files in os.walk(dest):
        for name in dirs + files:
            assert os.path.realpath(os.path.join(root, name)).startswith(str(tmp_path)) or \
                os.path.islink(os.path.join(root, name))
