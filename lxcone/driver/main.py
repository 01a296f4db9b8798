"""Entry point of every VMM action: ``python -m lxcone.driver <action> <argv...>``.

OpenNebula's contract (protocol doc §2.3, A.1): stdout carries only the action's result (the
deploy id, the snapshot id); failures exit non-zero with one ``ERROR: ...`` line on stderr, which
reaches the VM log and the failure message. No traceback ever reaches OpenNebula.
"""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Sequence

from lxcone.driver import actions
from lxcone.driver.config import DEFAULT_PATH, load_config
from lxcone.driver.vmxml import VmXmlError, decode_stdin, parse_vm
from lxcone.filelock import flock

# Actions whose stdin may be empty or irrelevant are still given the XML by OpenNebula; all of
# ours read it, to check the VM id against the argv.


def config_path() -> str:
    """LXCONE_CONFIG, else the sample's place relative to the action scripts."""
    env = os.environ.get("LXCONE_CONFIG")
    if env:
        return env
    scripts = os.environ.get("LXCONE_REMOTES_VMM", os.path.dirname(os.path.abspath(sys.argv[0])))
    return os.path.normpath(os.path.join(scripts, DEFAULT_PATH))


def run(action: str, argv: Sequence[str], stdin: bytes,
        config: str | None = None) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) for one action; never raises. ``config`` defaults to
    config_path(); the agent passes the path its client computed."""
    try:
        own, vm_id, host = actions.split_argv(action, argv)
        cfg = load_config(config or config_path())
        vm = parse_vm(decode_stdin(stdin)) if stdin.strip() else None
        if vm is not None and vm.vm_id != vm_id:
            raise VmXmlError(f"the XML is for VM {vm.vm_id}, the action for VM {vm_id}")
        func = actions.ACTIONS.get(action)
        if func is None:
            raise actions.NotSupported(action, "not implemented yet")
        with vm_lock(cfg.run_dir, vm_id):
            out = func(actions.Call(action, own, vm_id, host, vm, cfg))
    except actions.ActionError as exc:
        return 1, "", f"ERROR: {exc.strerror}\n"
    except (ValueError, OSError) as exc:
        return 1, "", f"ERROR: {action}: {exc}\n"
    return 0, (out + "\n") if out else "", ""


def vm_lock(run_dir: str, vm_id: int) -> contextlib.AbstractContextManager[None]:
    """One action per VM at a time, whether it runs in the agent or in its own process:
    oned serialises a VM's actions, but a retry after a timeout, or an operator running an
    action by hand, must not interleave with a running one."""
    return flock(os.path.join(run_dir, ".locks", f"one-{vm_id}"), create=True)


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args:
        sys.stderr.write("ERROR: usage: python -m lxcone.driver <action> <args...>\n")
        return 2
    # stdin is a pipe from OpenNebula; a terminal means a person ran it by hand without XML
    stdin = b"" if sys.stdin is None or sys.stdin.isatty() else sys.stdin.buffer.read()
    code, out, err = run(args[0], args[1:], stdin)
    sys.stdout.write(out)
    sys.stderr.write(err)
    return code
