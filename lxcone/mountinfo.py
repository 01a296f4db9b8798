"""/proc/<pid>/mountinfo, parsed once for every layer that needs it (cgroup layout detection,
storage's mount checks). Stdlib only; a leaf module any layer may import.

Line format (proc(5)): ``id parent major:minor root mountpoint options [optional...] - fstype
source super-options``; space, tab, newline and backslash in paths are escaped as ``\\ooo``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Mount:
    mnt_id: int
    dev: str                        # "major:minor" of the mounted filesystem
    root: str                       # path inside that filesystem (not "/" for bind mounts)
    mountpoint: str
    fstype: str
    source: str
    super_options: tuple[str, ...]  # e.g. ("rw", "cpu") for a v1 cpu hierarchy


def unescape(field: str) -> str:
    """Undo mountinfo's ``\\ooo`` octal escapes."""
    if "\\" not in field:
        return field
    out, i = [], 0
    while i < len(field):
        code = field[i + 1:i + 4]
        if field[i] == "\\" and len(code) == 3 and all(c in "01234567" for c in code):
            out.append(chr(int(code, 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def parse(text: str) -> list[Mount]:
    """Every entry, in kernel order (later = mounted on top). Malformed lines are skipped: the
    text is kernel-generated, so a bad line can only be a truncated read."""
    out = []
    for line in text.splitlines():
        fields = line.split(" ")
        try:
            sep = fields.index("-", 6)  # optional fields end at the lone "-"
            out.append(Mount(int(fields[0]), fields[2], unescape(fields[3]), unescape(fields[4]),
                             fields[sep + 1], unescape(fields[sep + 2]),
                             tuple(fields[sep + 3].split(","))))
        except (ValueError, IndexError):
            continue
    return out
