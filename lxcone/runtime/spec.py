"""The container spec: what to run, validated before anything touches the kernel.

validate() is a list of small checks, each returning one sentence (runc's validator shape).
"""

from __future__ import annotations

import os
import re
import signal
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, fields, is_dataclass, replace
from typing import Any

from lxcone.cgroups import Resources
from lxcone.runtime.errors import SpecError

# fullmatch only: "$" would also accept a trailing newline ("one-1\n").
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
_LABEL = r"[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
HOSTNAME_RE = re.compile(rf"{_LABEL}(\.{_LABEL})*")
DEFAULT_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "container=lxcone",
)
# LXC's default halt signal; busybox init wants SIGUSR2 (poweroff), systemd SIGRTMIN+4.
DEFAULT_STOP_SIGNAL = int(signal.SIGPWR)


@dataclass(frozen=True)
class IdMap:
    """Container ids 0..size-1 appear on the host as host_uid.. / host_gid.."""

    host_uid: int = 100000
    host_gid: int = 100000
    size: int = 65536


@dataclass(frozen=True)
class Bind:
    """A host path bind-mounted into the container (idmapped when the container is not
    privileged). ``target`` is an absolute path inside the container."""

    source: str
    target: str
    readonly: bool = False


@dataclass(frozen=True)
class ContainerSpec:
    name: str
    rootfs: str
    init: tuple[str, ...] = ("/sbin/init",)
    env: tuple[str, ...] = DEFAULT_ENV
    hostname: str | None = None  # defaults to the name
    privileged: bool = False
    id_map: IdMap = field(default_factory=IdMap)
    binds: tuple[Bind, ...] = ()
    resources: Resources = field(default_factory=Resources)
    nics: tuple[Any, ...] = ()  # lxcone.netns.NicSpec; typed loosely so pyroute2 stays unimported
    stop_signal: int = DEFAULT_STOP_SIGNAL

    @property
    def effective_hostname(self) -> str:
        return self.hostname or self.name

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON-able data (state.json); ``from_dict`` is its inverse."""
        return _plain(self)

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> ContainerSpec:
        d = dict(d)
        d["init"] = tuple(d.get("init", cls.init))
        d["env"] = tuple(d.get("env", DEFAULT_ENV))
        d["id_map"] = IdMap(**d.get("id_map", {}))
        d["binds"] = tuple(Bind(**b) for b in d.get("binds", ()))
        res = dict(d.get("resources", {}))
        d["resources"] = Resources(**res)
        d["nics"] = tuple(nic_from_dict(n) for n in d.get("nics", ()))
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise SpecError(f"unknown spec fields: {', '.join(sorted(unknown))}")
        return cls(**d)

    def with_changes(self, **changes: Any) -> ContainerSpec:
        return replace(self, **changes)


def _plain(value: Any) -> Any:
    # dataclasses.asdict deep-copies, and Resources.unified is a read-only mappingproxy
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    return value


def nic_from_dict(d: Mapping[str, Any]) -> Any:
    from lxcone.netns import Address, NicSpec

    d = dict(d)
    d["addresses"] = tuple(Address(**a) for a in d.get("addresses", ()))
    return NicSpec(**d)


def _no_newline(value: str) -> bool:
    return "\n" not in value and "\0" not in value


def check_name(spec: ContainerSpec) -> str | None:
    if not NAME_RE.fullmatch(spec.name):
        return (f"name {spec.name!r} is invalid: use 1-64 letters, digits, '.', '_' or '-', "
                "starting with a letter or digit")
    return None


def check_hostname(spec: ContainerSpec) -> str | None:
    h = spec.effective_hostname
    if len(h) > 64 or not HOSTNAME_RE.fullmatch(h):
        return f"hostname {h!r} is not a valid host name (letters, digits, '-', '.', max 64)"
    return None


def check_rootfs(spec: ContainerSpec) -> str | None:
    r = spec.rootfs
    if not os.path.isabs(r) or not _no_newline(r):
        return f"rootfs {r!r} must be an absolute path"
    if os.path.realpath(r) == "/":
        return "rootfs must not be the host's / (that would hand the host to the container)"
    if not os.path.isdir(r):
        return f"rootfs {r} does not exist or is not a directory"
    return None


def check_init(spec: ContainerSpec) -> str | None:
    if not spec.init or not spec.init[0].startswith("/"):
        return "init must be a command with an absolute path, e.g. /sbin/init"
    if not all(_no_newline(a) for a in spec.init) or len(spec.init) > 64:
        return "init arguments must not contain newlines or NUL (64 at most)"
    if os.path.isdir(spec.rootfs):
        # Resolve inside the rootfs, following its own absolute symlinks (sbin/init -> /bin/busybox)
        host_path = _resolve_in_root(spec.rootfs, spec.init[0])
        if host_path is None or not os.path.isfile(host_path):
            return f"init {spec.init[0]} does not exist in rootfs {spec.rootfs}"
        if not os.access(host_path, os.X_OK):
            return f"init {spec.init[0]} in rootfs {spec.rootfs} is not executable"
    return None


def check_env(spec: ContainerSpec) -> str | None:
    for e in spec.env:
        if "=" not in e or not _no_newline(e) or e.startswith("="):
            return f"environment entry {e!r} must be NAME=value without newlines"
    if len(spec.env) > 128:
        return "at most 128 environment entries"
    return None


def check_id_map(spec: ContainerSpec) -> str | None:
    m = spec.id_map
    if spec.privileged:
        return None
    for label, v in (("host_uid", m.host_uid), ("host_gid", m.host_gid)):
        if not 1 <= v <= 2**32 - 2 - m.size:
            return f"id_map.{label} {v} is out of range (1 .. 2^32-2-size)"
    if not 1 <= m.size <= 2**32 - 2:
        return f"id_map.size {m.size} is out of range"
    if m.size < 6:
        return "id_map.size must map at least ids 0-5 (root and the tty group)"
    return None


def check_binds(spec: ContainerSpec) -> str | None:
    if len(spec.binds) > 32:
        return "at most 32 bind mounts"
    for b in spec.binds:
        if not os.path.isabs(b.source) or not _no_newline(b.source) or "\t" in b.source:
            return f"bind source {b.source!r} must be an absolute path"
        if not os.path.exists(b.source):
            return f"bind source {b.source} does not exist"
        t = b.target
        if (not t.startswith("/") or t == "/" or ".." in t.split("/") or not _no_newline(t)
                or "\t" in t):
            return (f"bind target {t!r} must be an absolute path inside the container, "
                    "without '..'")
    return None


def check_resources(spec: ContainerSpec) -> str | None:
    try:
        spec.resources.validate()
    except ValueError as exc:
        return str(exc)
    return None


def check_nics(spec: ContainerSpec) -> str | None:
    seen_host, seen_guest = set(), set()
    for nic in spec.nics:
        if nic.host_name in seen_host or nic.guest_name in seen_guest:
            return f"NIC names must be unique (duplicate {nic.host_name} / {nic.guest_name})"
        seen_host.add(nic.host_name)
        seen_guest.add(nic.guest_name)
    return None


def check_stop_signal(spec: ContainerSpec) -> str | None:
    if not 1 <= spec.stop_signal <= signal.SIGRTMAX:
        return f"stop_signal {spec.stop_signal} is not a signal number"
    return None


CHECKS: tuple[Callable[[ContainerSpec], str | None], ...] = (
    check_name, check_hostname, check_rootfs, check_init, check_env, check_id_map, check_binds,
    check_resources, check_nics, check_stop_signal,
)


Check = Callable[[ContainerSpec], str | None]


def validate(spec: ContainerSpec, checks: Iterable[Check] = CHECKS) -> None:
    """Raise SpecError with the first problem found; touches nothing."""
    for check in checks:
        problem = check(spec)
        if problem:
            raise SpecError(problem)


def _resolve_in_root(root: str, path: str, depth: int = 0) -> str | None:
    """Where ``path`` (absolute, inside the container) lands on the host, following the
    rootfs's symlinks as the container would see them. None for loops or escapes."""
    if depth > 16:
        return None
    parts = [p for p in path.split("/") if p not in ("", ".")]
    cur = root
    for i, part in enumerate(parts):
        if part == "..":
            cur = os.path.dirname(cur) if cur != root else root
            continue
        nxt = os.path.join(cur, part)
        if os.path.islink(nxt):
            target = os.readlink(nxt)
            rest = "/".join(parts[i + 1:])
            here = cur[len(root):] or "/"
            base = target if target.startswith("/") else os.path.join(here, target)
            full = os.path.normpath(base + ("/" + rest if rest else ""))
            return _resolve_in_root(root, full, depth + 1)
        cur = nxt
    return cur
