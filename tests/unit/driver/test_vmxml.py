"""OpenNebula VM XML -> Vm: realistic documents parse, hostile ones are refused with a sentence."""

from __future__ import annotations

import base64
import contextlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as stz

from lxcone.driver.vmxml import VmXmlError, decode_stdin, hostname_for, parse_vm
from lxcone.runtime.spec import HOSTNAME_RE
from lxcone.testing.vmxml import action_data, as_local_stdin, disk, nic, vm_xml


def test_a_realistic_deploy_document_parses():
    vm = parse_vm(vm_xml(12, disks=[disk(0), disk(2, TYPE="fs", SIZE=100, TARGET="/data")],
                         nics=[nic(12, 0, MTU=1400, GATEWAY="192.168.150.1",
                                   DNS="1.1.1.1 2606:4700::1111")],
                         context={"ETH0_MASK": "255.255.255.0"}))
    assert (vm.vm_id, vm.deploy_id, vm.name) == (12, "one-12", "web-12")
    assert (vm.memory_mb, vm.cpu, vm.vcpu, vm.sys_ds_id) == (512, 0.5, 1, 0)
    assert [d.disk_id for d in vm.disks] == [0, 2]
    assert vm.disks[1].type == "fs" and vm.disks[1].mount_target == "/data"
    assert vm.disks[0].mount_target == "/media/0"
    n = vm.nics[0]
    assert (n.target, n.bridge, n.mac, n.mtu) == ("one-12-0", "br0", "02:00:c0:a8:96:64", 1400)
    assert n.dns == ("1.1.1.1", "2606:4700::1111")
    assert vm.context["ETH0_MASK"] == "255.255.255.0" and vm.context_disk_id == 1
    assert vm.unprivileged is None  # not said: the driver config decides
    assert vm.root_disk.disk_id == 0


def test_root_disk_follows_os_boot_and_skips_context_and_swap():
    vm = parse_vm(vm_xml(3, disks=[disk(0, TYPE="swap"), disk(1), disk(2)], boot="disk2",
                         context={"DISK_ID": 1}))
    assert vm.root_disk.disk_id == 2
    vm = parse_vm(vm_xml(3, disks=[disk(0, TYPE="swap"), disk(1), disk(2)],
                         context={"DISK_ID": 1}))
    assert vm.root_disk.disk_id == 2  # 0 is swap, 1 is the context disk


@pytest.mark.parametrize("wrap", [
    lambda x: x + b"\n",                    # ssh stream: heredoc adds a newline
    lambda x: x,                            # RemotesCommand: raw
    as_local_stdin,                         # -l local action: base64
    lambda x: action_data(x) + b"\n",       # VMM_DRIVER_ACTION_DATA around the VM
    lambda x: as_local_stdin(action_data(x)),
])
def test_every_transport_gives_the_same_vm(wrap):
    assert parse_vm(decode_stdin(wrap(vm_xml(7)))).vm_id == 7


def test_privileged_and_swap_come_from_the_user_template():
    vm = parse_vm(vm_xml(4, user={"LXC_UNPRIVILEGED": "no", "LXC_SWAP": 256}))
    assert vm.unprivileged is False and vm.swap_mb == 256


BOMB = b"""<?xml version="1.0"?><!DOCTYPE VM [<!ENTITY a "aaaaaaaaaa">
<!ENTITY b "&a;&a;&a;&a;&a;&a;&a;&a;&a;&a;">]><VM><ID>1</ID><NAME>&b;</NAME></VM>"""


@pytest.mark.parametrize(("xml", "words"), [
    (b"", "no VM XML"),
    (b"not xml at all", "neither XML nor base64"),
    (base64.b64encode(b"hello"), "does not decode to XML"),
    (b"<VM><ID>1</ID>", "malformed XML"),
    (BOMB, "DTD"),
    (b"<FOO/>", "no <VM> element"),
    (b"<VM><NAME>x</NAME><TEMPLATE/></VM>", "no ID"),
    (b"<VM><ID>1</ID></VM>", "no TEMPLATE"),
    (b"<VM><ID>abc</ID><TEMPLATE/></VM>", "ID 'abc' is not an integer"),
    (b"<VM><ID>99999999999</ID><TEMPLATE/></VM>", "out of range"),
])
def test_untrustworthy_documents_are_refused(xml, words):
    with pytest.raises(VmXmlError, match=words):
        parse_vm(decode_stdin(xml))


@pytest.mark.parametrize(("kw", "words"), [
    ({"memory": -5}, "MEMORY -5 is out of range"),
    ({"memory": "512MB"}, "MEMORY '512MB' is not an integer"),
    ({"memory": 10**30}, "not an integer"),
    ({"cpu": "nan"}, "CPU nan is out of range"),
    ({"cpu": "inf"}, "out of range"),
    ({"cpu": 0}, "CPU 0.0 is out of range"),
    ({"vcpu": 0}, "VCPU 0 is out of range"),
    ({"deploy_id": "one-13"}, "DEPLOY_ID 'one-13' is not one-12"),
    ({"deploy_id": "../../etc"}, "DEPLOY_ID"),
    ({"disks": [disk(0, TARGET="../../etc/passwd")]}, "TARGET"),
    ({"disks": [disk(0, TARGET="/a/../../etc")]}, "TARGET"),
    ({"disks": [disk(0, DRIVER="vmdk")]}, "DRIVER/FORMAT"),
    ({"disks": [disk(0, TYPE="NFS")]}, "TYPE 'NFS'"),
    ({"disks": [disk(0), disk(0)]}, "same DISK_ID"),
    ({"disks": [{"TYPE": "FILE"}]}, "no DISK_ID"),
    ({"nics": [nic(12, 0, TARGET="one-12-0; reboot")]}, "TARGET"),
    ({"nics": [nic(12, 0, BRIDGE="br0$(id)")]}, "BRIDGE"),
    ({"nics": [nic(12, 0, BRIDGE="a-bridge-name-longer")]}, "BRIDGE"),
    ({"nics": [nic(12, 0, MAC="02:00:zz:00:00:01")]}, "MAC"),
    ({"nics": [nic(12, 0, IP="300.1.1.1")]}, "IPv4"),
    ({"nics": [nic(12, 0, IP="fe80::1")]}, "IPv4"),
    ({"nics": [nic(12, 0, MTU=10)]}, "MTU"),
    ({"nics": [nic(12, 0), nic(12, 1, TARGET="one-12-0")]}, "same NIC_ID or TARGET"),
])
def test_bad_fields_are_named(kw, words):
    with pytest.raises(VmXmlError, match=words):
        parse_vm(vm_xml(12, **kw))


hostile = stz.text(alphabet=stz.characters(blacklist_categories=("Cs",)), max_size=80)


@pytest.mark.parametrize(("name", "host"), [
    ("0.{0", "0.0"),  # found by hypothesis: a label must not start with '-'
    ("web_01 (prod)", "web-01-prod"), ("..--..", "one-12"), ("a" * 70 + ".b", "a" * 63),
])
def test_hostname_from_vm_name(name, host):
    assert hostname_for(parse_vm(vm_xml(12, name=name))) == host


@settings(max_examples=300, deadline=None)
@given(field=stz.sampled_from(["memory", "cpu", "vcpu", "name"]), value=hostile)
def test_hostile_scalars_give_vmxmlerror_or_a_valid_vm(field, value):
    try:
        vm = parse_vm(vm_xml(12, **{field: value}))
    except VmXmlError:
        return
    assert vm.vm_id == 12
    assert HOSTNAME_RE.fullmatch(hostname_for(vm)), hostname_for(vm)


@settings(max_examples=300, deadline=None)
@given(target=hostile, bridge=hostile, mac=hostile, disk_target=hostile)
def test_hostile_nic_and_disk_fields_never_escape_validation(target, bridge, mac, disk_target):
    try:
        vm = parse_vm(vm_xml(12, nics=[nic(12, 0, TARGET=target, BRIDGE=bridge, MAC=mac)],
                             disks=[disk(0, TARGET=disk_target)]))
    except VmXmlError:
        return
    n = vm.nics[0]
    for name in (n.target, n.bridge):
        assert name is None or ("/" not in name and len(name) <= 15 and name not in (".", ".."))
    t = vm.disks[0].mount_target
    assert t.startswith("/") and ".." not in t.split("/")


@settings(max_examples=200, deadline=None)
@given(data=stz.binary(max_size=300))
def test_random_bytes_on_stdin_give_only_vmxmlerror(data):
    with contextlib.suppress(VmXmlError):
        parse_vm(decode_stdin(data))
