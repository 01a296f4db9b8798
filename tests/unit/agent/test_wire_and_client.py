"""The agent's wire format and the thin client's config scan (pure, no root)."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import socket
import tomllib
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lxcone.agent import wire

CLIENT = Path(__file__).resolve().parents[3] / "remotes" / "vmm" / "lxcone" / "lxcone-client"


def load_client():
    loader = importlib.machinery.SourceFileLoader("lxcone_client", str(CLIENT))
    spec = importlib.util.spec_from_loader("lxcone_client", loader)
    mod = importlib.util.module_from_spec(spec)
    loader.exec_module(mod)
    return mod


client = load_client()


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


def test_the_shipped_sample_scans_to_its_defaults():
    sample = CLIENT.parents[2] / "etc" / "vmm" / "lxcone" / "lxcone.toml"
    assert client.scan_config(str(sample)) == ("/run/lxcone", True)
