"""``lxcone``: the runtime's command line, used like the lxc-* tools.

Every failure prints one ``ERROR: ...`` line on stderr and exits non-zero (2 for usage and
invalid specs, 1 otherwise); pyroute2 is imported only when a command involves NICs.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from collections.abc import Sequence

SIZE_RE = re.compile(r"^(\d+)([KMGT]?)i?B?$", re.IGNORECASE)
UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'512M' -> bytes; raises ValueError naming the input."""
    m = SIZE_RE.match(text.strip())
    if not m:
        raise ValueError(f"size {text!r} is not a number with an optional K/M/G/T suffix")
    return int(m.group(1)) * UNITS[m.group(2).upper()]


def parse_nic(text: str) -> object:
    """'host=one-1-0,bridge=br0,ip=10.0.0.2/24,gw=10.0.0.1,mac=..,mtu=1500,guest=eth0'."""
    from lxcone.netns import Address, NicSpec

    fields = dict(kv.split("=", 1) for kv in text.split(",") if "=" in kv)
    unknown = set(fields) - {"host", "guest", "bridge", "ip", "gw", "mac", "mtu", "gw6"}
    if unknown or "host" not in fields:
        raise ValueError(f"--nic {text!r}: need host=NAME, and only host, guest, bridge, ip, gw, "
                         "gw6, mac, mtu")
    addrs = []
    for a in filter(None, fields.get("ip", "").split(";")):
        ip, _, plen = a.partition("/")
        addrs.append(Address(ip, int(plen or (32 if ":" not in ip else 128))))
    return NicSpec(host_name=fields["host"], guest_name=fields.get("guest", "eth0"),
                   mac=fields.get("mac"), mtu=int(fields["mtu"]) if "mtu" in fields else None,
                   bridge=fields.get("bridge"), addresses=tuple(addrs),
                   gateway=fields.get("gw"), gateway6=fields.get("gw6"))


def _spec_from_args(a: argparse.Namespace) -> object:
    from lxcone.cgroups import Resources
    from lxcone.runtime.spec import Bind, ContainerSpec

    res = {}
    if a.memory:
        res["memory_limit_bytes"] = parse_size(a.memory)
    if a.swap:
        res["memory_swap_limit_bytes"] = parse_size(a.swap)
    if a.cpus is not None:
        period = 100_000
        res["cpu_quota_us"], res["cpu_period_us"] = int(a.cpus * period), period
    if a.pids is not None:
        res["pids_limit"] = a.pids
    if a.cpuset:
        res["cpuset_cpus"] = a.cpuset
    binds = []
    for b in a.bind or ():
        src, _, rest = b.partition(":")
        tgt, _, mode = rest.partition(":")
        binds.append(Bind(src, tgt or src, mode == "ro"))
    kw = {}
    if a.init:
        kw["init"] = tuple(a.init)
    if a.stop_signal:
        kw["stop_signal"] = _signum(a.stop_signal)
    return ContainerSpec(
        name=a.name, rootfs=os.path.abspath(a.rootfs), hostname=a.hostname,
        privileged=a.privileged, resources=Resources(**res), binds=tuple(binds),
        nics=tuple(parse_nic(n) for n in a.nic or ()), **kw)


def _signum(text: str) -> int:
    if text.isdigit():
        return int(text)
    name = text.upper()
    name = name if name.startswith("SIG") else "SIG" + name
    if name.startswith("SIGRTMIN+"):
        return int(signal.SIGRTMIN) + int(name[9:])
    try:
        return int(signal.Signals[name])
    except KeyError:
        raise ValueError(f"unknown signal {text!r}") from None


class _Parser(argparse.ArgumentParser):
    """argparse, but usage errors follow the contract: one ERROR: line, exit 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"ERROR: {message} (see {self.prog} --help)\n")


def _parser() -> argparse.ArgumentParser:
    p = _Parser(prog="lxcone", description="LXCoNe system containers")
    p.add_argument("--run-dir", default=os.environ.get("LXCONE_RUN_DIR", "/run/lxcone"),
                   help="state directory (default /run/lxcone, env LXCONE_RUN_DIR)")
    p.add_argument("--cgroup-parent", default=os.environ.get("LXCONE_CGROUP_PARENT", "lxcone"),
                   help="parent cgroup, relative to each hierarchy root (default lxcone)")
    p.add_argument("--host-netns", default=os.environ.get("LXCONE_HOST_NETNS"),
                   help="netns path holding bridges and host-side veths (default: ours)")
    sub = p.add_subparsers(dest="cmd", required=True)

    def with_name(name: str, help: str) -> argparse.ArgumentParser:
        sp = sub.add_parser(name, help=help)
        sp.add_argument("name")
        return sp

    for cmd, help in (("run", "create and start a container"), ("create", "record a container")):
        sp = with_name(cmd, help)
        sp.add_argument("--rootfs", required=True)
        sp.add_argument("--hostname")
        sp.add_argument("--privileged", action="store_true",
                        help="no user namespace (default: unprivileged, ids 0.. -> 100000..)")
        sp.add_argument("--memory", help="hard memory limit, e.g. 512M")
        sp.add_argument("--swap", help="swap allowance beyond --memory")
        sp.add_argument("--cpus", type=float, help="hard CPU quota in CPUs, e.g. 0.5")
        sp.add_argument("--cpuset", help="CPUs allowed, e.g. 0-1")
        sp.add_argument("--pids", type=int, help="max number of tasks")
        sp.add_argument("--bind", action="append", help="SRC[:TARGET[:ro]]")
        sp.add_argument("--nic", action="append", help="host=NAME,bridge=BR,ip=A/N,gw=G,mac=M")
        sp.add_argument("--stop-signal", help="signal that makes init power off (default SIGPWR)")
        sp.add_argument("init", nargs="*", help="-- init command (default /sbin/init)")
    with_name("start", "start a created or stopped container")
    sp = with_name("stop", "power off gracefully, kill after a timeout")
    sp.add_argument("-t", "--timeout", type=float, default=10.0)
    sp = with_name("kill", "send a signal to init (default SIGKILL: stop now)")
    sp.add_argument("-s", "--signal", default="KILL")
    with_name("freeze", "freeze all processes")
    with_name("thaw", "thaw a frozen container")
    sp = with_name("exec", "run a command inside (like lxc-attach)")
    sp.add_argument("command", nargs="*", help="-- command and its arguments")
    with_name("state", "print the state as JSON")
    sp = with_name("delete", "remove a stopped container")
    sp.add_argument("-f", "--force", action="store_true", help="kill it first if running")
    with_name("console-log", "print what the console showed")
    with_name("console", "attach to the console (Ctrl-a q to detach)")
    sub.add_parser("list", help="list containers")
    sp = sub.add_parser("demo", help="run the embedded busybox demo container and stop it")
    sp.add_argument("--keep", action="store_true", help=argparse.SUPPRESS)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Everything after "--" is the init (run, create) or the command (exec), options included.
    tail: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1:]
    args = _parser().parse_args(argv)
    if tail:
        if args.cmd in ("run", "create"):
            args.init = [*args.init, *tail]
        elif args.cmd == "exec":
            args.command = [*args.command, *tail]
        else:
            _parser().error(f"'--' makes no sense with {args.cmd}")
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        print("ERROR: interrupted", file=sys.stderr)
        return 130
    except ValueError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        print(f"ERROR: {exc}", file=sys.stderr)
        return 1


def _dispatch(a: argparse.Namespace) -> int:
    if a.cmd == "demo":
        from lxcone.demo import run_demo

        return run_demo()
    from lxcone.runtime import Runtime

    rt = Runtime(a.run_dir, a.cgroup_parent, a.host_netns)
    if a.cmd in ("run", "create"):
        spec = _spec_from_args(a)
        if a.cmd == "create":
            rt.create(spec)
            return 0
        s = rt.run(spec)
        print(f"{s.name} {s.status} pid {s.pid}")
        return 0
    if a.cmd == "start":
        s = rt.start(a.name)
        print(f"{s.name} {s.status} pid {s.pid}")
    elif a.cmd == "stop":
        rt.stop(a.name, a.timeout)
    elif a.cmd == "kill":
        rt.kill(a.name, _signum(a.signal))
    elif a.cmd == "freeze":
        rt.freeze(a.name)
    elif a.cmd == "thaw":
        rt.thaw(a.name)
    elif a.cmd == "exec":
        cmd = a.command
        if not cmd:
            raise ValueError("exec needs a command, e.g. lxcone exec NAME -- ps")
        pid = rt.spawn(a.name, cmd, stdin=0, stdout=1, stderr=2)
        code = rt.wait(pid)
        return code if code >= 0 else 128 - code
    elif a.cmd == "state":
        print(json.dumps(rt.state(a.name).__dict__))
    elif a.cmd == "list":
        for s in rt.list():
            print(f"{s.name:24} {s.status:8} {s.pid or '-'}")
    elif a.cmd == "delete":
        rt.delete(a.name, a.force)
    elif a.cmd == "console-log":
        sys.stdout.buffer.write(rt.console_log(a.name))
    elif a.cmd == "console":
        from lxcone.runtime.console import attach_console

        return attach_console(rt.console_socket(a.name))
    return 0


if __name__ == "__main__":
    sys.exit(main())
