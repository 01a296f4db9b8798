"""OpenNebula template text, the language of every probe's output.

The grammar (ONE ``src/parsers/template_parser.l`` + ``template_syntax.y``)::

    attribute := NAME '=' value | NAME '=' '[' NAME '=' value (',' NAME '=' value)* ']'
    NAME      := [A-Za-z0-9_]+
    value     := '"' ( [^"] | '\\"' )* '"'       (only \\" is unescaped, to ")
               | [^=#<blank>\\n,\\[\\]]+          (a bare word)

and a value line containing ``]]>`` anywhere makes the parser abort the whole template. So a
quoted value must not contain a bare ``"``, must not end in a backslash (it would escape the
closing quote and swallow the following lines), and must not contain ``]]>``. :func:`quote`
guarantees that for any input, and keeps every value on one line (control characters become
spaces), so each attribute is one line of output.
"""

from __future__ import annotations

import binascii

# Control characters (C0, DEL, C1) and the Unicode line/paragraph separators -> space.
_BLANKS = {c: " " for c in [*range(32), *range(127, 160), 0x2028, 0x2029]}


def quote(value: object) -> str:
    """``value`` as a double-quoted template value that reads back as itself, with control
    characters turned into spaces, trailing backslashes dropped and ``]]>`` split."""
    s = value if isinstance(value, str) else str(value)
    if not (s.isprintable() and '"' not in s and "\\" not in s and "]]>" not in s):
        s = s.translate(_BLANKS)
        if not s.isprintable():  # other non-printables (format chars, unassigned) -> space
            s = "".join(c if c.isprintable() else " " for c in s)
        while "]]>" in s:
            s = s.replace("]]>", "]] >")
        s = s.rstrip("\\").replace('"', '\\"')
    return f'"{s}"'


def attr(name: str, value: object) -> str:
    """``NAME="value"``; numbers (int) are written bare, as OpenNebula's own probes do."""
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{name}={value}"
    return f"{name}={quote(value)}"


def vector(name: str, pairs: list[tuple[str, object]]) -> str:
    """``NAME=[ A="1", B="x" ]`` on one line (all values quoted)."""
    return f"{name}=[ " + ", ".join(f"{k}={quote(v)}" for k, v in pairs) + " ]"


def b64(text: str) -> str:
    """Base64 of the UTF-8 text, one line (what MONITOR= carries)."""
    return binascii.b2a_base64(text.encode(), newline=False).decode("ascii")


def vm_line(vm_id: int, deploy_id: str, key: str, value: str) -> str:
    """``VM = [ ID="12", DEPLOY_ID="one-12", KEY="value" ]``, as ONE's probes print it."""
    return f"VM = [ ID={quote(vm_id)}, DEPLOY_ID={quote(deploy_id)}, {key}={quote(value)} ]"
