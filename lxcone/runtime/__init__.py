"""Container lifecycle on top of lxcone.native, lxcone.cgroups and lxcone.netns.

Knows nothing of OpenNebula; usable on its own through ``Runtime`` or the ``lxcone`` CLI.
"""

from lxcone.runtime.container import (
    CREATED,
    FROZEN,
    RUNNING,
    STOPPED,
    ContainerState,
    ExecResult,
    Runtime,
)
from lxcone.runtime.errors import (
    ContainerExists,
    ContainerNotFound,
    InvalidTransition,
    SpecError,
    StartError,
)
from lxcone.runtime.spec import Bind, ContainerSpec, IdMap

__all__ = [
    "CREATED", "FROZEN", "RUNNING", "STOPPED", "Bind", "ContainerExists", "ContainerNotFound",
    "ContainerSpec", "ContainerState", "ExecResult", "IdMap", "InvalidTransition", "Runtime",
    "SpecError", "StartError",
]
