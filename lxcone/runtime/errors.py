"""The runtime's named failures. All are OSError subclasses (errno set) or ValueError, so the
CLI and the driver turn them into messages and exit codes in one place."""

from __future__ import annotations

import errno
import os


class ContainerExists(FileExistsError):
    """A container with this name already exists."""

    def __init__(self, name: str) -> None:
        super().__init__(errno.EEXIST, "container already exists", name)


class ContainerNotFound(FileNotFoundError):
    """No container with this name."""

    def __init__(self, name: str) -> None:
        super().__init__(errno.ENOENT, "no such container", name)


class InvalidTransition(OSError):
    """The action is not possible in the container's current state (e.g. freeze a stopped one)."""

    def __init__(self, name: str, state: str, action: str) -> None:
        super().__init__(errno.EINVAL, f"cannot {action} a container that is {state}", name)
        self.state, self.action = state, action


class StartError(OSError):
    """Starting failed at a named step inside the container set-up (call, path and errno)."""

    def __init__(self, err: int, call: str, path: str, name: str) -> None:
        super().__init__(err, f"{os.strerror(err)} [{call} {path}]", name)
        self.call, self.step_path = call, path


class SpecError(ValueError):
    """The container spec is invalid; the message is one sentence naming the field."""


class MountBusy(OSError):
    """A hot mount cannot be unmounted: a process inside the container uses it (EBUSY). It stays
    mounted and recorded; retry once the guest has let go of it."""

    def __init__(self, name: str, target: str) -> None:
        super().__init__(errno.EBUSY,
                         f"disk is busy: {target} is in use inside container {name}", name)
        self.target = target


class MountConflict(FileExistsError):
    """Something else is already mounted at a hot mount's target (EEXIST)."""

    def __init__(self, name: str, target: str, what: str) -> None:
        super().__init__(errno.EEXIST,
                         f"{target} in container {name} already has a mount ({what})", name)
        self.target = target
