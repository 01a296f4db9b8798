"""Independent oracle for the netns kernel tests.

MUST NOT import lxcone or pyroute2: every answer comes from ``ip -json`` (iproute2) run with
``nsenter --net=PATH``, which joins only the network namespace. (``ip netns exec`` would also
unshare the mount namespace and remount /sys.) ``netns=None`` means the caller's own netns.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from typing import Any

REQUIRED_TOOLS = ("ip", "nsenter", "unshare")


def skip_reason() -> str | None:
    """Why the kernel tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, veths)"
    missing = missing_tools()
    return f"needs {', '.join(missing)}" if missing else None


def missing_tools() -> list[str]:
    tools = [t for t in REQUIRED_TOOLS if shutil.which(t) is None]
    if ping_argv() is None:
        tools.append("ping (or busybox)")
    return tools


def ping_argv() -> list[str] | None:
    if shutil.which("ping"):
        return ["ping"]
    if shutil.which("busybox"):
        return ["busybox", "ping"]
    return None


def run(netns: str | None, *argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    cmd = [*argv] if netns is None else ["nsenter", f"--net={netns}", *argv]
    return subprocess.run(cmd, capture_output=True, text=True, check=check, timeout=30)


def ip_json(netns: str | None, *args: str) -> list[dict[str, Any]]:
    out = run(netns, "ip", "-json", *args).stdout
    return json.loads(out) if out.strip() else []


def links(netns: str | None) -> dict[str, dict[str, Any]]:
    """ifname -> ``ip -json -d link`` entry."""
    return {x["ifname"]: x for x in ip_json(netns, "-d", "link", "show")}


def link(netns: str | None, ifname: str) -> dict[str, Any] | None:
    return links(netns).get(ifname)


def link_set(netns: str | None) -> set[tuple[int, str]]:
    return {(x["ifindex"], x["ifname"]) for x in ip_json(netns, "link", "show")}


def is_up(entry: dict[str, Any]) -> bool:
    return "UP" in entry["flags"]


def addresses(netns: str | None, ifname: str) -> list[str]:
    """Non-link-local addresses of ``ifname`` as ``addr/len``, in kernel order (duplicates kept)."""
    out = []
    for entry in ip_json(netns, "addr", "show", "dev", ifname):
        for a in entry.get("addr_info", []):
            if a.get("scope") != "link":
                out.append(f"{a['local']}/{a['prefixlen']}")
    return out


def default_routes(netns: str | None, family: str = "-4") -> list[dict[str, Any]]:
    return ip_json(netns, family, "route", "show", "default")


def ping(netns: str | None, address: str) -> bool:
    argv = ping_argv()
    assert argv is not None
    return run(netns, *argv, "-c1", "-W1", address, check=False).returncode == 0
