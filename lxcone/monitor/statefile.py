"""The probes' memory between runs: one small file per probe, replaced atomically.

Each probe run is a new process, so whatever needs a previous sample (CPU deltas, the last
reported VM states, the parsed state.json cache) lives in ``<state dir>/<probe>-<host id>.state``
(state dir: ``<run dir>/.monitor`` unless LXCONE_MONITOR_STATE_DIR says otherwise).

Format: a magic line, a CRC-32 and a ``marshal`` body (builtin types only). marshal is built
into the interpreter (no import to pay for, unlike json and its regular expressions) and ~10x
faster to load; the CRC makes a truncated, corrupted or foreign file read as "no state", never
as wrong data. The file is private to the probes and may be deleted at any time: the next run
starts over (see docs/monitoring.md for what a first run reports).
"""

from __future__ import annotations

import binascii
import marshal
import os

from lxcone import atomicfile

MAGIC = b"LXCONE-PROBE-STATE 1\n"
_MARSHAL_VERSION = 4


def load(path: str) -> dict | None:
    """The saved dict, or None if the file is missing, unreadable, corrupted or not ours."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
    except OSError:
        return None
    try:
        chunks = []
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError:
        return None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    n = len(MAGIC)
    if len(data) < n + 4 or not data.startswith(MAGIC):
        return None
    body = data[n + 4:]
    if binascii.crc32(body) != int.from_bytes(data[n:n + 4], "big"):
        return None
    try:
        obj = marshal.loads(body)
    except (EOFError, ValueError, TypeError):
        return None
    return obj if isinstance(obj, dict) else None


def save(path: str, obj: dict) -> str | None:
    """Write ``obj`` (builtin types only) to ``path`` atomically (temporary file + rename).

    Returns None on success, else the reason it could not be saved (the probe reports it on
    stderr and goes on: losing the state only costs the next run its deltas).
    """
    body = marshal.dumps(obj, _MARSHAL_VERSION)
    data = MAGIC + binascii.crc32(body).to_bytes(4, "big") + body
    try:
        d = os.path.dirname(path)
        if d and not os.path.isdir(d):
            # Usually <run dir>/.monitor: a run dir made here gets the runtime's own mode.
            os.makedirs(os.path.dirname(d) or ".", mode=0o711, exist_ok=True)
            os.makedirs(d, mode=0o700, exist_ok=True)
        atomicfile.write_atomic(path, data)
    except OSError as e:
        return f"cannot save probe state {path}: {e.strerror or e}"
    return None
