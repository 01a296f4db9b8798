"""The few values the probes take from onemonitord's MONITOR_CONFIGURATION XML."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lxcone.monitor import config

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


def test_env_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LXCONE_RUN_DIR", raising=False)
    monkeypatch.delenv("LXCONE_MONITOR_STATE_DIR", raising=False)
    assert config.run_dir() == "/run/lxcone"
    assert config.state_dir("/run/lxcone") == "/run/lxcone/.monitor"
    monkeypatch.setenv("LXCONE_RUN_DIR", "/tmp/r")
    monkeypatch.setenv("LXCONE_MONITOR_STATE_DIR", "/tmp/s")
    assert config.run_dir() == "/tmp/r" and config.state_dir("/tmp/r") == "/tmp/s"


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
