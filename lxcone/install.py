"""Install LXCoNe into OpenNebula: ``python -m lxcone.install remotes|host|uninstall``.

- ``remotes`` (front-end): copies this project's ``remotes/`` tree into OpenNebula's remotes
  (``/var/lib/one/remotes``), which oned then copies to every host's ``/var/tmp/one``, and
  records the interpreter in ``etc/vmm/lxcone/python`` for the action shim and the probes, and
  the C client of the agent (``<lxcone>/native/lxcone-client``) in ``etc/vmm/lxcone/client``.
- ``host`` (each host): the sudoers drop-in that lets ``oneadmin`` run the driver's Python entry
  points as root, and the systemd unit of the resident agent (and, optionally, the exporter's).
- ``uninstall`` (front-end): removes what ``remotes`` installed, as recorded in its manifest.

Every step is idempotent (a second run changes nothing and says so), every file is replaced
atomically (a temp file beside it, then rename) and every change is printed, one line each.
Errors are one ``ERROR: ...`` line on stderr and exit status 1. Standard library only: the
installer must run before anything else of the project is known to work. See docs/install.md.
"""

from __future__ import annotations

import argparse
import contextlib
import grp
import hashlib
import json
import os
import pwd
import re
import shutil
import stat
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from lxcone.atomicfile import write_all
from lxcone.monitor.config import CONFIG_IN_REMOTES

DEFAULT_PREFIX = "/var/lib/one/remotes"
DEFAULT_USER = "oneadmin"
DEFAULT_SUDOERS = "/etc/sudoers.d/lxcone"
DEFAULT_SYSTEMD_DIR = "/etc/systemd/system"
# Where OpenNebula puts the remotes on a host (SCRIPTS_REMOTE_DIR), hence the driver's config.
DEFAULT_HOST_CONFIG = "/var/tmp/one/" + CONFIG_IN_REMOTES

# The parts of remotes/ that belong to the driver; nothing else of the prefix is touched.
ROOTS = ("vmm/lxcone", "im/lxcone.d", "im/lxcone-probes.d", "etc/vmm/lxcone")
CONFIG = CONFIG_IN_REMOTES
CONFIG_NEW = CONFIG + ".new"
PYTHON_FILE = "etc/vmm/lxcone/python"
CLIENT_FILE = "etc/vmm/lxcone/client"
MANIFEST = "etc/vmm/lxcone/install-manifest"
# Never copied from the source tree: written by the installer (or local leftovers).
GENERATED = {PYTHON_FILE, CLIENT_FILE, MANIFEST, CONFIG_NEW}
SKIPPED_NAMES = {"__pycache__"}
SKIPPED_SUFFIXES = (".pyc", "~", ".swp", ".tmp")

AGENT_UNIT = "lxcone-agent.service"
EXPORTER_UNIT = "lxcone-exporter.service"

# Paths that end up in sudoers rules and systemd command lines, where spaces and the
# characters sudoers gives a meaning to (, : = \ * ? [ ] ! #) would need escaping.
SAFE_PATH = re.compile(r"/[A-Za-z0-9._+@/-]*")


class InstallError(Exception):
    """A refusal or failure, reported as one ``ERROR:`` line."""


class Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        sys.stderr.write(f"ERROR: {self.prog}: {message}\n")
        sys.exit(1)


# -- small file-system helpers --------------------------------------------------------------


@dataclass
class Owner:
    name: str
    uid: int
    gid: int


def lookup_owner(name: str) -> Owner | None:
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        return None
    return Owner(name, pw.pw_uid, pw.pw_gid)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except FileNotFoundError:
        return None


def _tmp_name(path: str) -> str:
    d, base = os.path.split(path)
    # A leading dot and a dot inside: ignored by sudo's includedir and by monitord's probe
    # runner if a crash ever leaves one behind.
    return os.path.join(d, f".{base}.lxcone-install.{os.getpid()}")


def _clear_tmp(tmp: str) -> None:
    st = _lstat(tmp)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        os.unlink(tmp)


def write_file(path: str, data: bytes, mode: int, owner: Owner | None) -> None:
    """Replace ``path`` by a file holding ``data``: written, moded and owned under a temp name,
    then renamed over it, so readers see the old file or the new one."""
    tmp = _tmp_name(path)
    _clear_tmp(tmp)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        try:
            write_all(fd, data)
            if owner is not None:
                os.fchown(fd, owner.uid, owner.gid)
            os.fchmod(fd, mode)  # after fchown, which may clear set-id bits
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_symlink(path: str, target: str, owner: Owner | None) -> None:
    tmp = _tmp_name(path)
    _clear_tmp(tmp)
    try:
        os.symlink(target, tmp)
        if owner is not None:
            os.lchown(tmp, owner.uid, owner.gid)
        os.rename(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def read_bytes(path: str) -> bytes | None:
    """The content of the regular file at ``path`` (not following a final symlink)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except (FileNotFoundError, OSError):
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def check_path(what: str, path: str) -> str:
    if not path.startswith("/") or not SAFE_PATH.fullmatch(path) or "/../" in path + "/":
        raise InstallError(f"{what} {path!r} must be an absolute path made of letters, digits "
                           "and . _ + @ - / only")
    return path


# -- remotes ---------------------------------------------------------------------------------


def find_source(explicit: str | None) -> Path:
    """The remotes/ tree of this project: --source, else beside the lxcone package (the repo
    root is the parent of the package directory: an editable install or a checkout)."""
    candidates = [Path(explicit)] if explicit else [
        Path(__file__).resolve().parent.parent / "remotes",
        Path(sys.prefix) / "share" / "lxcone" / "remotes",
    ]
    for c in candidates:
        if (c / "vmm" / "lxcone" / "lxcone-action").is_file():
            return c.resolve()
    where = ", ".join(str(c) for c in candidates)
    raise InstallError(f"cannot find the lxcone remotes/ tree (looked in {where}); "
                       "pass --source <checkout>/remotes")


@dataclass
class Entry:
    rel: str          # relative to the prefix
    kind: str         # "dir", "file" or "link"
    data: bytes = b""
    mode: int = 0o644
    target: str = ""  # link target

    def record(self) -> str:
        return f"link:{self.target}" if self.kind == "link" else sha256(self.data)


def scan_source(src: Path) -> list[Entry]:
    """Every directory, regular file and symlink under the driver's roots, parents first."""
    out: list[Entry] = []

    def walk(rel: str) -> None:
        out.append(Entry(rel, "dir", mode=0o755))
        with os.scandir(src / rel) as it:
            children = sorted(it, key=lambda e: e.name)
        for e in children:
            crel = f"{rel}/{e.name}"
            if (e.name in SKIPPED_NAMES or e.name.endswith(SKIPPED_SUFFIXES)
                    or crel in GENERATED):
                continue
            st = e.stat(follow_symlinks=False)
            if stat.S_ISLNK(st.st_mode):
                out.append(Entry(crel, "link", target=os.readlink(e.path)))
            elif stat.S_ISDIR(st.st_mode):
                walk(crel)
            elif stat.S_ISREG(st.st_mode):
                mode = 0o755 if st.st_mode & 0o111 else 0o644
                out.append(Entry(crel, "file", Path(e.path).read_bytes(), mode))
            else:
                raise InstallError(f"{e.path}: not a file, directory or symlink")

    for root in ROOTS:
        if not (src / root).is_dir() or (src / root).is_symlink():
            raise InstallError(f"{src / root}: missing from the source tree")
        walk(root)
    if not any(e.rel == CONFIG and e.kind == "file" for e in out):
        raise InstallError(f"{src / CONFIG}: missing from the source tree")
    return out


def load_manifest(prefix: str) -> dict | None:
    data = read_bytes(os.path.join(prefix, MANIFEST))
    if data is None:
        return None
    try:
        m = json.loads(data)
    except ValueError:
        m = None
    if (not isinstance(m, dict) or m.get("format") != 1 or not isinstance(m.get("files"), dict)
            or not isinstance(m.get("dirs"), list)):
        raise InstallError(f"{os.path.join(prefix, MANIFEST)}: not a manifest written by "
                           "lxcone.install (remove it by hand if it is a leftover)")
    for rel in [*m["files"], *m["dirs"]]:
        if not _safe_rel(rel):
            raise InstallError(f"{os.path.join(prefix, MANIFEST)}: refusing path {rel!r}")
    return m


def _safe_rel(rel: object) -> bool:
    """A manifest path: relative, below one of the driver's roots or a parent of one."""
    if not isinstance(rel, str) or rel.startswith("/") or "\\" in rel:
        return False
    parts = rel.split("/")
    if any(p in ("", ".", "..") for p in parts):
        return False
    parents = {"vmm", "im", "etc", "etc/vmm"}
    return rel in parents or any(rel == r or rel.startswith(r + "/") for r in ROOTS)


class Changes:
    """Prints each change as it is made; counts them."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self, line: str) -> None:
        self.count += 1
        print(line, flush=True)


def note(line: str) -> None:
    print(f"note: {line}", flush=True)


def check_prefix(prefix: str, create: bool, src: Path) -> None:
    if prefix == "/":
        raise InstallError("refusing to install into /")
    real = os.path.realpath(prefix)
    if real == str(src) or real.startswith(str(src) + "/"):
        raise InstallError(f"{prefix} is the source tree itself ({src})")
    st = _lstat(prefix)
    if st is not None and not os.path.isdir(prefix):
        raise InstallError(f"{prefix} is not a directory")
    looks_like_one = all(os.path.isdir(os.path.join(prefix, d)) for d in ("vmm", "im"))
    if looks_like_one or create:
        return
    if st is None:
        raise InstallError(f"{prefix} does not exist (is OpenNebula installed? "
                           "--create makes a new tree)")
    raise InstallError(f"{prefix} does not look like OpenNebula's remotes (no vmm/ and im/ "
                       "directories); pass --create to install there anyway")


def preflight(prefix: str, wanted: list[Entry]) -> None:
    """Refuse before changing anything when a path is in the way: a file where a directory
    goes, a directory where a file goes, a symlink where a directory goes (writing through it
    would land outside the prefix)."""
    for parent in ("vmm", "im", "etc", "etc/vmm"):
        _need_dir(prefix, parent)
    for e in wanted:
        path = os.path.join(prefix, e.rel)
        st = _lstat(path)
        if st is None:
            continue
        if e.kind == "dir":
            _need_dir(prefix, e.rel)
        elif stat.S_ISDIR(st.st_mode):
            raise InstallError(f"{path} is a directory, where the installer puts a "
                               f"{'symlink' if e.kind == 'link' else 'file'}")


def _need_dir(prefix: str, rel: str) -> None:
    path = os.path.join(prefix, rel)
    st = _lstat(path)
    if st is not None and not stat.S_ISDIR(st.st_mode):
        kind = "a symlink" if stat.S_ISLNK(st.st_mode) else "not a directory"
        raise InstallError(f"{path} is {kind}: the installer only writes into real "
                           "directories")


def _through_symlink(prefix: str, rel: str) -> str | None:
    """The first parent of ``rel`` below the prefix that is not a real directory (a symlink
    planted there would redirect an unlink or a write outside the prefix), if any."""
    parts = rel.split("/")[:-1]
    for i in range(1, len(parts) + 1):
        path = os.path.join(prefix, *parts[:i])
        st = _lstat(path)
        if st is None or not stat.S_ISDIR(st.st_mode):
            return path
    return None


def _fix_meta(path: str, st: os.stat_result, mode: int | None, owner: Owner | None,
              change: Changes) -> None:
    if mode is not None and not stat.S_ISLNK(st.st_mode) and stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)
        change(f"chmod {mode:04o} {path}")
    if owner is not None and (st.st_uid, st.st_gid) != (owner.uid, owner.gid):
        os.lchown(path, owner.uid, owner.gid)
        change(f"chown {owner.name} {path}")


def _apply_dir(prefix: str, rel: str, owner: Owner | None, change: Changes) -> bool:
    """Make sure the directory exists, 0755, owned; True when it was created."""
    path = os.path.join(prefix, rel)
    st = _lstat(path)
    if st is None:
        os.mkdir(path, 0o755)
        os.chmod(path, 0o755)  # whatever the umask
        if owner is not None:
            os.chown(path, owner.uid, owner.gid)
        change(f"created {path}/")
        return True
    _fix_meta(path, st, 0o755, owner, change)
    return False


def _apply_entry(prefix: str, e: Entry, owner: Owner | None, change: Changes) -> None:
    path = os.path.join(prefix, e.rel)
    st = _lstat(path)
    if e.kind == "link":
        if st is not None and stat.S_ISLNK(st.st_mode) and os.readlink(path) == e.target:
            _fix_meta(path, st, None, owner, change)
            return
        write_symlink(path, e.target, owner)
        change(f"{'linked' if st is None else 'relinked'} {path} -> {e.target}")
        return
    current = read_bytes(path) if st is not None and stat.S_ISREG(st.st_mode) else None
    if current == e.data:
        _fix_meta(path, st, e.mode, owner, change)
        return
    write_file(path, e.data, e.mode, owner)
    change(f"{'installed' if st is None else 'updated'} {path} ({e.mode:04o})")


def cmd_remotes(args: argparse.Namespace) -> int:
    prefix = os.path.abspath(args.prefix)
    python = check_path("--python", args.python or sys.executable or "")
    src = find_source(args.source)
    check_prefix(prefix, args.create, src)
    owner = _owner_for_files(args.owner)
    if not os.path.exists(python):
        note(f"{python} does not exist on this machine: it must be the lxcone Python of every "
             "host (the same path on all of them)")
    source = scan_source(src)
    old = load_manifest(prefix) if os.path.isdir(prefix) else None
    old_files: dict[str, str] = old["files"] if old else {}
    old_dirs: set[str] = set(old["dirs"]) if old else set()

    # The operator's config: installed when absent, upgraded when it is the unmodified sample
    # of a previous install, otherwise kept (the new sample goes beside it).
    sample = next(e for e in source if e.rel == CONFIG)
    files = [e for e in source if e.kind != "dir" and e.rel != CONFIG]
    cfg_path = os.path.join(prefix, CONFIG)
    cfg_st = _lstat(cfg_path)
    cfg_now = read_bytes(cfg_path) if cfg_st is not None else None
    cfg_record: str | None = None
    cfg_note = ""
    if cfg_st is None or cfg_now == sample.data:
        files.append(sample)
    elif args.force_config:
        files.append(sample)
        cfg_note = f"replaced your modified {cfg_path} with the new sample (--force-config)"
    elif cfg_now is not None and old_files.get(CONFIG) == sha256(cfg_now):
        files.append(sample)
        cfg_note = f"upgraded {cfg_path}: it was the unmodified sample of the previous install"
    else:
        files.append(Entry(CONFIG_NEW, "file", sample.data, 0o644))
        cfg_record = old_files.get(CONFIG)  # still ours if we installed it once
        cfg_note = (f"kept your modified {cfg_path}; the new sample is installed beside it as "
                    f"{os.path.join(prefix, CONFIG_NEW)} (compare them; --force-config replaces "
                    "yours)")
    files.append(Entry(PYTHON_FILE, "file", (python + "\n").encode(), 0o644))
    client = find_client(python, args.client)
    if client is not None:
        files.append(Entry(CLIENT_FILE, "file", (client + "\n").encode(), 0o644))

    own_dirs = [e.rel for e in source if e.kind == "dir"]
    preflight(prefix, [*(Entry(d, "dir") for d in own_dirs), *files])

    change = Changes()
    created: set[str] = set()
    if not os.path.isdir(prefix):
        os.makedirs(prefix, 0o755)
        change(f"created {prefix}/")
    for parent in ("vmm", "im", "etc", "etc/vmm"):
        if _lstat(os.path.join(prefix, parent)) is None:
            _apply_dir(prefix, parent, owner, change)
            created.add(parent)
    for d in own_dirs:
        _apply_dir(prefix, d, owner, change)
    for e in files:
        _apply_entry(prefix, e, owner, change)
    if cfg_note:
        note(cfg_note)

    # What an older version installed and this one no longer ships.
    wanted = {e.rel for e in files}
    for rel in sorted(set(old_files) - wanted - {CONFIG}, reverse=True):
        path = os.path.join(prefix, rel)
        if _through_symlink(prefix, rel):
            continue
        st = _lstat(path)
        if st is not None and not stat.S_ISDIR(st.st_mode):
            os.unlink(path)
            change(f"removed {path} (no longer shipped)")
    for rel in sorted(old_dirs - set(own_dirs) - {"vmm", "im", "etc", "etc/vmm"},
                      key=lambda r: r.count("/"), reverse=True):
        if _through_symlink(prefix, rel):
            continue
        with contextlib.suppress(OSError):
            os.rmdir(os.path.join(prefix, rel))
            change(f"removed {os.path.join(prefix, rel)}/ (no longer shipped)")

    record = {e.rel: e.record() for e in files if e.rel != CONFIG}
    if any(e.rel == CONFIG for e in files):
        record[CONFIG] = sha256(sample.data)
    elif cfg_record:
        record[CONFIG] = cfg_record
    parents = {p for p in ("vmm", "im", "etc", "etc/vmm") if p in old_dirs or p in created}
    manifest = {"format": 1, "python": python, "files": dict(sorted(record.items())),
                "dirs": sorted(set(own_dirs) | parents)}
    data = (json.dumps(manifest, indent=1) + "\n").encode()
    _apply_entry(prefix, Entry(MANIFEST, "file", data, 0o644), owner, change)

    if change.count:
        print(f"remotes: {change.count} change(s) in {prefix}; push them to the hosts with "
              "`onehost sync -f`")
    else:
        print(f"remotes: {prefix} is up to date, nothing changed")
    return 0


def find_client(python: str, explicit: str | None) -> str | None:
    """The C client of the agent for the shim (``--client``, else ``<lxcone>/native/lxcone-
    client`` of ``python``, asked with probe_python), or None with a note: the shim then runs
    the Python client, as it does whenever the named file is not executable on a host."""
    if explicit is not None:
        client = check_path("--client", explicit)
        if not os.path.exists(client):
            note(f"{client} does not exist on this machine: it must be the lxcone-client of "
                 "every host (the same path on all of them)")
        return client
    fix = ("actions use the Python client; --client <lxcone package>/native/lxcone-client "
           "names the C one")
    if not os.path.exists(python):
        note(f"cannot ask {python} where its lxcone-client is (not on this machine): {fix}")
        return None
    try:
        pkg_dir, _ = probe_python(python, None)
    except InstallError as exc:
        note(f"{exc}: {fix}")
        return None
    client = os.path.join(pkg_dir, "native", "lxcone-client")
    if not (os.path.isfile(client) and os.access(client, os.X_OK)):
        note(f"{client} is not built (pip install rebuilds it): {fix}")
        return None
    if not SAFE_PATH.fullmatch(client):
        note(f"{client!r} has characters the installer does not write into paths: {fix}")
        return None
    return client


def _owner_for_files(name: str) -> Owner | None:
    owner = lookup_owner(name)
    if owner is None:
        note(f"user {name!r} does not exist here: files keep the owner of this process "
             f"(uid {os.geteuid()})")
        return None
    if os.geteuid() != 0 and owner.uid != os.geteuid():
        note(f"not root: cannot give the files to {name!r}; they keep uid {os.geteuid()}")
        return None
    return owner


# -- uninstall -------------------------------------------------------------------------------


def cmd_uninstall(args: argparse.Namespace) -> int:
    prefix = os.path.abspath(args.prefix)
    if not os.path.isdir(prefix):
        raise InstallError(f"{prefix} is not a directory")
    m = load_manifest(prefix)
    if m is None:
        if any(_lstat(os.path.join(prefix, r)) is not None for r in ROOTS):
            raise InstallError(f"{prefix}: lxcone files are there but no "
                               f"{MANIFEST} recorded what lxcone.install put there; "
                               "remove them by hand")
        print(f"uninstall: nothing of lxcone in {prefix}")
        return 0
    change = Changes()
    for rel, recorded in sorted(m["files"].items()):
        path = os.path.join(prefix, rel)
        bad = _through_symlink(prefix, rel)
        if bad is not None:
            if _lstat(bad) is not None:
                note(f"kept {path}: {bad} is not a real directory")
            continue
        st = _lstat(path)
        if st is None:
            continue
        if stat.S_ISDIR(st.st_mode):
            note(f"kept {path}: a directory now, not what was installed")
            continue
        if rel == CONFIG:
            current = read_bytes(path)
            if current is None or sha256(current) != recorded:
                note(f"kept {path}: it was modified after the install (delete it by hand when "
                     "you no longer need it)")
                continue
        os.unlink(path)
        change(f"removed {path}")
    cfg = os.path.join(prefix, CONFIG)
    if CONFIG not in m["files"] and _lstat(cfg) is not None:
        note(f"kept {cfg}: it was there before lxcone.install")
    if _through_symlink(prefix, MANIFEST) is None:
        os.unlink(os.path.join(prefix, MANIFEST))
        change(f"removed {os.path.join(prefix, MANIFEST)}")
    for rel in sorted(m["dirs"], key=lambda r: (r.count("/"), r), reverse=True):
        path = os.path.join(prefix, rel)
        if _through_symlink(prefix, rel) is not None:
            continue
        st = _lstat(path)
        if st is None or not stat.S_ISDIR(st.st_mode):
            continue
        try:
            os.rmdir(path)
        except OSError:
            if any(rel == r or rel.startswith(r + "/") for r in ROOTS):
                note(f"kept {path}/: not empty")
            continue
        change(f"removed {path}/")
    print(f"uninstall: {change.count} change(s) in {prefix}; `onehost sync -f` removes them "
          "from the hosts too (rsync --delete)")
    return 0


# -- host ------------------------------------------------------------------------------------

SUDOERS_TEMPLATE = """\
# LXCoNe: lets OpenNebula's {user} run the lxcone driver's Python entry points as root.
# Written by `python -m lxcone.install host` (docs/install.md): run it again rather than
# editing this file.
#
# OpenNebula runs the VMM actions (remotes/vmm/lxcone/*) and the monitoring probes as {user}
# over ssh. Actions mount disks, create cgroups and network namespaces: root. The probes read
# the containers' records (0700 root directories of the run dir) and keep their state in it.
# When no agent runs them, both re-run themselves through `sudo -n` with exactly these
# command lines. -I (isolated mode) is part of the rule: without it `python -m` would put the
# current directory first on sys.path and honour PYTHONPATH, letting the caller choose the
# code that runs as root. The interpreter and the lxcone package must not be writable by
# {user}.

Defaults:{user} !requiretty
Cmnd_Alias LXCONE_DRIVER = {python} -I -m lxcone.driver *
Cmnd_Alias LXCONE_PROBES = {python} -I -m lxcone.monitor.probes *
Defaults!LXCONE_DRIVER env_keep += "LXCONE_CONFIG LXCONE_REMOTES_VMM"
Defaults!LXCONE_PROBES env_keep += "LXCONE_RUN_DIR LXCONE_MONITOR_STATE_DIR"
{user} ALL=(root) NOPASSWD: LXCONE_DRIVER, LXCONE_PROBES
"""

AGENT_UNIT_TEMPLATE = """\
# lxcone-agent: the resident LXCoNe agent of this host (docs/install.md). It keeps the
# driver's modules loaded and runs OpenNebula's VMM actions for the action scripts, which
# reach it on <run_dir>/agent.sock. Containers never depend on it.
# Written by `python -m lxcone.install host`: run it again rather than editing this file.

[Unit]
Description=LXCoNe agent (runs the lxcone VMM driver's actions for OpenNebula)
After=network.target

[Service]
Type=simple
ExecStart={python} -m lxcone.agent serve --config {config}
Restart=on-failure
RestartSec=2s
# Exit status 3: another agent already serves the run dir (one that an action started before
# this unit was enabled). Not a crash: do not restart in a loop. Stop that agent
# (`{python} -m lxcone.agent stop --config {config}`), then start this unit.
RestartPreventExitStatus=3

# KillMode=process: on stop and restart, signal the agent alone. With systemd's default
# (control-group) every process of this unit's cgroup would get SIGTERM, then SIGKILL. The
# lxcone-monitor of each container the agent started (the parent of the container's init,
# which restarts init on reboot and keeps the console) is forked by the agent and stays in
# this cgroup: only init moves into the container's cgroup. The default would kill the
# monitor of every container at each `systemctl restart lxcone-agent` or upgrade. With
# KillMode=process they, and the containers, carry on; the next agent manages them through
# their records.
KillMode=process
# SIGTERM: the agent stops accepting actions and waits for those in flight; a shutdown
# action may wait shutdown_timeout_s (120 s by default) for the guest to power off.
KillSignal=SIGTERM
TimeoutStopSec=300s
# The monitors count as this unit's tasks: no cap below the number of containers.
TasksMax=infinity

# Deliberately no sandboxing (PrivateTmp=, ProtectSystem=, ProtectHome=, PrivateDevices=,
# ReadWritePaths=...): each of them runs the service in a mount namespace of its own, where
# the disk mounts the agent makes for containers would be invisible to the host and to actions
# that run outside the agent. And no RuntimeDirectory=: systemd would delete it, with every
# container record in it, whenever the agent stops.

[Install]
WantedBy=multi-user.target
"""


def find_exporter_unit() -> Path:
    """exporter/lxcone-exporter.service of this project (a checkout or the installed package
    data), located without importing the exporter."""
    import importlib.util

    candidates = [Path(__file__).resolve().parent.parent / "exporter" / EXPORTER_UNIT]
    spec = importlib.util.find_spec("exporter")
    if spec is not None and spec.submodule_search_locations:
        candidates += [Path(p) / EXPORTER_UNIT for p in spec.submodule_search_locations]
    for c in candidates:
        if c.is_file():
            return c
    raise InstallError(f"cannot find {EXPORTER_UNIT} (looked in "
                       f"{', '.join(str(c) for c in candidates)})")


def exporter_unit(template: str, python: str, run_dir: str) -> str:
    """The shipped unit with its ExecStart on this interpreter and the driver's run dir."""
    out = [f"# Installed by `python -m lxcone.install host --exporter` from exporter/"
           f"{EXPORTER_UNIT},\n# with ExecStart and LXCONE_RUN_DIR set for this host.\n"]
    seen_exec = False
    for line in template.splitlines(keepends=True):
        if line.startswith("ExecStart="):
            words = line[len("ExecStart="):].split()
            if not words or not words[0].endswith("lxcone-exporter"):
                raise InstallError(f"{EXPORTER_UNIT}: unexpected ExecStart line {line.strip()!r}")
            out.append(f"ExecStart={python} -m exporter {' '.join(words[1:])}".rstrip() + "\n")
            seen_exec = True
        elif line.startswith("Environment=LXCONE_RUN_DIR="):
            out.append(f"Environment=LXCONE_RUN_DIR={run_dir}\n")
        else:
            out.append(line)
    if not seen_exec:
        raise InstallError(f"{EXPORTER_UNIT}: no ExecStart line")
    return "".join(out)


PROBE_CODE = """\
import sys
import lxcone
from lxcone.driver.config import load_config
print(lxcone.__file__)
print(load_config(sys.argv[1] if sys.argv[1:] else None).run_dir)
"""


def probe_python(python: str, config: str | None) -> tuple[str, str]:
    """(lxcone package dir, run dir) as the target interpreter sees them, in isolated mode
    (as sudo runs it); InstallError when it cannot import lxcone or read the config."""
    try:
        p = subprocess.run([python, "-I", "-c", PROBE_CODE, *([config] if config else [])],
                           capture_output=True, text=True, timeout=120, check=False, cwd="/")
    except OSError as exc:
        raise InstallError(f"cannot run {python}: {exc.strerror}") from None
    except subprocess.TimeoutExpired:
        raise InstallError(f"{python} did not answer within 120 s") from None
    lines = p.stdout.splitlines()
    if p.returncode != 0 or len(lines) != 2:
        last = (p.stderr.strip().splitlines() or ["no output"])[-1]
        raise InstallError(f"{python} -I cannot load lxcone or its config: {last}")
    return os.path.dirname(lines[0]), lines[1]


def writable_by(path: str, owner: Owner) -> str | None:
    """The first of ``path`` and its parents that ``owner`` can modify, if any."""
    groups = {owner.gid} | {g.gr_gid for g in grp.getgrall() if owner.name in g.gr_mem}
    p = os.path.abspath(path)
    while True:
        st = _lstat(p)
        if st is not None:
            m = st.st_mode
            sticky_dir = stat.S_ISDIR(m) and m & stat.S_ISVTX
            if (st.st_uid == owner.uid or (m & 0o020 and st.st_gid in groups and not sticky_dir)
                    or (m & 0o002 and not sticky_dir and not stat.S_ISLNK(m))):
                return p
        if p == "/":
            return None
        p = os.path.dirname(p)


def _install_text(path: str, text: str, mode: int, change: Changes,
                  validate: list[str] | None = None) -> bool:
    """Write ``text`` at ``path`` (root-owned when we are root) unless it is already there;
    with ``validate``, the command (with the temp file appended) must accept it first."""
    data = text.encode()
    st = _lstat(path)
    if st is not None and stat.S_ISDIR(st.st_mode):
        raise InstallError(f"{path} is a directory")
    owner = Owner("root", 0, 0) if os.geteuid() == 0 else None
    if st is not None and stat.S_ISREG(st.st_mode) and read_bytes(path) == data:
        _fix_meta(path, st, mode, owner, change)
        return False
    d = os.path.dirname(path)
    if not os.path.isdir(d):
        os.makedirs(d, 0o755)
        change(f"created {d}/")
    if validate:
        tmp = _tmp_name(path) + ".check"
        _clear_tmp(tmp)
        try:
            write_file(tmp, data, mode, owner)
            p = subprocess.run([*validate, tmp], capture_output=True, text=True, timeout=60,
                               check=False)
            if p.returncode != 0:
                why = (p.stderr.strip() or p.stdout.strip() or "rejected").splitlines()[0]
                raise InstallError(f"{validate[0]} rejects the new {path}, left unchanged: "
                                   f"{why}")
        finally:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
    write_file(path, data, mode, owner)
    change(f"{'installed' if st is None else 'updated'} {path} ({mode:04o})")
    return True


def _systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


def _run(cmd: list[str]) -> None:
    print("+ " + " ".join(cmd), flush=True)
    p = subprocess.run(cmd, check=False, timeout=600)
    if p.returncode != 0:
        raise InstallError(f"`{' '.join(cmd)}` exited with status {p.returncode}")


def cmd_host(args: argparse.Namespace) -> int:
    python = check_path("--python", args.python or sys.executable or "")
    config = check_path("--config", args.config)
    sudoers = os.path.abspath(args.sudoers)
    systemd_dir = os.path.abspath(args.systemd_dir)
    user = args.user
    if not re.fullmatch(r"[a-z_][a-z0-9_.-]*", user):
        raise InstallError(f"--user {user!r} is not a user name")
    base = os.path.basename(sudoers)
    if os.path.basename(os.path.dirname(sudoers)) == "sudoers.d" and ("." in base
                                                                      or base.endswith("~")):
        raise InstallError(f"{sudoers}: sudo skips files of sudoers.d whose name contains "
                           "a '.' or ends with '~'")
    if not os.path.isfile(python) or not os.access(python, os.X_OK):
        raise InstallError(f"{python} is not an executable file")

    have_config = os.path.isfile(config)
    pkg_dir, run_dir = probe_python(python, config if have_config else None)
    if not have_config:
        note(f"{config} does not exist yet: OpenNebula copies it with the remotes "
             "(onehost create / onehost sync); until then the agent uses the built-in defaults")
    owner = lookup_owner(user)
    if owner is None:
        note(f"user {user!r} does not exist on this machine: the sudoers rules name it anyway "
             "(install opennebula-node or create the user)")
    else:
        for path in (python, os.path.realpath(python), pkg_dir):
            hit = writable_by(path, owner)
            if hit is not None:
                sys.stderr.write(f"WARNING: {hit} can be modified by {user}, who may run "
                                 f"{python} as root through sudo: make it root-owned\n")

    change = Changes()
    visudo = shutil.which("visudo")
    if visudo is None:
        note("visudo not found (sudo is not installed?): the sudoers drop-in is not validated; "
             "install sudo on the host")
    _install_text(sudoers, SUDOERS_TEMPLATE.format(user=user, python=python), 0o440, change,
                  validate=[visudo, "-cf"] if visudo else None)
    units = [AGENT_UNIT]
    unit_changed = _install_text(os.path.join(systemd_dir, AGENT_UNIT),
                                 AGENT_UNIT_TEMPLATE.format(python=python, config=config),
                                 0o644, change)
    exporter_changed = False
    if args.exporter:
        units.append(EXPORTER_UNIT)
        text = exporter_unit(find_exporter_unit().read_text(), python, run_dir)
        exporter_changed = _install_text(os.path.join(systemd_dir, EXPORTER_UNIT), text, 0o644,
                                         change)

    enable = ["systemctl", "enable", "--now", *(u.removesuffix(".service") for u in units)]
    if args.enable and shutil.which("systemctl") and _systemd_running():
        _run(["systemctl", "daemon-reload"])
        active = subprocess.run(["systemctl", "is-active", "--quiet", AGENT_UNIT],
                                check=False).returncode == 0
        if not active:  # an agent that an action started outside systemd would hold the lock
            stop = [python, "-m", "lxcone.agent", "stop", "--config", config]
            print("+ " + " ".join(stop), flush=True)
            if subprocess.run(stop, check=False, timeout=600).returncode != 0:
                note("could not stop an agent started outside systemd; if the unit exits "
                     "with status 3, stop that agent and start the unit again")
        _run(enable)
        restart = [u for u, c in ((AGENT_UNIT, unit_changed and active),
                                  (EXPORTER_UNIT, exporter_changed)) if c]
        if restart:  # safe: containers do not depend on either
            _run(["systemctl", "try-restart", *restart])
    else:
        if args.enable:
            note("systemd is not running here: nothing enabled")
        print(f"to run the agent under systemd: systemctl daemon-reload && {' '.join(enable)}")
    if change.count:
        print(f"host: {change.count} change(s)")
    else:
        print("host: up to date, nothing changed")
    return 0


# -- command line ----------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m lxcone.install",
               description="Install LXCoNe into OpenNebula (docs/install.md).")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    r = sub.add_parser("remotes", help="front-end: copy the driver into OpenNebula's remotes")
    r.add_argument("--prefix", default=DEFAULT_PREFIX,
                   help=f"OpenNebula's remotes directory (default {DEFAULT_PREFIX})")
    r.add_argument("--python", help="the interpreter that has lxcone installed, as a path valid "
                                    "on every host (default: this one)")
    r.add_argument("--client", help="the C client of the agent, as a path valid on every host "
                                    "(default: <lxcone package>/native/lxcone-client of "
                                    "--python, when that interpreter is on this machine)")
    r.add_argument("--owner", default=DEFAULT_USER,
                   help=f"owner of the installed files, if that user exists (default "
                        f"{DEFAULT_USER})")
    r.add_argument("--force-config", action="store_true",
                   help="replace a modified lxcone.toml with the new sample")
    r.add_argument("--create", action="store_true",
                   help="install even where the prefix is not (yet) an OpenNebula remotes tree")
    r.add_argument("--source", help="the remotes/ tree to install (default: this project's)")
    r.set_defaults(func=cmd_remotes)

    h = sub.add_parser("host", help="host: sudoers drop-in and systemd unit(s)")
    h.add_argument("--python", help="the interpreter that has lxcone installed on this host "
                                    "(default: this one)")
    h.add_argument("--user", default=DEFAULT_USER,
                   help=f"the user OpenNebula connects as (default {DEFAULT_USER})")
    h.add_argument("--sudoers", default=DEFAULT_SUDOERS,
                   help=f"the sudoers drop-in to write (default {DEFAULT_SUDOERS})")
    h.add_argument("--systemd-dir", default=DEFAULT_SYSTEMD_DIR,
                   help=f"where to write the unit(s) (default {DEFAULT_SYSTEMD_DIR})")
    h.add_argument("--config", default=DEFAULT_HOST_CONFIG,
                   help=f"the driver config the agent reads (default {DEFAULT_HOST_CONFIG})")
    h.add_argument("--exporter", action="store_true",
                   help=f"also install {EXPORTER_UNIT} (the Prometheus exporter)")
    en = h.add_mutually_exclusive_group()
    en.add_argument("--enable", dest="enable", action="store_true",
                    help="run systemctl daemon-reload and enable --now (when systemd runs)")
    en.add_argument("--no-enable", dest="enable", action="store_false",
                    help="only print the systemctl commands (the default)")
    h.set_defaults(func=cmd_host, enable=False)

    u = sub.add_parser("uninstall", help="front-end: remove what `remotes` installed")
    u.add_argument("--prefix", default=DEFAULT_PREFIX,
                   help=f"OpenNebula's remotes directory (default {DEFAULT_PREFIX})")
    u.set_defaults(func=cmd_uninstall)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except InstallError as exc:
        msg = str(exc)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        msg = f"{where}{exc.strerror or exc}"
    except KeyboardInterrupt:
        msg = "interrupted"
    except Exception as exc:  # a bug: still one line, no traceback
        msg = f"internal error: {type(exc).__name__}: {exc}"
    sys.stdout.flush()
    sys.stderr.write(f"ERROR: {args.command}: {msg}\n")
    return 1


if __name__ == "__main__":
    sys.exit(main())
