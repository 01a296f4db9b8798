"""A remotes tree as OpenNebula lays it out on a host (``/var/tmp/one`` by default), for running
the real probe executables against a driver configuration of the test's own.

Probes: ``<root>/im/lxcone-probes.d/<group>/<probe>`` symlinks to this checkout's launcher (so
it finds the lxcone package here); configuration: ``<root>/etc/vmm/lxcone/lxcone.toml``.
"""

from __future__ import annotations

from pathlib import Path

LAUNCHER = Path(__file__).resolve().parents[3] / "remotes" / "im" / "lxcone-probes.d" / \
    "lxcone-probe"
PROBES = {"host/system": "lxcone-host-system", "host/monitor": "lxcone-host-monitor",
          "host/beacon": "lxcone-host-beacon", "vm/status": "lxcone-vm-status",
          "vm/monitor": "lxcone-vm-monitor"}


def make_remotes(root: Path, config: str | bytes | None) -> Path:
    """The tree under ``root``, with ``config`` as its lxcone.toml (None: no file). Returns
    ``root``; ``probe(root, group)`` is the path of a group's executable."""
    for group, name in PROBES.items():
        d = root / "im" / "lxcone-probes.d" / group
        d.mkdir(parents=True, exist_ok=True)
        link = d / name
        if not link.is_symlink():
            link.symlink_to(LAUNCHER)
    cfg = root / "etc" / "vmm" / "lxcone" / "lxcone.toml"
    cfg.parent.mkdir(parents=True, exist_ok=True)
    if config is None:
        cfg.unlink(missing_ok=True)
    else:
        cfg.write_bytes(config.encode() if isinstance(config, str) else config)
    return root


def probe(root: Path, group: str) -> Path:
    return root / "im" / "lxcone-probes.d" / group / PROBES[group]
