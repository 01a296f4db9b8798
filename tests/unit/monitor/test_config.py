"""The few values the probes take from onemonitord's MONITOR_CONFIGURATION XML, and the run dir
they take from the driver's lxcone.toml."""

from __future__ import annotations

import os
import subprocess
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lxcone.monitor import config
from lxcone.testing.helpers import load_python_client

ROOT = Path(__file__).resolve().parents[3]
SAMPLE = ROOT / "remotes" / "etc" / "vmm" / "lxcone" / "lxcone.toml"

# What one_im_exec.rb writes to the probes' stdin (monitord.conf as XML, values as CDATA,
# plus the HOST_ID element it appends), trimmed.
MONITORD_XML = """<MONITOR_CONFIGURATION><DATASTORE_LOCATION><![CDATA[/var/lib/one//datastores]]>\
</DATASTORE_LOCATION><NETWORK><ADDRESS><![CDATA[0.0.0.0]]></ADDRESS><MONITOR_ADDRESS>\
<![CDATA[auto]]></MONITOR_ADDRESS><PORT><![CDATA[4124]]></PORT><PUBKEY><![CDATA[]]></PUBKEY>\
</NETWORK><PROBES_PERIOD><BEACON_HOST><![CDATA[30]]></BEACON_HOST><MONITOR_HOST><![CDATA[120]]>\
</MONITOR_HOST><MONITOR_VM><![CDATA[30]]></MONITOR_VM><STATE_VM><![CDATA[5]]></STATE_VM>\
<SYNC_STATE_VM><![CDATA[240]]></SYNC_STATE_VM><SYSTEM_HOST><![CDATA[600]]></SYSTEM_HOST>\
</PROBES_PERIOD><HOST_ID>3</HOST_ID></MONITOR_CONFIGURATION>"""


def test_values_from_monitords_xml() -> None:
    assert config.datastore_location(MONITORD_XML) == "/var/lib/one//datastores"
    assert config.sync_state_vm(MONITORD_XML) == 240
    assert config.xml_text(MONITORD_XML, "HOST_ID") == "3"
    assert config.xml_text(MONITORD_XML, "NETWORK", "PORT") == "4124"
    assert config.xml_text(MONITORD_XML, "NETWORK", "PUBKEY") == ""


@pytest.mark.parametrize("xml", ["", "garbage", "<MONITOR_CONFIGURATION/>",
                                 "<PROBES_PERIOD><SYNC_STATE_VM>soon</SYNC_STATE_VM>",
                                 "<SYNC_STATE_VM>5</SYNC_STATE_VM>"])
def test_defaults_when_absent_or_bad(xml: str) -> None:
    assert config.datastore_location(xml) == "/var/lib/one/datastores"
    assert config.sync_state_vm(xml) == 180


def test_entities_attributes_and_prefix_names() -> None:
    xml = ('<C><DATASTORE_LOCATION_X>no</DATASTORE_LOCATION_X><DATASTORE_LOCATION a="1">'
           " /srv/a&amp;b&#47;c&#x2F;d &lt;e&gt; </DATASTORE_LOCATION></C>")
    assert config.datastore_location(xml) == "/srv/a&b/c/d <e>"


def test_env_overrides(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LXCONE_RUN_DIR", raising=False)
    monkeypatch.delenv("LXCONE_MONITOR_STATE_DIR", raising=False)
    assert config.run_dir() == "/run/lxcone"
    assert config.state_dir("/run/lxcone") == "/run/lxcone/.monitor"
    cfg = tmp_path / "lxcone.toml"
    cfg.write_text('run_dir = "/srv/lxcone"\n')
    assert config.run_dir(str(cfg)) == "/srv/lxcone"
    monkeypatch.setenv("LXCONE_RUN_DIR", "/tmp/r")
    monkeypatch.setenv("LXCONE_MONITOR_STATE_DIR", "/tmp/s")
    assert config.run_dir() == "/tmp/r" and config.state_dir("/tmp/r") == "/tmp/s"
    # the environment wins over the file (the tests' way in), which is then not even read
    cfg.write_text("run_dir = [")
    assert config.run_dir(str(cfg)) == "/tmp/r"


text_values = st.text(alphabet=st.characters(blacklist_categories=("Cs", "Cc")), max_size=40)


@given(text_values, st.booleans())
def test_agrees_with_elementtree(value: str, cdata: bool) -> None:
    if cdata:
        if "]]>" in value:
            return
        body = f"<![CDATA[{value}]]>"
    else:
        body = value.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    xml = f"<MONITOR_CONFIGURATION><DATASTORE_LOCATION>{body}</DATASTORE_LOCATION>" \
          "</MONITOR_CONFIGURATION>"
    ref = (ET.fromstring(xml).findtext("DATASTORE_LOCATION") or "").strip()
    assert config.xml_text(xml, "DATASTORE_LOCATION") == ref


# -- run_dir from the driver's lxcone.toml ---------------------------------------------------


def test_the_config_is_found_in_the_remotes_tree_the_probe_runs_from() -> None:
    for probe in ("/var/tmp/one/im/lxcone-probes.d/vm/status/lxcone-vm-status",
                  "/var/tmp/one/im/lxcone-probes.d/host/monitor/lxcone-host-monitor",
                  "/var/tmp/one/im/lxcone-probes.d/lxcone-probe",
                  "/var/tmp/one/im/lxcone-probes.d/vm/../vm/status/lxcone-vm-status"):
        assert config.config_path(probe) == "/var/tmp/one/etc/vmm/lxcone/lxcone.toml"
    assert config.config_path(str(ROOT / "remotes/im/lxcone-probes.d/vm/status/x")) == \
        str(SAMPLE)
    # run by hand (python -m lxcone.monitor.probes vm-status) or from elsewhere: no config
    assert config.config_path("vm-status") is None
    assert config.config_path("/usr/local/bin/lxcone-vm-status") is None


def test_missing_file_or_key_means_the_default(monkeypatch: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    monkeypatch.delenv("LXCONE_RUN_DIR", raising=False)
    assert config.run_dir(str(tmp_path / "none.toml")) == "/run/lxcone"
    cfg = tmp_path / "lxcone.toml"
    cfg.write_text("agent = false\n")
    assert config.run_dir(str(cfg)) == "/run/lxcone"
    assert config.run_dir(str(SAMPLE)) == "/run/lxcone"


def test_files_the_scan_leaves_to_tomllib_still_give_their_run_dir(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("LXCONE_RUN_DIR", raising=False)
    cfg = tmp_path / "lxcone.toml"
    for text in ("run_dir = '/srv/lit'\n[other]\nrun_dir = '/not/this'\n",
                 'run_dir = "/srv/\\u00e9"\r\nagent = true\r\n',
                 '"run_dir" = "/srv/quoted"\n'):
        cfg.write_bytes(text.encode())
        assert config.scan_toml(text.encode()) is None
        assert config.run_dir(str(cfg)) == tomllib.loads(text)["run_dir"]


@pytest.mark.parametrize(("content", "words"), [
    (b"run_dir = ", "Invalid value"),
    (b'run_dir = "/a"\nrun_dir = "/b"\n', "Cannot overwrite a value"),
    (b"run_dir = 5\n", "run_dir must be a string"),
    (b'run_dir = ["/a"]\n', "run_dir must be a string"),
    (b"[run_dir]\n", "run_dir must be a string"),
    (b'run_dir = "lxcone"\n', "must be an absolute path"),
    (b'run_dir = ""\n', "must be an absolute path"),
    (b'run_dir = "/run/\xff"\n', "not UTF-8"),
    (b'run_dir = "/srv"\n' + b"#" * (config.MAX_CONFIG_BYTES + 1), "larger than"),
])
def test_a_bad_config_is_an_error_naming_the_file(monkeypatch: pytest.MonkeyPatch,
                                                  tmp_path: Path, content: bytes,
                                                  words: str) -> None:
    monkeypatch.delenv("LXCONE_RUN_DIR", raising=False)
    cfg = tmp_path / "lxcone.toml"
    cfg.write_bytes(content)
    with pytest.raises(config.ConfigError) as exc:
        config.run_dir(str(cfg))
    assert str(exc.value).startswith(f"{cfg}: ") and words in str(exc.value)
    assert "/a" not in str(exc.value) and "lxcone\"" not in str(exc.value)  # values not echoed


def test_an_unreadable_config_is_an_error(monkeypatch: pytest.MonkeyPatch,
                                          tmp_path: Path) -> None:
    monkeypatch.delenv("LXCONE_RUN_DIR", raising=False)
    (tmp_path / "dir.toml").mkdir()
    (tmp_path / "file").write_text("")
    os.mkfifo(tmp_path / "fifo.toml")  # must not block the probe
    cases = {"dir.toml": "not a regular file", "fifo.toml": "not a regular file",
             "file/lxcone.toml": "cannot read"}
    for name, words in cases.items():
        with pytest.raises(config.ConfigError, match=words):
            config.run_dir(str(tmp_path / name))


def test_the_shipped_sample_is_read_without_tomllib() -> None:
    """The probes run as python3 -I -S and import tomllib only for files the scan cannot read:
    the shipped sample (and any edit of its values) must be in the scanned form."""
    values = config.scan_toml(SAMPLE.read_bytes())
    assert values == tomllib.loads(SAMPLE.read_text())
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from lxcone.monitor import config; "
            "print(config.run_dir(sys.argv[2])); print('tomllib' in sys.modules)")
    out = subprocess.run(["/usr/bin/python3", "-I", "-S", "-c", code, str(ROOT), str(SAMPLE)],
                         capture_output=True, text=True, check=True, env={}).stdout
    assert out == "/run/lxcone\nFalse\n"


# Documents in the spirit of the shipped file (mostly lines the scan reads), with at most one
# odd line: the ways TOML differs from a naive scan, or random text.
_path = st.text(st.characters(codec="utf-8", exclude_characters='"\n\r\\'), max_size=20)
_value = st.one_of(
    _path.map(lambda p: f'"{p}"'),
    st.sampled_from(["true", "false", "0", "-0", "+7", "100000", "120.0", "-0.5", "+0.0",
                     '""', '"/run/lxcone"', '"SIG#X"', '"a\tb"', '"é/ü"']),
    st.integers(-(1 << 70), 1 << 70).map(str),
    st.floats(allow_nan=False, allow_infinity=False, width=32).map(lambda f: f"{f:.3f}"),
)
_key = st.one_of(st.sampled_from(["run_dir", "agent", "cgroup_parent"]),
                 st.text("abcXYZ019_-", min_size=1, max_size=6))
_line = st.one_of(
    st.builds(lambda k, v, sp, c: f"{k}{sp}={sp}{v}{c}", _key, _value,
              st.sampled_from(["", " ", "\t", "  "]),
              st.sampled_from(["", "", " # c", "# c", ' # "q"', " #\tx", " #é"])),
    st.sampled_from(["", "  ", "# comment", "#", "\t# indented"]),
)
_odd = st.one_of(
    st.sampled_from([
        "k = True", "k = 007", "k = 1_000", "k = 1.", "k = .5", "k = 1e3", "k = inf",
        "k = nan", "k = 'lit'", 'k = "a" "b"', 'k = """x"""', 'k = "\\n"', 'k = "\\u0041"',
        "k = [1, 2]", "k = {a = 1}", "k = 1979-05-27", 'k = "x', "k = ", "k = 0x1f", "k = - 1",
        "k = 1 2", 'k = "a" junk', "[table]", "[[arr]]", "a.b = 1", "= 1", "run_dir",
        "x = 1 = 2", '\ufeffrun_dir = "/a"', "# \x7f", "# \x01", "k = 1\r", "  k = 1",
        'run_dir = "/dup"', "agent = false", '"run_dir" = "/q"', "run dir = 1", "é = 1"]),
    st.text(max_size=30),
)


@settings(max_examples=500)
@given(st.lists(_line, max_size=8), st.none() | st.tuples(st.integers(0, 8), _odd),
       st.booleans())
def test_the_scan_never_disagrees_with_tomllib(lines: list[str], odd, final_newline: bool) -> None:
    """Whatever the scan accepts, tomllib reads the same way (key for key, type for type);
    what it cannot read surely it leaves to tomllib (None)."""
    if odd is not None:
        lines.insert(odd[0], odd[1])
    text = "\n".join(lines) + ("\n" if final_newline else "")
    data = text.encode("utf-8", "surrogatepass")
    got = config.scan_toml(data)
    if got is None:
        return
    try:
        want = tomllib.loads(data.decode("utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        pytest.fail(f"the scan accepted invalid TOML {text!r}")
    assert got == want
    assert [type(v) for v in got.values()] == [type(v) for v in want.values()]


@settings(max_examples=200)
@given(st.lists(_line, max_size=6), st.none() | st.tuples(st.integers(0, 6), _odd))
def test_the_probes_and_the_agent_client_agree_on_run_dir(tmp_path_factory, lines, odd) -> None:
    """The agent client (remotes/vmm/lxcone/lxcone-client) has its own scan of run_dir: when
    both accept a file, they read the same run dir."""
    if odd is not None:
        lines.insert(odd[0], odd[1])
    text = "\n".join(lines) + "\n"
    path = tmp_path_factory.mktemp("cfg") / "lxcone.toml"
    path.write_bytes(text.encode("utf-8", "surrogatepass"))
    ours = config.scan_toml(path.read_bytes())
    theirs, _ = CLIENT_MOD.scan_config(str(path))
    if ours is not None and theirs is not None:
        assert ours.get("run_dir", "/run/lxcone") == theirs


CLIENT_MOD = load_python_client("lxcone_client_scan")
