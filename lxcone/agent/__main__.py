"""``python -m lxcone.agent serve|stop|status --config <lxcone.toml>``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m lxcone.agent",
                                description="The resident LXCoNe agent of this host.")
    p.add_argument("command", choices=["serve", "stop", "status"])
    p.add_argument("--config", help="the driver's lxcone.toml (its run_dir places the socket)")
    p.add_argument("--log", help="append the agent's log to this file instead of stderr")
    p.add_argument("--timeout", type=float, default=300.0,
                   help="stop: how long to wait for the actions in flight (s)")
    args = p.parse_args(argv)

    from lxcone.agent import server
    from lxcone.driver.config import load_config

    try:
        cfg = load_config(args.config)
        run_dir = cfg.run_dir
        if args.command == "serve":
            return server.serve(run_dir, args.log, cfg.agent_group)
        if args.command == "stop":
            stopped = server.stop(run_dir, args.timeout)
            print("stopped" if stopped else "not running")
            return 0
        pid = server.read_pid(run_dir)
        print(f"running, pid {pid}" if pid else "not running")
        return 0 if pid else 3
    except (OSError, ValueError) as exc:
        sys.stderr.write(f"ERROR: lxcone agent {args.command}: {exc}\n")
        return 1


if __name__ == "__main__":
    sys.exit(main())
