"""The one exception type of lxcone.netns (stdlib only, importable without pyroute2)."""

from __future__ import annotations

import os


class NetnsError(OSError):
    """A network operation failed: errno, the operation, the interface and what the kernel said.

    ``str()`` reads like ``[Errno 17] File exists: link add one-12-0 (veth peer eth0)``. pyroute2's
    ``NetlinkError`` is not an ``OSError`` and never escapes lxcone.netns: it is converted to this
    at the boundary, with its ``code`` as ``errno`` and any kernel extended-ack text in ``detail``.
    """

    def __init__(self, err: int, operation: str, ifname: str | None = None,
                 detail: str | None = None) -> None:
        super().__init__(err, os.strerror(err))
        self.operation = operation
        self.ifname = ifname
        self.detail = detail

    def __str__(self) -> str:
        where = f" {self.ifname}" if self.ifname else ""
        why = f" ({self.detail})" if self.detail else ""
        return f"[Errno {self.errno}] {self.strerror}: {self.operation}{where}{why}"

    def __reduce__(self) -> tuple[type[NetnsError], tuple[int, str, str | None, str | None]]:
        # OSError pickles as cls(*args), which would not match this __init__; a resident agent
        # sends errors to its clients, so keep the exception round-trippable.
        return (type(self), (self.errno, self.operation, self.ifname, self.detail))
