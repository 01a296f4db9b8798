"""Container lifecycle on top of lxcone.native, lxcone.cgroups and lxcone.netns.

Knows nothing of OpenNebula; usable on its own through ``Runtime`` or the ``lxcone`` CLI.

The public names are loaded on first use (PEP 562): ``from lxcone.runtime import Runtime``
works as before, but importing a light submodule such as ``lxcone.runtime.state`` (the
monitoring probes read the run dir through it) no longer loads the cffi extension, the
cgroup managers and the rest of the lifecycle code.
"""

from __future__ import annotations

_HOME = {
    "CREATED": "container", "FROZEN": "container", "RUNNING": "container",
    "STOPPED": "container", "ContainerState": "container", "ExecResult": "container",
    "Runtime": "container",
    "ContainerExists": "errors", "ContainerNotFound": "errors", "InvalidTransition": "errors",
    "MountBusy": "errors", "MountConflict": "errors", "SpecError": "errors", "StartError": "errors",
    "check_mount_target": "container",
    "Bind": "spec", "ContainerSpec": "spec", "IdMap": "spec",
}

__all__ = [
    "CREATED", "FROZEN", "RUNNING", "STOPPED", "Bind", "ContainerExists", "ContainerNotFound",
    "ContainerSpec", "ContainerState", "ExecResult", "IdMap", "InvalidTransition", "MountBusy",
    "MountConflict", "Runtime", "SpecError", "StartError", "check_mount_target",
]


def __getattr__(name: str) -> object:
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module = __import__(f"{__name__}.{home}", fromlist=[name])
    value = getattr(module, name)
    globals()[name] = value  # later lookups skip __getattr__
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
