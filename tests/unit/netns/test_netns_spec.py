"""lxcone.netns without the kernel: NicSpec/Address validation, NetnsError, open_netns checks.

Validation must reject hostile input with ValueError before any kernel call; hypothesis
generates the input. The kernel's own rule (net/core/dev.c: dev_valid_name) is re-stated here
independently so "accepted" always implies "the kernel would accept it too".
"""

from __future__ import annotations

import errno
import os
import pickle
import subprocess
import sys
from dataclasses import asdict

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lxcone.netns import Address, NetnsError, NicSpec, normalize_mac, open_netns, validate_ifname
from lxcone.netns.nsfd import netns_path

HOSTILE_NAMES = [
    "", ".", "..", "../x", "x/..", "a/b", "a b", " eth0", "eth0 ", "eth0\n", "\t", "a:b",
    "$(x)", "`x`", "a;b", "a|b", "a&b", "-x", ".x", "a@b", "eth0\x00", "é", "x" * 16,
    "one-123456789-10", "a" * 100,
]
NAME_CHARS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-"


def kernel_accepts(name: str) -> bool:
    """net/core/dev.c dev_valid_name(), re-stated (bytes, not characters, count)."""
    raw = name.encode()
    if not raw or len(raw) >= 16 or name in (".", ".."):
        return False
    return not any(c in "/:" or c.isspace() for c in name) and "\0" not in name


# -- interface names -----------------------------------------------------------------------------


@pytest.mark.parametrize("name", HOSTILE_NAMES)
def test_hostile_names_are_rejected_everywhere(name):
    with pytest.raises(ValueError):
        validate_ifname(name)
    with pytest.raises(ValueError):
        NicSpec(host_name=name)
    with pytest.raises(ValueError):
        NicSpec(host_name="one-1-0", guest_name=name)
    with pytest.raises(ValueError):
        NicSpec(host_name="one-1-0", bridge=name)


@given(st.text(max_size=40))
def test_accepted_names_are_kernel_valid(name):
    try:
        validate_ifname(name)
    except ValueError as exc:
        assert str(exc)  # always a sentence, never an empty message
        return
    assert kernel_accepts(name)
    assert name[0] not in ".-"


@given(st.text(alphabet=NAME_CHARS, min_size=1, max_size=15))
def test_plain_names_are_accepted(name):
    if name[0] in ".-":
        with pytest.raises(ValueError):
            validate_ifname(name)
    else:
        assert validate_ifname(name) == name


@given(st.text(alphabet=NAME_CHARS, min_size=15, max_size=64))
def test_names_of_16_or_more_characters_are_rejected(tail):
    with pytest.raises(ValueError, match="at most 15"):
        validate_ifname("a" + tail)


@given(st.one_of(st.integers(), st.none(), st.binary(), st.lists(st.text())))
def test_non_string_names_are_rejected(value):
    with pytest.raises(ValueError, match="must be a string"):
        validate_ifname(value)


def test_opennebula_target_names_are_fine():
    assert NicSpec("one-12-0").host_name == "one-12-0"
    assert NicSpec("one-99999-99").host_name == "one-99999-99"  # 12 characters


def test_guest_name_lo_and_bridge_equal_to_host_name_are_rejected():
    with pytest.raises(ValueError, match="loopback"):
        NicSpec("one-1-0", guest_name="lo")
    with pytest.raises(ValueError, match="both"):
        NicSpec("one-1-0", bridge="one-1-0")


# -- MAC -----------------------------------------------------------------------------------------


@given(st.binary(min_size=6, max_size=6), st.sampled_from([":", "-"]), st.booleans())
def test_mac_accepted_iff_unicast_and_nonzero(raw, sep, upper):
    text = sep.join(f"{b:02x}" for b in raw)
    text = text.upper() if upper else text
    if raw[0] & 1 or not any(raw):
        with pytest.raises(ValueError):
            normalize_mac(text)
    else:
        assert normalize_mac(text) == ":".join(f"{b:02x}" for b in raw)
        assert NicSpec("one-1-0", mac=text).mac == ":".join(f"{b:02x}" for b in raw)


@pytest.mark.parametrize("mac", [
    "", "02:00:00:00:00", "02:00:00:00:00:00:00", "02-00:00:00:00:01", "0200.0000.0001",
    "02:00:00:00:00:0g", "ff:ff:ff:ff:ff:ff", "01:00:5e:00:00:01", "00:00:00:00:00:00",
    " 02:00:00:00:00:01", "02:00:00:00:00:01\n", 0x020000000001,
])
def test_bad_macs_are_rejected(mac):
    with pytest.raises(ValueError):
        NicSpec("one-1-0", mac=mac)


# -- MTU -----------------------------------------------------------------------------------------


@given(st.integers(min_value=-(2**40), max_value=2**40))
def test_mtu_range(mtu):
    if 68 <= mtu <= 65535:
        assert NicSpec("one-1-0", mtu=mtu).mtu == mtu
    else:
        with pytest.raises(ValueError, match=r"68\.\.65535"):
            NicSpec("one-1-0", mtu=mtu)


@pytest.mark.parametrize("mtu", [True, False, 1500.0, "1500"])
def test_mtu_must_be_an_int(mtu):
    with pytest.raises(ValueError):
        NicSpec("one-1-0", mtu=mtu)


# -- addresses and gateways ----------------------------------------------------------------------


@given(st.ip_addresses(), st.integers(min_value=-5, max_value=140))
def test_address_validation_matches_ipaddress(ip, prefixlen):
    ok = (not ip.is_unspecified and not ip.is_multicast
          and 1 <= prefixlen <= ip.max_prefixlen)
    if ok:
        a = Address(str(ip), prefixlen)
        assert a.address == ip.compressed
        assert a.version == ip.version
        assert Address.parse(str(a)) == a
    else:
        with pytest.raises(ValueError):
            Address(str(ip), prefixlen)


@pytest.mark.parametrize("text", [
    "10.0.0.1", "10.0.0.1/", "/24", "10.0.0.1/x", "10.0.0.1/24/1", "10.0.0.256/24",
    "010.0.0.1/24", "fe80::1%eth0/64", "host/24", "10.0.0.1/ 24",
])
def test_bad_address_strings_are_rejected(text):
    with pytest.raises(ValueError):
        Address.parse(text)


def test_address_is_normalised():
    assert Address("FD00:0:0::0002", 64).address == "fd00::2"


def test_addresses_list_becomes_tuple_and_accepts_strings():
    nic = NicSpec("one-1-0", addresses=["10.0.0.2/24", Address("fd00::2", 64)])
    assert nic.addresses == (Address("10.0.0.2", 24), Address("fd00::2", 64))
    assert hash(nic) == hash(NicSpec("one-1-0", addresses=nic.addresses))


@pytest.mark.parametrize("addresses", [
    "10.0.0.2/24", Address("10.0.0.2", 24), [("10.0.0.2", 24)], [None],
    ["10.0.0.2/24", "10.0.0.2/16"],
])
def test_bad_address_collections_are_rejected(addresses):
    with pytest.raises(ValueError):
        NicSpec("one-1-0", addresses=addresses)


def test_gateways_must_match_their_family_and_not_be_own_address():
    assert NicSpec("one-1-0", gateway="10.0.0.1", gateway6="fd00::1").gateway6 == "fd00::1"
    with pytest.raises(ValueError, match="use gateway6"):
        NicSpec("one-1-0", gateway="fd00::1")
    with pytest.raises(ValueError, match="use gateway"):
        NicSpec("one-1-0", gateway6="10.0.0.1")
    with pytest.raises(ValueError, match="own addresses"):
        NicSpec("one-1-0", addresses=["10.0.0.2/24"], gateway="10.0.0.2")
    for bad in ("0.0.0.0", "224.0.0.1", "10.0.0.1/24", "x"):
        with pytest.raises(ValueError):
            NicSpec("one-1-0", gateway=bad)


@given(st.ip_addresses(v=4))
def test_any_unicast_ipv4_gateway_is_accepted(ip):
    if ip.is_unspecified or ip.is_multicast:
        return
    assert NicSpec("one-1-0", gateway=str(ip)).gateway == str(ip)


def test_asdict_round_trip_as_the_runtime_stores_it():
    nic = NicSpec("one-12-0", "eth1", "02:00:0a:00:00:02", 1400, "br0",
                  (Address("10.0.0.2", 24), Address("fd00::2", 64)), "10.0.0.1", "fd00::1")
    d = asdict(nic)
    d["addresses"] = tuple(Address(**a) for a in d["addresses"])
    assert NicSpec(**d) == nic


# -- NetnsError ----------------------------------------------------------------------------------


def test_netns_error_message_errno_and_pickling():
    e = NetnsError(errno.EEXIST, "link add", "one-12-0", "veth peer eth0")
    assert str(e) == "[Errno 17] File exists: link add one-12-0 (veth peer eth0)"
    assert isinstance(e, OSError)
    assert (e.errno, e.strerror, e.operation, e.ifname, e.detail) == (
        errno.EEXIST, os.strerror(errno.EEXIST), "link add", "one-12-0", "veth peer eth0")
    copy = pickle.loads(pickle.dumps(e))
    assert (type(copy), str(copy), copy.errno) == (NetnsError, str(e), errno.EEXIST)
    assert str(NetnsError(errno.ENOENT, "open netns /x")) == (
        "[Errno 2] No such file or directory: open netns /x")


# -- open_netns without privileges ---------------------------------------------------------------


@pytest.mark.parametrize("target", [True, False, 0, -1, "", ".", "..", 1.5, None, b"/x"])
def test_open_netns_rejects_malformed_targets(target):
    with pytest.raises(ValueError):
        open_netns(target)


def test_netns_path_forms():
    assert netns_path(42) == "/proc/42/ns/net"
    assert netns_path("lxt-1") == "/run/netns/lxt-1"
    assert netns_path("/run/netns/lxt-1") == "/run/netns/lxt-1"


def test_open_netns_of_own_process_and_wrong_files(tmp_path):
    fd = open_netns(os.getpid())
    try:
        assert os.fstat(fd).st_ino == os.stat("/proc/self/ns/net").st_ino
        assert not os.get_inheritable(fd)
    finally:
        os.close(fd)
    plain = tmp_path / "plain"
    plain.write_text("")
    for path, code in ((str(plain), errno.EINVAL), ("/proc/self/ns/uts", errno.EINVAL),
                       (str(tmp_path / "missing"), errno.ENOENT)):
        before = set(os.listdir("/proc/self/fd"))
        with pytest.raises(NetnsError) as info:
            open_netns(path)
        assert info.value.errno == code
        assert set(os.listdir("/proc/self/fd")) == before  # no fd leaked on the error path


def test_pid_that_does_not_exist():
    with pytest.raises(NetnsError) as info:
        open_netns(2**22 + 1)  # above pid_max's hard limit (PID_MAX_LIMIT = 4194304)
    assert info.value.errno == errno.ENOENT


# -- import cost ---------------------------------------------------------------------------------


def test_spec_import_does_not_load_pyroute2():
    code = (
        "import sys\n"
        "from lxcone.netns import NicSpec, Address, NetnsError, open_netns\n"
        "assert 'pyroute2' not in sys.modules, 'pyroute2 loaded eagerly'\n"
        "from lxcone.netns import add_nic\n"
        "assert 'pyroute2' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)

