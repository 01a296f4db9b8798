"""On-disk state of a container under the run dir, and liveness checks that survive pid reuse.

<run_dir>/<name>/
  state.json     spec + cgroup paths, written by the runtime (atomic rename)
  config         what lxcone-monitor reads (see csrc/monitor.c)
  init           "<init pid> <starttime> <monitor pid>", written by the monitor at every (re)start
  exit           "exited N" / "signaled N", written by the monitor when init ends for good
  console.log    console output (rotated at 1 MiB to console.log.1); console.sock to attach
  monitor.log    the monitor's own errors
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from lxcone import atomicfile, procstat

STATE_FILE = "state.json"


def write_atomic(path: Path, data: str) -> None:
    # 0644: readable by whoever may read the container's directory (the monitoring probes)
    atomicfile.write_atomic(path, data.encode(), 0o644)


def read_state(ct_dir: Path) -> dict[str, Any]:
    with open(ct_dir / STATE_FILE) as f:
        return json.load(f)


def write_state(ct_dir: Path, state: dict[str, Any]) -> None:
    write_atomic(ct_dir / STATE_FILE, json.dumps(state, indent=1, sort_keys=True))


@dataclass(frozen=True)
class InitInfo:
    pid: int
    starttime: int
    monitor_pid: int

    def alive(self) -> bool:
        """True if this very process (not a recycled pid) still runs."""
        return procstat.alive(self.pid, self.starttime)


def read_init(ct_dir: Path) -> InitInfo | None:
    try:
        text = (ct_dir / "init").read_text().split()
    except FileNotFoundError:
        return None
    return InitInfo(int(text[0]), int(text[1]), int(text[2]))


def read_exit(ct_dir: Path) -> str | None:
    try:
        return (ct_dir / "exit").read_text().strip()
    except FileNotFoundError:
        return None
