"""The agent's wire format, shared by both ends. The two clients keep their own copy of these
few lines: remotes/vmm/lxcone/lxcone-client runs with ``python -I -S``, without this package on
its path, and lxcone/native/csrc/client.c is C (tests/unit/agent checks all three agree).

Request:  MAGIC, u32 field count, then per field u32 length + bytes.
          Fields: config path, action, its argv..., stdin (last, possibly empty).
Reply:    u32 exit code, u32 length + stdout, u32 length + stderr.
All integers big-endian. One request per connection. A request the agent did not take (its
backlog reset while stopping, or an unknown MAGIC from a client of another version) ends in a
connection reset, which tells the client that nothing ran.
"""

from __future__ import annotations

import socket
import struct

MAGIC = b"LXA1"  # bump on any incompatible change: an old client then runs in-process
MAX_FIELD = 64 << 20  # the VM XML is at most 16 MiB (vmxml), base64 adds a third
MAX_FIELDS = 64

_U32 = struct.Struct(">I")


class WireError(ValueError):
    """A request or reply that does not follow the format."""


class UnknownFormat(WireError):
    """A request that does not start with MAGIC."""


def encode_fields(fields: list[bytes]) -> bytes:
    out = [MAGIC, _U32.pack(len(fields))]
    for f in fields:
        out += [_U32.pack(len(f)), f]
    return b"".join(out)


def encode_reply(code: int, out: bytes, err: bytes) -> bytes:
    return b"".join([_U32.pack(code), _U32.pack(len(out)), out, _U32.pack(len(err)), err])


def _recv_exact(sock: socket.socket, n: int) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = sock.recv(min(n - len(buf), 1 << 20))
        if not chunk:
            raise WireError(f"connection closed after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


def _u32(sock: socket.socket) -> int:
    return _U32.unpack(_recv_exact(sock, 4))[0]


def read_request(sock: socket.socket) -> list[bytes]:
    magic = _recv_exact(sock, 4)
    if magic != MAGIC:
        raise UnknownFormat(f"unknown request format {magic!r} (client and agent versions differ)")
    count = _u32(sock)
    if not 3 <= count <= MAX_FIELDS:
        raise WireError(f"a request has 3..{MAX_FIELDS} fields, got {count}")
    fields = []
    for _ in range(count):
        n = _u32(sock)
        if n > MAX_FIELD:
            raise WireError(f"a field of {n} bytes is over the {MAX_FIELD} byte limit")
        fields.append(_recv_exact(sock, n))
    return fields


def read_reply(sock: socket.socket) -> tuple[int, bytes, bytes]:
    code = _u32(sock)
    out = _recv_exact(sock, _u32(sock))
    err = _recv_exact(sock, _u32(sock))
    return code, out, err
