"""The agent's wire format and the thin clients' config scans, Python and C (pure, no root)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import tomllib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lxcone import native
from lxcone.agent import wire
from lxcone.testing.helpers import PYTHON_CLIENT, load_python_client

client = load_python_client()


def roundtrip_request(raw: bytes) -> list[bytes]:
    a, b = socket.socketpair()
    with a, b:
        a.sendall(raw)
        a.shutdown(socket.SHUT_WR)
        return wire.read_request(b)


@given(st.lists(st.binary(max_size=300), min_size=3, max_size=20))
def test_requests_round_trip(fields):
    assert roundtrip_request(wire.encode_fields(fields)) == fields


def test_the_client_and_the_agent_speak_the_same_format():
    assert client.MAGIC == wire.MAGIC
    a, b = socket.socketpair()
    with a, b:
        a.sendall(wire.encode_reply(7, b"one-3\n", b"ERROR: x\n"))
        code = int.from_bytes(client.recv_exact(b, 4), "big")
        out = client.recv_exact(b, int.from_bytes(client.recv_exact(b, 4), "big"))
        err = client.recv_exact(b, int.from_bytes(client.recv_exact(b, 4), "big"))
    assert (code, out, err) == (7, b"one-3\n", b"ERROR: x\n")


@pytest.mark.parametrize(("raw", "words"), [
    (b"XXXX" + bytes(4), "unknown request format"),
    (wire.MAGIC + (2).to_bytes(4, "big"), "3..64 fields"),
    (wire.MAGIC + (3).to_bytes(4, "big") + (wire.MAX_FIELD + 1).to_bytes(4, "big"), "limit"),
    (wire.MAGIC + (3).to_bytes(4, "big") + (10).to_bytes(4, "big") + b"abc", "closed after 3"),
])
def test_bad_requests_are_refused_with_a_reason(raw, words):
    with pytest.raises(wire.WireError, match=words):
        roundtrip_request(raw)


def test_an_unknown_format_is_its_own_error():
    with pytest.raises(wire.UnknownFormat):
        roundtrip_request(b"LXA0" + bytes(8))


# -- the client's scan of lxcone.toml -----------------------------------------------------------

DEFAULTS = {"run_dir": "/run/lxcone", "agent": True}

path_text = st.text(st.characters(codec="utf-8", exclude_characters='\\"\n\r'), max_size=30)
lines = st.one_of(
    path_text.map(lambda p: f'run_dir = "{p}"'),
    path_text.map(lambda p: f'run_dir="{p}"   # where'),
    st.sampled_from(["agent = true", "agent = false", "agent=false # off", "agent = 1",
                     "cgroup_parent = \"x\"", "# agent = false", "", "   ", "[table]",
                     'run_dir = "/a\\\\b"', "run_dir = '/lit'", 'run_dir = "/x" junk',
                     "shutdown_timeout_s = 5", 'stop_signal = "SIG#X"']),
)


@settings(max_examples=300)
@given(st.lists(lines, max_size=6))
def test_the_scan_never_disagrees_with_toml(tmp_path_factory, body):
    """Whatever the scan accepts, tomllib reads the same way; what it cannot read surely, it
    leaves to the in-process driver (None, False)."""
    text = "\n".join(body) + "\n"
    path = tmp_path_factory.mktemp("cfg") / "lxcone.toml"
    path.write_text(text)
    run_dir, agent = client.scan_config(str(path))
    if run_dir is None:
        assert agent is False
        return
    try:
        parsed = tomllib.loads(text)
    except tomllib.TOMLDecodeError:
        pytest.fail(f"the scan accepted invalid TOML {text!r}")
    if not isinstance(parsed.get("agent", True), bool):
        pytest.fail(f"the scan accepted a non-boolean agent in {text!r}")
    assert (run_dir, agent) == (parsed.get("run_dir", DEFAULTS["run_dir"]),
                                parsed.get("agent", DEFAULTS["agent"]))


def test_a_missing_config_means_the_defaults(tmp_path):
    assert client.scan_config(str(tmp_path / "none.toml")) == ("/run/lxcone", True)
    assert c_scan(tmp_path / "none.toml") == ("/run/lxcone", True)


def test_the_shipped_sample_scans_to_its_defaults():
    sample = PYTHON_CLIENT.parents[2] / "etc" / "vmm" / "lxcone" / "lxcone.toml"
    assert client.scan_config(str(sample)) == ("/run/lxcone", True)
    assert c_scan(sample) == ("/run/lxcone", True)


# -- the C client's scan (lxcone-client --scan-config PATH) --------------------------------------


def c_scan(path) -> tuple[str | None, bool]:
    """(run_dir, agent) as the C client reads them, or (None, False) when it is not sure."""
    assert os.access(native.CLIENT, os.X_OK), f"{native.CLIENT} is not built: pip install -e ."
    out = subprocess.run([native.CLIENT, "--scan-config", str(path)], capture_output=True,
                         timeout=10, check=True).stdout
    if out == b"?\n":
        return None, False
    agent, _, run_dir = out.decode().removesuffix("\n").partition("\t")
    assert agent in ("true", "false"), out
    return run_dir, agent == "true"


# What the C scan must refuse or read right besides the simple form above: spellings of a key
# that TOML reads as run_dir or agent, strings that span lines and hide `key = value` lines,
# escapes, whitespace and line breaks that are Python's but not TOML's, bytes that are not
# UTF-8 or are control characters, arrays and inline tables, empty values.
c_lines = st.one_of(
    lines.map(str.encode),
    path_text.map(lambda p: f'run_dir = "{p}"\r'.encode()),  # CRLF once joined
    st.sampled_from([
        b'"run_dir" = "/quoted"', b"'agent' = false", b"run_dir.x = 1", b"agent . x = 1",
        b"x = '''", b"'''", b"y = 1'''", b'x = """', b'"""', b'z = """a"""',
        b'run_dir = """/m"""', b"run_dir = '''/lit'''", b'run_dir = "/a\\u0062"',
        b'run_dir = "/e\\"q"', b"agent = true\xc2\xa0", b"\xc2\xa0agent = false",
        b"agent = false\x0c", b"# comment \x7f", b"# \xff", b'run_dir = "/\xc3\xa9t\xc3\xa9"',
        b'run_dir = "/\xed\xa0\x80"', b'run_dir = "/n\xc2\x85el"', b'run_dir = "/l\xe2\x80\xa8s"',
        b"agent = false\r", b"\r", b"x = [1, 2]", b"x = [", b"1,", b"]", b"x = { a = 1 }",
        b'x = ["a#b"]', b"= 5", b"agent =", b"x = 1 2", b"[[arr]]", b'run_dir = ""',
        b"\xef\xbb\xbfagent = false", b"agent = true#c", b"agent = false # \xe2\x80\xa8",
        b'x = "\t"', b"\tagent\t=\tfalse", b'run_dir = "/nul\x00"', b"AGENT = false",
        b"agent = False", b'run_dir = "/x" \r',
    ]),
)


SCALAR = re.compile(rb"([ \t]*([A-Za-z0-9_-]+)[ \t]*=[ \t]*)[A-Za-z0-9_+.:-]+([ \t]*(#.*)?\r?)")


def plain_scalars(data: bytes) -> bytes:
    """``data`` with the value of every ``key = <scalar>`` line but run_dir's and agent's made
    0. The C scan reads the structure and leaves the spelling of other scalars (``01``, ``x``)
    to the driver, which fails the action on a bad one whichever process runs it."""
    out = []
    for line in data.split(b"\n"):
        m = SCALAR.fullmatch(line)
        out.append(m[1] + b"0" + m[3] if m and m[2] not in (b"run_dir", b"agent") else line)
    return b"\n".join(out)


@settings(max_examples=300, deadline=None)
@given(st.lists(c_lines, max_size=6))
def test_the_c_scan_never_disagrees_with_toml(tmp_path_factory, body):
    """Whatever the C scan accepts is TOML (up to the spelling of other keys' scalars), and
    tomllib reads run_dir and agent from it as the scan does."""
    data = b"\n".join(body) + b"\n"
    path = tmp_path_factory.mktemp("cfg") / "lxcone.toml"
    path.write_bytes(data)
    run_dir, agent = c_scan(path)
    if run_dir is None:
        assert agent is False
        return
    try:
        parsed = tomllib.loads(plain_scalars(data).decode())
    except (UnicodeDecodeError, tomllib.TOMLDecodeError):
        pytest.fail(f"the C scan accepted invalid TOML {data!r}")
    assert (run_dir, agent) == (parsed.get("run_dir", DEFAULTS["run_dir"]),
                                parsed.get("agent", DEFAULTS["agent"])), data


@settings(max_examples=200, deadline=None)
@given(st.lists(lines, max_size=6))
def test_the_c_scan_reads_the_simple_form_as_the_python_scan(tmp_path_factory, body):
    """It is that scan's port: where the Python client is sure, the C client says the same
    (it may be sure where Python is not, e.g. of a U+2028 in a string, never the reverse)."""
    text = "\n".join(body) + "\n"
    path = tmp_path_factory.mktemp("cfg") / "lxcone.toml"
    path.write_text(text)
    py = client.scan_config(str(path))
    if py[0] is not None:
        assert c_scan(path) == py, text
