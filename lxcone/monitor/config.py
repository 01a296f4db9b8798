"""Where the probes look, and the two settings they take from onemonitord's configuration.

- Run dir (the containers): ``$LXCONE_RUN_DIR``, else ``run_dir`` of the driver's lxcone.toml,
  else ``/run/lxcone`` (the runtime's default). The probes find lxcone.toml where OpenNebula
  copies it with them: ``<remotes>/etc/vmm/lxcone/lxcone.toml``, ``<remotes>`` being the tree
  their executable was run from (``<remotes>/im/lxcone-probes.d/<group>/<probe>``), the file
  ``lxcone.driver.config`` reads for the VMM actions.
- State dir (the probes' own files): ``$LXCONE_MONITOR_STATE_DIR``, else ``<run dir>/.monitor``
  (a name the runtime never uses: container names start with a letter or digit).
- From the MONITOR_CONFIGURATION XML on stdin: DATASTORE_LOCATION (host/system) and
  PROBES_PERIOD/SYNC_STATE_VM (vm/status). A few string searches instead of an XML parser:
  xml.etree costs ~10 ms per run, and these are flat elements whose text OpenNebula writes as
  CDATA (``<DATASTORE_LOCATION><![CDATA[/var/lib/one//datastores]]></DATASTORE_LOCATION>``).
"""

from __future__ import annotations

import os
import stat

DEFAULT_RUN_DIR = "/run/lxcone"
DEFAULT_DATASTORE_LOCATION = "/var/lib/one/datastores"
DEFAULT_SYNC_STATE_VM = 180
#: lxcone.toml relative to the remotes tree (lxcone.driver.config.DEFAULT_PATH is the same file,
#: relative to remotes/vmm/lxcone/).
CONFIG_IN_REMOTES = "etc/vmm/lxcone/lxcone.toml"
#: The shipped file is ~3.5 KB; anything this big is not a driver configuration.
MAX_CONFIG_BYTES = 1 << 20


class ConfigError(Exception):
    """lxcone.toml exists but cannot be read, or does not give a usable run_dir. The message
    names the file; the probe prints it and fails rather than report an empty host."""


def config_path(executable: str) -> str | None:
    """``<remotes>/etc/vmm/lxcone/lxcone.toml`` for a probe run as
    ``<remotes>/im/lxcone-probes.d/<group>/<probe>`` (the path it was run by: symlinks are not
    followed, they lead into the checkout or install, not to the remotes tree); None when
    ``executable`` is not inside a ``lxcone-probes.d`` (e.g. ``python -m lxcone.monitor.probes
    vm-status`` by hand)."""
    d = os.path.dirname(os.path.abspath(executable))
    while d != "/" and os.path.basename(d) != "lxcone-probes.d":
        d = os.path.dirname(d)
    if d == "/":
        return None
    return os.path.join(os.path.dirname(os.path.dirname(d)), CONFIG_IN_REMOTES)


def run_dir(config_file: str | None = None) -> str:
    """``$LXCONE_RUN_DIR``, else ``run_dir`` from ``config_file`` (a missing file means the
    built-in defaults, as for the driver), else DEFAULT_RUN_DIR. Raises ConfigError."""
    env = os.environ.get("LXCONE_RUN_DIR")
    if env:
        return env
    if config_file is None:
        return DEFAULT_RUN_DIR
    value = read_config(config_file).get("run_dir", DEFAULT_RUN_DIR)
    # Checked here, not left to the listing: a bad value must fail the probe, not make it
    # report a host without containers. (The value is not echoed: the probes read the file as
    # root, at a path their unprivileged caller chose.)
    if not isinstance(value, str):
        raise ConfigError(f"{config_file}: run_dir must be a string")
    if not value.startswith("/"):
        raise ConfigError(f"{config_file}: run_dir must be an absolute path")
    return value


def state_dir(run_dir: str) -> str:
    return os.environ.get("LXCONE_MONITOR_STATE_DIR") or os.path.join(run_dir, ".monitor")


def read_config(path: str) -> dict:
    """The top-level keys of the TOML file at ``path``; {} if it does not exist.

    The shipped file's simple form (``key = "string" | true | false | number`` lines and
    comments) is read by :func:`scan_toml`; anything else by tomllib, whose import alone costs
    ~11 ms per probe run (measured). Raises ConfigError for a file that cannot be read, is not
    UTF-8 or is not valid TOML.
    """
    try:
        # O_NONBLOCK: a FIFO put there must not hang the probe (it is refused below).
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)
    except FileNotFoundError:
        return {}
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise ConfigError(f"{path}: not a regular file")
        data = os.read(fd, MAX_CONFIG_BYTES + 1)  # a regular file: one read gets it all
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    finally:
        os.close(fd)
    values = scan_toml(data)
    if values is not None:
        return values
    import tomllib  # only for files the scan cannot read surely

    try:
        return tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(f"{path}: {e}") from None


_BARE_KEY = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_-")
# What TOML forbids in comments and strings: the ASCII controls but tab (and newline, a line
# end here).
_CONTROLS = bytes(c for c in range(32) if c not in (9, 10)) + b"\x7f"


def scan_toml(data: bytes) -> dict | None:
    """The top-level keys of ``data`` when it is made only of blank lines, comments and
    ``bare_key = value`` lines whose value is a basic string without escapes, ``true``,
    ``false``, a decimal integer or a plain decimal float, each optionally followed by a
    comment; None for anything else (tables, arrays, escapes, dates, CRLF, duplicate keys...),
    which the caller then gives to tomllib.

    Whatever it accepts, tomllib reads the same way (a hypothesis test checks it). The same
    approach as the scan of run_dir in remotes/vmm/lxcone/lxcone-client, which cannot import
    this module: it runs without the lxcone package on its path.
    """
    if len(data.translate(None, _CONTROLS)) != len(data):
        return None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        return None
    values: dict = {}
    for raw in text.split("\n"):
        line = raw.strip(" \t")
        if not line or line[0] == "#":
            continue
        key, eq, value = line.partition("=")
        key = key.rstrip(" \t")
        value = value.lstrip(" \t")
        if not eq or not key or not _BARE_KEY.issuperset(key) or key in values:
            return None
        if value[:1] == '"':
            end = value.find('"', 1)
            rest = value[end + 1:].lstrip(" \t") if end > 0 else "?"
            if end < 0 or "\\" in value[1:end] or (rest and rest[0] != "#"):
                return None
            values[key] = value[1:end]
            continue
        v = _scalar(value.partition("#")[0].rstrip(" \t"))
        if v is None:
            return None
        values[key] = v
    return values


def _scalar(token: str) -> bool | int | float | None:
    """``true``, ``false``, a decimal integer or a plain float as TOML writes them; None for
    anything else (leading zeros, ``_`` separators, exponents, inf/nan: left to tomllib)."""
    if token in ("true", "false"):
        return token == "true"
    digits = token[1:] if token[:1] in ("+", "-") else token
    whole, dot, frac = digits.partition(".")
    if not (whole.isascii() and whole.isdigit()) or (whole[0] == "0" and len(whole) > 1):
        return None
    if not dot:
        return int(token)
    if not (frac.isascii() and frac.isdigit()):
        return None
    return float(token)


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
