"""Where the probes look, and the two settings they take from onemonitord's configuration.

- Run dir (the containers): ``$LXCONE_RUN_DIR``, else ``/run/lxcone`` (the runtime's default).
- State dir (the probes' own files): ``$LXCONE_MONITOR_STATE_DIR``, else ``<run dir>/.monitor``
  (a name the runtime never uses: container names start with a letter or digit).
- From the MONITOR_CONFIGURATION XML on stdin: DATASTORE_LOCATION (host/system) and
  PROBES_PERIOD/SYNC_STATE_VM (vm/status). A few string searches instead of an XML parser:
  xml.etree costs ~10 ms per run, and these are flat elements whose text OpenNebula writes as
  CDATA (``<DATASTORE_LOCATION><![CDATA[/var/lib/one//datastores]]></DATASTORE_LOCATION>``).
"""

from __future__ import annotations

import os

DEFAULT_RUN_DIR = "/run/lxcone"
DEFAULT_DATASTORE_LOCATION = "/var/lib/one/datastores"
DEFAULT_SYNC_STATE_VM = 180


def run_dir() -> str:
    return os.environ.get("LXCONE_RUN_DIR") or DEFAULT_RUN_DIR


def state_dir(run_dir: str) -> str:
    return os.environ.get("LXCONE_MONITOR_STATE_DIR") or os.path.join(run_dir, ".monitor")


_ENTITIES = {"lt": "<", "gt": ">", "amp": "&", "quot": '"', "apos": "'"}


def _unescape(s: str) -> str:
    if "&" not in s:
        return s
    out = []
    i = 0
    while True:
        j = s.find("&", i)
        k = s.find(";", j + 1) if j >= 0 else -1
        if j < 0 or k < 0:
            out.append(s[i:])
            return "".join(out)
        out.append(s[i:j])
        name = s[j + 1:k]
        try:
            if name.startswith("#x"):
                out.append(chr(int(name[2:], 16)))
            elif name.startswith("#"):
                out.append(chr(int(name[1:])))
            else:
                out.append(_ENTITIES[name])
        except (KeyError, ValueError, OverflowError):
            out.append(s[j:k + 1])  # not an entity we know: keep it as written
        i = k + 1


def _element(xml: str, tag: str) -> str | None:
    """The inner text of the first ``<tag>``/``<tag attr=..>`` element, or None."""
    i = 0
    while True:
        i = xml.find("<" + tag, i)
        if i < 0:
            return None
        j = i + 1 + len(tag)
        if j < len(xml) and xml[j] in ">/ \t\r\n":
            break
        i = j
    close = xml.find(">", j)
    if close < 0:
        return None
    if xml[close - 1] == "/":
        return ""
    end = xml.find("</" + tag, close + 1)
    return xml[close + 1:] if end < 0 else xml[close + 1:end]


def xml_text(xml: str, *path: str) -> str | None:
    """Text of the element at ``path`` (e.g. "PROBES_PERIOD", "SYNC_STATE_VM"), CDATA and
    entities decoded, surrounding blanks stripped; None if absent."""
    inner: str | None = xml
    for tag in path:
        inner = _element(inner, tag)
        if inner is None:
            return None
    out = []
    i = 0
    while True:
        j = inner.find("<![CDATA[", i)
        if j < 0:
            out.append(_unescape(inner[i:]))
            break
        out.append(_unescape(inner[i:j]))
        k = inner.find("]]>", j + 9)
        if k < 0:
            out.append(inner[j + 9:])
            break
        out.append(inner[j + 9:k])
        i = k + 3
    return "".join(out).strip()


def datastore_location(xml: str) -> str:
    return xml_text(xml, "DATASTORE_LOCATION") or DEFAULT_DATASTORE_LOCATION


def sync_state_vm(xml: str) -> int:
    """PROBES_PERIOD/SYNC_STATE_VM seconds (180 when absent or not a number)."""
    value = xml_text(xml, "PROBES_PERIOD", "SYNC_STATE_VM")
    if value and value.isdigit():
        return int(value)
    return DEFAULT_SYNC_STATE_VM
