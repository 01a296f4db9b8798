"""lxcone.install: the remotes copy into an OpenNebula tree, uninstall and the host setup, in
temporary directories (no root needed except where a test says so)."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from lxcone import install
from lxcone.testing.fixtures import needs_root

REPO = Path(__file__).resolve().parents[3]
SRC = REPO / "remotes"
SAMPLE = SRC / "etc/vmm/lxcone/lxcone.toml"
PY = sys.executable
NO_USER = "lxcone-no-such-user"


def run(capsys, *argv: str) -> tuple[int, list[str], str]:
    """(exit code, stdout lines, stderr) of ``python -m lxcone.install <argv>``, in-process."""
    code = install.main(list(argv))
    out, err = capsys.readouterr()
    return code, out.splitlines(), err


def remotes(capsys, prefix: Path, *extra: str) -> tuple[int, list[str], str]:
    return run(capsys, "remotes", "--prefix", str(prefix), "--owner", NO_USER,
               "--python", PY, *extra)


def changes(lines: list[str]) -> list[str]:
    """The change lines (not notes, not the summary)."""
    return [x for x in lines if not x.startswith(("note:", "remotes:", "uninstall:", "host:",
                                                  "to run "))]


def tree(root: Path, times: bool = True) -> dict[str, tuple]:
    """Every path under root: kind, mode, link target or content, inode and mtime (directory
    mtimes only with ``times``: adding and removing entries changes them)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            rel = str(p.relative_to(root))
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", os.readlink(p), st.st_ino, st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", stat.S_IMODE(st.st_mode), st.st_ino,
                            st.st_mtime_ns if times else 0)
            else:
                out[rel] = ("file", stat.S_IMODE(st.st_mode), p.read_bytes(), st.st_ino,
                            st.st_mtime_ns)
    return out


def one_error(code: int, err: str) -> str:
    assert code == 1
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("ERROR: "), err
    assert "Traceback" not in err
    return lines[0]


@pytest.fixture
def prefix(tmp_path) -> Path:
    return tmp_path / "remotes"


@pytest.fixture
def installed(capsys, prefix) -> Path:
    code, _, err = remotes(capsys, prefix, "--create")
    assert code == 0, err
    return prefix


# -- remotes ---------------------------------------------------------------------------------


def test_install_mirrors_the_driver_tree_keeping_symlinks(capsys, prefix):
    code, out, err = remotes(capsys, prefix, "--create")
    assert (code, err) == (0, "")
    for root in install.ROOTS:
        for dirpath, dirs, files in os.walk(SRC / root):
            for name in dirs + files:
                s = Path(dirpath) / name
                rel = s.relative_to(SRC)
                d = prefix / rel
                if s.is_symlink():
                    assert d.is_symlink() and os.readlink(d) == os.readlink(s), rel
                elif s.is_dir():
                    assert d.is_dir() and not d.is_symlink(), rel
                    assert stat.S_IMODE(d.stat().st_mode) == 0o755
                else:
                    assert d.read_bytes() == s.read_bytes(), rel
                    want = 0o755 if s.stat().st_mode & 0o111 else 0o644
                    assert stat.S_IMODE(d.lstat().st_mode) == want, rel
    # the action names stay symlinks to the shim, the monitord client links stay dangling
    # links into OpenNebula's im/common.d
    assert os.readlink(prefix / "vmm/lxcone/deploy") == "lxcone-action"
    assert os.readlink(prefix / "im/lxcone.d/monitord-client.rb") == \
        "../common.d/monitord-client.rb"
    assert os.readlink(prefix / "im/lxcone-probes.d/vm/status/lxcone-vm-status") == \
        "../../lxcone-probe"
    assert stat.S_IMODE((prefix / "vmm/lxcone/lxcone-action").stat().st_mode) == 0o755
    assert stat.S_IMODE((prefix / "im/lxcone-probes.d/lxcone-probe").stat().st_mode) == 0o755
    cfg = prefix / install.CONFIG
    assert cfg.read_bytes() == SAMPLE.read_bytes()
    assert stat.S_IMODE(cfg.stat().st_mode) == 0o644
    assert (prefix / install.PYTHON_FILE).read_text() == PY + "\n"
    assert f"note: user '{NO_USER}' does not exist here: files keep the owner of this " \
           f"process (uid {os.geteuid()})" in out
    # one line per change, each naming a path of the prefix
    assert all(str(prefix) in line for line in changes(out))
    assert f"linked {prefix}/vmm/lxcone/deploy -> lxcone-action" in out
    assert f"installed {prefix}/vmm/lxcone/lxcone-action (0755)" in out
    assert out[-1].startswith(f"remotes: {len(changes(out))} change(s) in {prefix}")
    assert not list(prefix.rglob(".*lxcone-install*")), "temp files left behind"


def test_a_second_run_changes_nothing_and_says_so(capsys, installed):
    before = tree(installed)
    code, out, err = remotes(capsys, installed)
    assert (code, err) == (0, "")
    assert changes(out) == []
    assert out[-1] == f"remotes: {installed} is up to date, nothing changed"
    assert tree(installed) == before  # same inodes and mtimes: nothing was rewritten


def test_a_wrong_mode_or_a_replaced_file_is_repaired(capsys, installed):
    action = installed / "vmm/lxcone/lxcone-action"
    action.chmod(0o700)
    (installed / "vmm/lxcone/deploy").unlink()
    (installed / "vmm/lxcone/deploy").write_text("not a link\n")
    code, out, _ = remotes(capsys, installed)
    assert code == 0
    assert changes(out) == [f"relinked {installed}/vmm/lxcone/deploy -> lxcone-action",
                            f"chmod 0755 {action}"]
    assert os.readlink(installed / "vmm/lxcone/deploy") == "lxcone-action"


def test_the_python_file_names_the_interpreter(capsys, installed):
    code, out, _ = run(capsys, "remotes", "--prefix", str(installed), "--owner", NO_USER,
                       "--python", "/opt/lxcone/.venv/bin/python")
    assert code == 0
    assert (installed / install.PYTHON_FILE).read_text() == "/opt/lxcone/.venv/bin/python\n"
    assert f"updated {installed}/{install.PYTHON_FILE} (0644)" in out
    assert any(x.startswith("note: /opt/lxcone/.venv/bin/python does not exist on this "
                            "machine") for x in out)
    manifest = json.loads((installed / install.MANIFEST).read_text())
    assert manifest["python"] == "/opt/lxcone/.venv/bin/python"


def test_the_client_file_names_the_c_client_of_the_interpreter(capsys, installed):
    from lxcone import native

    # PY is this checkout's venv: probe_python finds the package, whose client is built
    assert (installed / install.CLIENT_FILE).read_text() == native.CLIENT + "\n"
    manifest = json.loads((installed / install.MANIFEST).read_text())
    assert install.CLIENT_FILE in manifest["files"]
    assert stat.S_IMODE((installed / install.CLIENT_FILE).stat().st_mode) == 0o644
    # an interpreter that is not on this machine: no client file (the shim runs the Python
    # client), removed from an earlier install, with a note saying how to name it
    code, out, _ = run(capsys, "remotes", "--prefix", str(installed), "--owner", NO_USER,
                       "--python", "/opt/lxcone/.venv/bin/python")
    assert code == 0
    assert not (installed / install.CLIENT_FILE).exists()
    assert f"removed {installed}/{install.CLIENT_FILE} (no longer shipped)" in out
    assert any(x.startswith("note: cannot ask /opt/lxcone/.venv/bin/python where its "
                            "lxcone-client is") and "--client" in x for x in out)
    assert install.CLIENT_FILE not in json.loads((installed / install.MANIFEST).read_text())[
        "files"]
    # named explicitly, for hosts whose layout the front-end does not have
    code, out, _ = run(capsys, "remotes", "--prefix", str(installed), "--owner", NO_USER,
                       "--python", "/opt/lxcone/.venv/bin/python", "--client",
                       "/opt/lxcone/lxcone/native/lxcone-client")
    assert code == 0
    assert (installed / install.CLIENT_FILE).read_text() == \
        "/opt/lxcone/lxcone/native/lxcone-client\n"
    assert any(x.startswith("note: /opt/lxcone/lxcone/native/lxcone-client does not exist on "
                            "this machine") for x in out)
    code, _, err = run(capsys, "remotes", "--prefix", str(installed), "--client", "rel/client")
    assert "--client" in one_error(code, err)


def test_an_interpreter_without_lxcone_gets_no_client_file(capsys, prefix):
    python = shutil.which("python3", path="/usr/bin:/bin")
    if python is None:
        pytest.skip("no system python3")
    if subprocess.run([python, "-I", "-c", "import lxcone"], capture_output=True,
                      check=False).returncode == 0:
        pytest.skip(f"{python} has lxcone installed")
    code, out, _ = run(capsys, "remotes", "--prefix", str(prefix), "--create", "--owner",
                       NO_USER, "--python", python)
    assert code == 0
    assert not (prefix / install.CLIENT_FILE).exists()
    assert any(f"{python} -I cannot load lxcone" in x and "Python client" in x for x in out)


def test_a_modified_config_is_never_overwritten(capsys, installed):
    cfg = installed / install.CONFIG
    mine = 'run_dir = "/srv/lxcone"\n'
    cfg.write_text(mine)
    code, out, _ = remotes(capsys, installed)
    assert code == 0
    assert cfg.read_text() == mine
    new = installed / install.CONFIG_NEW
    assert new.read_bytes() == SAMPLE.read_bytes()
    assert f"installed {new} (0644)" in out
    assert f"note: kept your modified {cfg}; the new sample is installed beside it as " \
           f"{new} (compare them; --force-config replaces yours)" in out
    # idempotent with the modified config too (the note stays, nothing changes)
    before = tree(installed)
    code, out, _ = remotes(capsys, installed)
    assert code == 0 and changes(out) == [] and tree(installed) == before
    assert any(x.startswith("note: kept your modified") for x in out)
    # --force-config replaces it, and the .new sample goes
    code, out, _ = remotes(capsys, installed, "--force-config")
    assert code == 0
    assert cfg.read_bytes() == SAMPLE.read_bytes()
    assert not new.exists()
    assert f"updated {cfg} (0644)" in out


def test_an_operator_config_present_before_the_first_install_is_kept(capsys, tmp_path):
    prefix = tmp_path / "one"
    for d in ("vmm", "im", "etc/vmm/lxcone"):
        (prefix / d).mkdir(parents=True)
    cfg = prefix / install.CONFIG
    cfg.write_text("vcpu_pinning = false\n")
    code, out, _ = remotes(capsys, prefix)
    assert code == 0 and cfg.read_text() == "vcpu_pinning = false\n"
    code, out, _ = run(capsys, "uninstall", "--prefix", str(prefix))
    assert code == 0 and cfg.read_text() == "vcpu_pinning = false\n"
    assert f"note: kept {cfg}: it was there before lxcone.install" in out


def test_the_unmodified_sample_of_an_older_install_is_upgraded(capsys, installed):
    cfg = installed / install.CONFIG
    old = b"# the sample of an older version\nagent = false\n"
    cfg.write_bytes(old)
    m = json.loads((installed / install.MANIFEST).read_text())
    m["files"][install.CONFIG] = install.sha256(old)  # as that older install recorded it
    (installed / install.MANIFEST).write_text(json.dumps(m))
    code, out, _ = remotes(capsys, installed)
    assert code == 0
    assert cfg.read_bytes() == SAMPLE.read_bytes()
    assert not (installed / install.CONFIG_NEW).exists()
    assert f"note: upgraded {cfg}: it was the unmodified sample of the previous install" in out


def test_files_an_older_version_shipped_are_removed(capsys, tmp_path, prefix):
    src = tmp_path / "src"
    shutil.copytree(SRC, src, symlinks=True)
    extra = src / "vmm/lxcone/old_helper"
    extra.write_text("#!/bin/sh\n")
    (src / "im/lxcone-probes.d/vm/old").mkdir()
    (src / "im/lxcone-probes.d/vm/old/README").write_text("x\n")
    code, _, err = remotes(capsys, prefix, "--create", "--source", str(src))
    assert code == 0, err
    assert (prefix / "vmm/lxcone/old_helper").is_file()
    extra.unlink()
    shutil.rmtree(src / "im/lxcone-probes.d/vm/old")
    code, out, _ = remotes(capsys, prefix, "--source", str(src))
    assert code == 0
    assert f"removed {prefix}/vmm/lxcone/old_helper (no longer shipped)" in out
    assert f"removed {prefix}/im/lxcone-probes.d/vm/old/ (no longer shipped)" in out
    assert not (prefix / "vmm/lxcone/old_helper").exists()
    assert not (prefix / "im/lxcone-probes.d/vm/old").exists()


def test_other_drivers_are_left_alone(capsys, tmp_path):
    prefix = tmp_path / "one"
    (prefix / "vmm/kvm").mkdir(parents=True)
    (prefix / "vmm/kvm/deploy").write_text("kvm\n")
    (prefix / "im/kvm.d").mkdir(parents=True)
    (prefix / "im/common.d").mkdir()
    (prefix / "im/common.d/monitord-client.rb").write_text("rb\n")
    (prefix / "etc/vmm/kvm").mkdir(parents=True)
    (prefix / "etc/vmm/kvm/kvmrc").write_text("rc\n")
    before = tree(prefix, times=False)
    code, _, err = remotes(capsys, prefix)  # a real tree: no --create needed
    assert (code, err) == (0, "")
    assert (prefix / "im/lxcone.d/monitord-client.rb").read_text() == "rb\n"  # link resolves
    code, _, err = run(capsys, "uninstall", "--prefix", str(prefix))
    assert (code, err) == (0, "")
    assert tree(prefix, times=False) == before


# -- uninstall -------------------------------------------------------------------------------


def test_uninstall_removes_everything_it_installed(capsys, installed):
    code, out, err = run(capsys, "uninstall", "--prefix", str(installed))
    assert (code, err) == (0, "")
    assert list(installed.iterdir()) == []  # the --create'd vmm/, im/, etc/ went too
    assert f"removed {installed}/vmm/lxcone/deploy" in out
    assert f"removed {installed}/{install.CLIENT_FILE}" in out
    code, out, _ = run(capsys, "uninstall", "--prefix", str(installed))
    assert (code, out) == (0, [f"uninstall: nothing of lxcone in {installed}"])


def test_uninstall_leaves_nothing_but_the_modified_config(capsys, installed):
    cfg = installed / install.CONFIG
    cfg.write_text('run_dir = "/srv/lxcone"\n')
    assert remotes(capsys, installed)[0] == 0  # also installs lxcone.toml.new
    code, out, err = run(capsys, "uninstall", "--prefix", str(installed))
    assert (code, err) == (0, "")
    left = {str(p.relative_to(installed)) for p in installed.rglob("*")}
    assert left == {"etc", "etc/vmm", "etc/vmm/lxcone", install.CONFIG}
    assert cfg.read_text() == 'run_dir = "/srv/lxcone"\n'
    assert f"note: kept {cfg}: it was modified after the install (delete it by hand when " \
           "you no longer need it)" in out


def test_uninstall_refuses_files_it_did_not_record(capsys, prefix):
    (prefix / "vmm/lxcone").mkdir(parents=True)
    (prefix / "im").mkdir()
    code, _, err = run(capsys, "uninstall", "--prefix", str(prefix))
    assert "no etc/vmm/lxcone/install-manifest recorded" in one_error(code, err)
    assert (prefix / "vmm/lxcone").is_dir()


@pytest.mark.parametrize("manifest", [
    "not json",
    '{"format": 1, "files": {"../../etc/passwd": "sha256:x"}, "dirs": []}',
    '{"format": 1, "files": {"/etc/passwd": "sha256:x"}, "dirs": []}',
    '{"format": 1, "files": {}, "dirs": ["vmm/kvm"]}',
    '{"format": 2, "files": {}, "dirs": []}',
])
def test_a_hostile_manifest_is_refused(capsys, installed, manifest):
    (installed / install.MANIFEST).write_text(manifest)
    before = tree(installed)
    code, _, err = run(capsys, "uninstall", "--prefix", str(installed))
    one_error(code, err)
    assert tree(installed) == before


# -- refusals ------------------------------------------------------------------------------


def test_a_missing_prefix_is_refused_without_create(capsys, prefix):
    code, _, err = remotes(capsys, prefix)
    assert one_error(code, err) == (f"ERROR: remotes: {prefix} does not exist (is OpenNebula "
                                    "installed? --create makes a new tree)")
    assert not prefix.exists()


def test_a_tree_that_is_not_opennebulas_is_refused(capsys, prefix):
    (prefix / "vmm").mkdir(parents=True)  # no im/
    (prefix / "data").mkdir()
    code, _, err = remotes(capsys, prefix)
    assert "does not look like OpenNebula's remotes (no vmm/ and im/ directories); pass " \
           "--create" in one_error(code, err)
    assert sorted(p.name for p in prefix.iterdir()) == ["data", "vmm"]


def test_a_prefix_that_is_a_file_is_refused(capsys, tmp_path):
    f = tmp_path / "remotes"
    f.write_text("x")
    code, _, err = remotes(capsys, f, "--create")
    assert one_error(code, err) == f"ERROR: remotes: {f} is not a directory"


def test_the_root_directory_and_the_source_tree_are_refused(capsys):
    code, _, err = remotes(capsys, Path("/"), "--create")
    assert one_error(code, err) == "ERROR: remotes: refusing to install into /"
    code, _, err = remotes(capsys, SRC, "--create")
    assert "is the source tree itself" in one_error(code, err)


def test_a_symlinked_directory_is_never_written_through(capsys, tmp_path, prefix):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (prefix / "vmm").mkdir(parents=True)
    (prefix / "im").mkdir()
    (prefix / "vmm/lxcone").symlink_to(elsewhere)
    code, _, err = remotes(capsys, prefix)
    assert one_error(code, err) == (f"ERROR: remotes: {prefix}/vmm/lxcone is a symlink: the "
                                    "installer only writes into real directories")
    assert list(elsewhere.iterdir()) == []
    assert sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*")) == \
        ["im", "vmm", "vmm/lxcone"]  # refused before any change


def test_a_directory_in_the_way_stops_the_install_before_any_change(capsys, prefix):
    (prefix / "vmm/lxcone/deploy").mkdir(parents=True)
    (prefix / "im").mkdir()
    code, _, err = remotes(capsys, prefix)
    assert one_error(code, err) == (f"ERROR: remotes: {prefix}/vmm/lxcone/deploy is a "
                                    "directory, where the installer puts a symlink")
    assert sorted(str(p.relative_to(prefix)) for p in prefix.rglob("*")) == \
        ["im", "vmm", "vmm/lxcone", "vmm/lxcone/deploy"]


@pytest.mark.parametrize("python", ["python3", "/opt/my venv/bin/python", "/opt/x\n/python",
                                    "/opt/../bin/python", "/usr/bin/python3,ALL"])
def test_an_unusable_interpreter_path_is_refused(capsys, installed, python):
    code, _, err = run(capsys, "remotes", "--prefix", str(installed), "--python", python)
    assert "--python" in one_error(code, err)
    assert (installed / install.PYTHON_FILE).read_text() == PY + "\n"


def test_command_line_mistakes_are_one_error_line(capsys):
    with pytest.raises(SystemExit) as exc:
        install.main(["remotes", "--bogus"])
    assert exc.value.code == 1
    _, err = capsys.readouterr()
    assert err.startswith("ERROR: ") and err.count("\n") == 1
    with pytest.raises(SystemExit) as exc:
        install.main([])
    assert exc.value.code == 1


def test_a_missing_source_tree_is_named(capsys, tmp_path, prefix):
    code, _, err = remotes(capsys, prefix, "--create", "--source", str(tmp_path / "nowhere"))
    assert "cannot find the lxcone remotes/ tree" in one_error(code, err)


@needs_root
def test_files_go_to_the_owner_when_that_user_exists(capsys, prefix):
    code, out, _ = run(capsys, "remotes", "--prefix", str(prefix), "--create", "--owner",
                       "nobody", "--python", PY)
    assert code == 0
    nobody = install.lookup_owner("nobody")
    assert nobody is not None
    for rel in ("vmm/lxcone", "vmm/lxcone/lxcone-action", "vmm/lxcone/deploy",
                install.CONFIG, install.PYTHON_FILE):
        st = (prefix / rel).lstat()
        assert (st.st_uid, st.st_gid) == (nobody.uid, nobody.gid), rel
    os.lchown(prefix / "vmm/lxcone/deploy", 0, 0)
    code, out, _ = run(capsys, "remotes", "--prefix", str(prefix), "--owner", "nobody",
                       "--python", PY)
    assert changes(out) == [f"chown nobody {prefix}/vmm/lxcone/deploy"]


# -- the installed tree works ----------------------------------------------------------------


@needs_root  # the in-process driver needs root (and this venv's python lives under /root)
def test_an_installed_action_finds_the_interpreter_from_the_python_file(capsys, tmp_path,
                                                                         installed):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    cfg = tmp_path / "lxcone.toml"
    cfg.write_text(f'run_dir = "{run_dir}"\nagent = false\n')
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LXCONE_", "PYTHON"))}
    env["LXCONE_CONFIG"] = str(cfg)
    poll = installed / "vmm/lxcone/poll"
    p = subprocess.run([str(poll), "one-7", "host", "7", "host"], input=b"", env=env,
                       capture_output=True, timeout=60, check=False, cwd=tmp_path)
    assert (p.returncode, p.stdout, p.stderr) == (0, b"STATE=d\n", b"")
    # without the python file the shim has nothing to run
    (installed / install.PYTHON_FILE).unlink()
    p = subprocess.run([str(poll), "one-7", "host", "7", "host"], input=b"", env=env,
                       capture_output=True, timeout=60, check=False, cwd=tmp_path)
    assert p.returncode != 0 and p.stderr.startswith(b"ERROR: ")


def test_an_installed_action_runs_the_client_the_client_file_names(tmp_path, installed):
    # Stand-ins that say how they were run: the shim passes the client the interpreter and
    # its own directory; without a usable client file it runs the Python client itself.
    for name in ("client", "python"):
        fake = tmp_path / name
        fake.write_text(f'#!/bin/sh\necho {name} "$@"\n')
        fake.chmod(0o755)
    (installed / install.PYTHON_FILE).write_text(f"{tmp_path}/python\n")
    (installed / install.CLIENT_FILE).write_text(f"{tmp_path}/client\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LXCONE_", "PYTHON"))}
    vmm = installed / "vmm/lxcone"

    def poll() -> str:
        p = subprocess.run([str(vmm / "poll"), "one-7", "h"], input=b"", env=env,
                           capture_output=True, timeout=60, check=True)
        return p.stdout.decode()

    assert poll() == f"client {tmp_path}/python {vmm} poll one-7 h\n"
    (tmp_path / "client").chmod(0o644)  # not executable (nor absent, nor empty): Python
    assert poll() == f"python -I -S {vmm}/lxcone-client poll one-7 h\n"
    (installed / install.CLIENT_FILE).unlink()
    assert poll() == f"python -I -S {vmm}/lxcone-client poll one-7 h\n"
    env["LXCONE_CLIENT"] = str(tmp_path / "client")  # wins over the file
    (tmp_path / "client").chmod(0o755)
    assert poll() == f"client {tmp_path}/python {vmm} poll one-7 h\n"


@needs_root
@pytest.mark.skipif(not os.access("/usr/bin/python3", os.X_OK), reason="no /usr/bin/python3")
def test_an_installed_probe_falls_back_to_the_recorded_interpreter(installed, tmp_path):
    # The copied launcher is not inside a checkout and /usr/bin/python3 has no lxcone: it must
    # re-run itself with the interpreter recorded in etc/vmm/lxcone/python.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LXCONE_", "PYTHON"))}
    probe = installed / "im/lxcone-probes.d/host/beacon/lxcone-host-beacon"
    p = subprocess.run([str(probe), "lxcone", "0", "node1"], input=b"", env=env,
                       capture_output=True, timeout=60, check=False, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip().isdigit()


# -- host ------------------------------------------------------------------------------------


@pytest.fixture
def host_paths(tmp_path, monkeypatch):
    """A PATH with a fake visudo that logs its arguments, and where host writes."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    visudo = bin_dir / "visudo"
    log = tmp_path / "visudo.log"
    visudo.write_text(f'#!/bin/sh\necho "$@" >> {log}\n/bin/cp "$2" {tmp_path}/checked\n'
                      'exit "${VISUDO_RC:-0}"\n')
    visudo.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.setattr(install, "_systemd_running", lambda: False)
    cfg = tmp_path / "lxcone.toml"
    cfg.write_text(f'run_dir = "{tmp_path}/run"\n')
    return {"sudoers": tmp_path / "sudoers.d/lxcone", "systemd": tmp_path / "systemd",
            "config": cfg, "log": log, "tmp": tmp_path}


def host(capsys, paths, *extra: str) -> tuple[int, list[str], str]:
    return run(capsys, "host", "--python", PY, "--user", NO_USER, "--sudoers",
               str(paths["sudoers"]), "--systemd-dir", str(paths["systemd"]), "--config",
               str(paths["config"]), *extra)


def directives(text: str) -> list[str]:
    return [x for x in text.splitlines() if x.strip() and not x.startswith("#")]


def test_host_writes_a_validated_sudoers_drop_in(capsys, host_paths):
    code, out, err = host(capsys, host_paths)
    assert (code, err) == (0, "")
    sudoers = host_paths["sudoers"]
    text = sudoers.read_text()
    assert stat.S_IMODE(sudoers.stat().st_mode) == 0o440
    assert directives(text) == [
        f"Defaults:{NO_USER} !requiretty",
        f"Cmnd_Alias LXCONE_DRIVER = {PY} -I -m lxcone.driver *",
        f"Cmnd_Alias LXCONE_PROBES = {PY} -I -m lxcone.monitor.probes *",
        'Defaults!LXCONE_DRIVER env_keep += "LXCONE_CONFIG LXCONE_REMOTES_VMM"',
        'Defaults!LXCONE_PROBES env_keep += "LXCONE_RUN_DIR LXCONE_MONITOR_STATE_DIR"',
        f"{NO_USER} ALL=(root) NOPASSWD: LXCONE_DRIVER, LXCONE_PROBES",
    ]
    # visudo checked the very text that was installed, under a temp name, before the rename
    args = host_paths["log"].read_text().split()
    assert args[0] == "-cf" and args[1] != str(sudoers)
    assert (host_paths["tmp"] / "checked").read_text() == text
    assert f"installed {sudoers} (0440)" in out
    assert not list(sudoers.parent.glob(".*"))


def test_host_writes_the_agent_unit(capsys, host_paths):
    code, out, err = host(capsys, host_paths)
    assert (code, err) == (0, "")
    unit = host_paths["systemd"] / "lxcone-agent.service"
    lines = directives(unit.read_text())
    assert f"ExecStart={PY} -m lxcone.agent serve --config {host_paths['config']}" in lines
    for want in ("After=network.target", "Restart=on-failure", "KillMode=process",
                 "WantedBy=multi-user.target"):
        assert want in lines
    # anything that gives the service its own mount namespace, or deletes the run dir, is out
    for bad in ("PrivateTmp", "ProtectSystem", "ProtectHome", "PrivateDevices",
                "ReadWritePaths", "RuntimeDirectory", "MountFlags"):
        assert not any(x.startswith(bad) for x in lines), bad
    assert "to run the agent under systemd: systemctl daemon-reload && systemctl enable " \
           "--now lxcone-agent" in out
    assert stat.S_IMODE(unit.stat().st_mode) == 0o644


def test_host_is_idempotent(capsys, host_paths):
    assert host(capsys, host_paths, "--exporter")[0] == 0
    before = tree(host_paths["tmp"])
    code, out, _ = host(capsys, host_paths, "--exporter")
    assert code == 0 and changes(out) == []
    assert out[-1] == "host: up to date, nothing changed"
    after = tree(host_paths["tmp"])
    after.pop("visudo.log"), before.pop("visudo.log")
    assert after == before


def test_a_sudoers_text_visudo_rejects_is_not_installed(capsys, host_paths, monkeypatch):
    monkeypatch.setenv("VISUDO_RC", "1")
    code, _, err = host(capsys, host_paths)
    assert "visudo rejects the new" in one_error(code, err)
    assert not host_paths["sudoers"].exists()
    assert [p.name for p in host_paths["sudoers"].parent.iterdir()] == []


def test_without_visudo_the_drop_in_is_written_with_a_note(capsys, host_paths, monkeypatch):
    monkeypatch.setenv("PATH", str(host_paths["tmp"] / "empty"))
    code, out, _ = host(capsys, host_paths)
    assert code == 0 and host_paths["sudoers"].is_file()
    assert "note: visudo not found (sudo is not installed?): the sudoers drop-in is not " \
           "validated; install sudo on the host" in out


def test_host_can_install_the_exporter_unit(capsys, host_paths):
    code, out, _ = host(capsys, host_paths, "--exporter")
    assert code == 0
    text = (host_paths["systemd"] / "lxcone-exporter.service").read_text()
    lines = directives(text)
    assert f"ExecStart={PY} -m exporter --listen 127.0.0.1:9927" in lines
    assert f"Environment=LXCONE_RUN_DIR={host_paths['tmp']}/run" in lines  # from the config
    shipped = directives((REPO / "exporter/lxcone-exporter.service").read_text())
    assert [x for x in lines if not x.startswith(("ExecStart=", "Environment="))] == \
        [x for x in shipped if not x.startswith(("ExecStart=", "Environment="))]
    assert "systemctl enable --now lxcone-agent lxcone-exporter" in out[-2]


def test_enable_without_systemd_only_says_so(capsys, host_paths):
    code, out, _ = host(capsys, host_paths, "--enable")
    assert code == 0
    assert "note: systemd is not running here: nothing enabled" in out


@pytest.mark.parametrize(("args", "words"), [
    (["--sudoers", "/tmp/x/sudoers.d/lxcone.conf"], "sudo skips files of sudoers.d"),
    (["--python", "/nonexistent/python"], "/nonexistent/python is not an executable file"),
    (["--python", "/bin/sh"], "/bin/sh -I cannot load lxcone or its config"),
    (["--config", "relative.toml"], "--config 'relative.toml' must be an absolute path"),
    (["--user", "root; ALL"], "is not a user name"),
])
def test_host_refusals(capsys, host_paths, args, words):
    code, _, err = host(capsys, host_paths, *args)
    assert words in one_error(code, err)
    assert not host_paths["sudoers"].exists()


def test_a_broken_config_is_caught_before_anything_is_written(capsys, host_paths):
    host_paths["config"].write_text("run_dri = 1\n")
    code, _, err = host(capsys, host_paths)
    assert "unknown key 'run_dri'" in one_error(code, err)
    assert not host_paths["sudoers"].exists()


def test_enable_runs_systemctl_when_systemd_runs(capsys, host_paths, monkeypatch):
    log = host_paths["tmp"] / "systemctl.log"
    fake = host_paths["tmp"] / "bin/systemctl"
    fake.write_text(f'#!/bin/sh\necho "$@" >> {log}\n[ "$1" = is-active ] && exit 3\nexit 0\n')
    fake.chmod(0o755)
    monkeypatch.setattr(install, "_systemd_running", lambda: True)
    code, out, err = host(capsys, host_paths, "--enable")
    assert (code, err) == (0, "")
    assert log.read_text().splitlines() == ["daemon-reload", "is-active --quiet "
                                            "lxcone-agent.service", "enable --now lxcone-agent"]
    # an agent an action started outside systemd is stopped first (none runs here)
    assert f"+ {PY} -m lxcone.agent stop --config {host_paths['config']}" in out


def test_writable_by_finds_a_path_the_user_could_change(tmp_path):
    me = install.Owner("me", os.geteuid(), os.getegid())
    f = tmp_path / "python"
    f.write_text("")
    assert install.writable_by(str(f), me) == str(f)
    stranger = install.Owner("stranger", 54321, 54321)
    assert install.writable_by("/usr/bin/env", stranger) is None
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o777)  # world-writable, no sticky bit: anyone can replace what is inside
    assert install.writable_by(str(shared / "lxcone"), stranger) == str(shared)


def test_uninstall_never_deletes_through_a_planted_symlink(capsys, tmp_path, installed):
    victim = tmp_path / "victim"
    victim.mkdir()
    (victim / "deploy").write_text("precious\n")
    shutil.rmtree(installed / "vmm/lxcone")
    (installed / "vmm/lxcone").symlink_to(victim)
    code, out, _ = run(capsys, "uninstall", "--prefix", str(installed))
    assert code == 0
    assert (victim / "deploy").read_text() == "precious\n"
    assert f"note: kept {installed}/vmm/lxcone/deploy: {installed}/vmm/lxcone is not a real " \
           "directory" in out
