"""lxcone.netns against the real kernel: veths, bridges, addresses, routes, errors, cleanup.

Each test gets its own host-side netns (``host_netns``) and a container netns (``container``,
run once plain and once owned by a child user namespace). Assertions go through
``netns_oracle`` (``ip -json`` via ``nsenter --net``), never through lxcone or pyroute2.
"""

from __future__ import annotations

import errno
import os
import pickle
import statistics
import threading
import time

import pytest

from lxcone.netns import (
    Address,
    NetnsError,
    NicSpec,
    add_nic,
    delete_bridge,
    ensure_bridge,
    host_ipr,
    netns_ipr,
    nic_exists,
    open_netns,
    remove_nic,
    retire_nic,
    setup_loopback,
)

from . import netns_oracle as oracle

_SKIP = oracle.skip_reason()
pytestmark = [pytest.mark.root, pytest.mark.skipif(_SKIP is not None, reason=_SKIP or "")]

MAC = "02:00:0a:4d:00:02"


def nic0(**changes: object) -> NicSpec:
    spec: dict[str, object] = {
        "host_name": "one-12-0", "guest_name": "eth0", "mac": MAC, "mtu": 1400, "bridge": "br0",
        "addresses": (Address("10.77.0.2", 24),), "gateway": "10.77.0.1",
    }
    spec.update(changes)
    return NicSpec(**spec)  # type: ignore[arg-type]


def test_add_nic_creates_veth_on_bridge_with_guest_side_configured(host_netns, container):
    add_nic(nic0(), container.fd, host_netns)

    host = oracle.link(host_netns, "one-12-0")
    assert host is not None
    assert host["linkinfo"]["info_kind"] == "veth"
    assert host["master"] == "br0"
    assert host["mtu"] == 1400
    assert oracle.is_up(host)
    bridge = oracle.link(host_netns, "br0")
    assert bridge is not None and bridge["linkinfo"]["info_kind"] == "bridge"
    assert oracle.is_up(bridge)

    guest = oracle.link(container.netns, "eth0")
    assert guest is not None
    assert guest["linkinfo"]["info_kind"] == "veth"
    assert guest["address"] == MAC
    assert guest["mtu"] == 1400
    assert oracle.is_up(guest)
    assert oracle.addresses(container.netns, "eth0") == ["10.77.0.2/24"]
    (route,) = oracle.default_routes(container.netns)
    assert (route["gateway"], route["dev"]) == ("10.77.0.1", "eth0")
    assert oracle.is_up(oracle.link(container.netns, "lo"))
    # Nothing else appeared on either side (no temporary names, no stray peer on the host).
    assert set(oracle.links(host_netns)) == {"lo", "br0", "one-12-0"}
    assert set(oracle.links(container.netns)) == {"lo", "eth0"}


def test_container_pings_bridge_address_in_host_netns(host_netns, container):
    ensure_bridge("br0", host_netns)
    oracle.run(host_netns, "ip", "addr", "add", "10.77.0.1/24", "dev", "br0")
    add_nic(nic0(), container.fd, host_netns)

    assert oracle.ping(container.netns, "10.77.0.1")
    assert oracle.ping(host_netns, "10.77.0.2")


def test_add_nic_twice_is_idempotent_and_repairs_drift(host_netns, container):
    nic = nic0(addresses=(Address("10.77.0.2", 24), Address("fd00:77::2", 64)),
               gateway6="fd00:77::1")
    add_nic(nic, container.fd, host_netns)
    add_nic(nic, container.fd, host_netns)
    assert oracle.addresses(container.netns, "eth0") == ["10.77.0.2/24", "fd00:77::2/64"]
    assert len(oracle.default_routes(container.netns)) == 1
    assert len(oracle.default_routes(container.netns, "-6")) == 1

    # Someone fiddled with it: a re-run puts the spec back.
    oracle.run(host_netns, "ip", "link", "set", "one-12-0", "nomaster", "mtu", "1300")
    oracle.run(container.netns, "ip", "link", "set", "eth0", "down")
    oracle.run(container.netns, "ip", "link", "set", "eth0", "mtu", "1300",
               "address", "02:00:00:00:00:99")
    add_nic(nic, container.fd, host_netns)
    host = oracle.link(host_netns, "one-12-0")
    guest = oracle.link(container.netns, "eth0")
    assert (host["master"], host["mtu"], oracle.is_up(host)) == ("br0", 1400, True)
    assert (guest["address"], guest["mtu"], oracle.is_up(guest)) == (MAC, 1400, True)
    (route,) = oracle.default_routes(container.netns)  # came back with the link
    assert route["gateway"] == "10.77.0.1"


def test_remove_nic_twice_and_guest_side_goes_with_host_side(host_netns, container):
    add_nic(nic0(), container.fd, host_netns)
    assert nic_exists("one-12-0", host_netns)

    remove_nic("one-12-0", host_netns)
    remove_nic("one-12-0", host_netns)  # ENODEV: already done

    assert not nic_exists("one-12-0", host_netns)
    assert oracle.link(host_netns, "one-12-0") is None
    assert oracle.link(container.netns, "eth0") is None
    assert oracle.link(host_netns, "br0") is not None  # bridges outlive their ports


def test_retire_nic_frees_name_and_bridge_port_at_once_kernel_deletes_pair_with_netns(
        host_netns, second_container):
    c = second_container
    add_nic(nic0(), c.fd, host_netns)
    index = oracle.link(host_netns, "one-12-0")["ifindex"]

    retire_nic("one-12-0", host_netns)

    assert oracle.link(host_netns, "one-12-0") is None  # the name is free for the next deploy
    retired = oracle.link(host_netns, f"lxz{index:x}")
    assert retired is not None and "master" not in retired and not oracle.is_up(retired)
    retire_nic("one-12-0", host_netns)  # gone: nothing to do
    # The container dies: the kernel deletes the pair with its netns.
    os.close(c.fd)
    c.proc.kill()
    c.proc.wait(timeout=10)
    c.fd = os.open("/dev/null", os.O_RDONLY)  # for the fixture's teardown
    deadline = time.monotonic() + 10
    while oracle.link(host_netns, f"lxz{index:x}") is not None:
        assert time.monotonic() < deadline, "the retired veth outlived its container's netns"
        time.sleep(0.05)


def test_retire_nic_refuses_what_is_not_a_veth(host_netns):
    ensure_bridge("br0", host_netns)
    with pytest.raises(NetnsError) as ei:
        retire_nic("br0", host_netns)
    assert ei.value.errno == errno.EINVAL
    assert oracle.link(host_netns, "br0") is not None


def test_hot_add_second_nic_eth1_with_ipv6_default_route(host_netns, container):
    add_nic(nic0(), container.fd, host_netns)
    second = NicSpec("one-12-1", guest_name="eth1", bridge="br1", mtu=9000,
                     addresses=(Address("fd00:78::2", 64),), gateway6="fd00:78::1")
    add_nic(second, container.fd, host_netns)

    assert set(oracle.links(container.netns)) == {"lo", "eth0", "eth1"}
    assert oracle.link(host_netns, "one-12-1")["master"] == "br1"
    assert oracle.link(container.netns, "eth1")["mtu"] == 9000
    assert oracle.addresses(container.netns, "eth1") == ["fd00:78::2/64"]
    (route6,) = oracle.default_routes(container.netns, "-6")
    assert (route6["gateway"], route6["dev"]) == ("fd00:78::1", "eth1")
    # The first NIC is untouched.
    assert oracle.addresses(container.netns, "eth0") == ["10.77.0.2/24"]
    assert oracle.default_routes(container.netns)[0]["dev"] == "eth0"

    remove_nic("one-12-1", host_netns)
    assert set(oracle.links(container.netns)) == {"lo", "eth0"}


def test_later_nic_with_gateway_takes_over_default_route(host_netns, container):
    add_nic(nic0(), container.fd, host_netns)
    add_nic(NicSpec("one-12-1", guest_name="eth1", addresses=(Address("10.78.0.2", 24),),
                    gateway="10.78.0.1"), container.fd, host_netns)
    (route,) = oracle.default_routes(container.netns)
    assert (route["gateway"], route["dev"]) == ("10.78.0.1", "eth1")


def test_failure_after_create_removes_veth_and_new_bridge(host_netns, container):
    # The gateway is not reachable through the NIC: the kernel refuses the route after the veth
    # and the bridge exist, so both must be rolled back.
    bad = nic0(bridge="brfail", gateway="10.99.0.1")
    with pytest.raises(NetnsError) as info:
        add_nic(bad, container.fd, host_netns)
    assert info.value.errno == errno.ENETUNREACH
    assert info.value.operation == "route replace"
    assert set(oracle.links(host_netns)) == {"lo"}
    assert set(oracle.links(container.netns)) == {"lo"}


def test_failure_keeps_a_bridge_it_did_not_create(host_netns, container):
    ensure_bridge("br0", host_netns)
    with pytest.raises(NetnsError):
        add_nic(nic0(gateway="10.99.0.1"), container.fd, host_netns)
    assert set(oracle.links(host_netns)) == {"lo", "br0"}


def test_failure_on_reapply_keeps_the_existing_nic(host_netns, container):
    add_nic(nic0(), container.fd, host_netns)
    with pytest.raises(NetnsError):
        add_nic(nic0(gateway="10.99.0.1"), container.fd, host_netns)
    # This call did not create the veth, so it must not delete it.
    assert oracle.link(host_netns, "one-12-0") is not None
    assert oracle.link(container.netns, "eth0") is not None


def test_bridge_name_taken_by_a_non_bridge_fails_before_creating(host_netns, container):
    # (This kernel has no dummy driver; a veth is as much "not a bridge".)
    oracle.run(host_netns, "ip", "link", "add", "br0", "type", "veth", "peer", "name", "x0")
    with pytest.raises(NetnsError) as info:
        add_nic(nic0(), container.fd, host_netns)
    assert info.value.errno == errno.EEXIST
    assert "not a bridge" in str(info.value)
    assert set(oracle.links(host_netns)) == {"lo", "br0", "x0"}
    assert oracle.link(host_netns, "br0")["linkinfo"]["info_kind"] == "veth"
    assert set(oracle.links(container.netns)) == {"lo"}


def test_guest_name_taken_in_container_fails_atomically(host_netns, container):
    add_nic(nic0(), container.fd, host_netns)
    with pytest.raises(NetnsError) as info:
        add_nic(NicSpec("one-12-1", guest_name="eth0"), container.fd, host_netns)
    assert info.value.errno == errno.EEXIST
    assert str(info.value) == ("[Errno 17] File exists: link add one-12-1 (veth peer eth0: the "
                               "name is taken in the container netns)")
    assert oracle.link(host_netns, "one-12-1") is None
    assert set(oracle.links(container.netns)) == {"lo", "eth0"}


def test_existing_veth_with_peer_elsewhere_is_refused_and_kept(host_netns, container):
    oracle.run(host_netns, "ip", "link", "add", "one-12-0", "type", "veth", "peer", "name", "x0")
    with pytest.raises(NetnsError) as info:
        add_nic(nic0(), container.fd, host_netns)
    assert info.value.errno == errno.EEXIST
    assert "peer is not in this container" in str(info.value)
    assert {"one-12-0", "x0"} <= set(oracle.links(host_netns))
    assert set(oracle.links(container.netns)) == {"lo"}


def test_existing_non_veth_host_name_is_refused(host_netns, container):
    oracle.run(host_netns, "ip", "link", "add", "one-12-0", "type", "bridge")
    with pytest.raises(NetnsError, match="not a veth"):
        add_nic(nic0(), container.fd, host_netns)
    with pytest.raises(NetnsError) as info:
        remove_nic("one-12-0", host_netns)
    assert info.value.errno == errno.EINVAL
    assert oracle.link(host_netns, "one-12-0")["linkinfo"]["info_kind"] == "bridge"


def test_veth_to_a_second_container_is_refused(host_netns, container, second_container):
    add_nic(nic0(), container.fd, host_netns)
    with pytest.raises(NetnsError, match="peer is not in this container"):
        add_nic(nic0(), second_container.fd, host_netns)
    assert set(oracle.links(second_container.netns)) == {"lo"}


def test_ensure_bridge_and_delete_bridge_are_idempotent(host_netns):
    index = ensure_bridge("br0", host_netns, mtu=1450)
    assert ensure_bridge("br0", host_netns) == index
    entry = oracle.link(host_netns, "br0")
    assert (entry["ifindex"], entry["mtu"], oracle.is_up(entry)) == (index, 1450, True)
    oracle.run(host_netns, "ip", "link", "set", "br0", "down")
    ensure_bridge("br0", host_netns)
    assert oracle.is_up(oracle.link(host_netns, "br0"))

    delete_bridge("br0", host_netns)
    delete_bridge("br0", host_netns)
    assert oracle.link(host_netns, "br0") is None


def test_delete_bridge_refuses_a_non_bridge(host_netns):
    oracle.run(host_netns, "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1")
    with pytest.raises(NetnsError) as info:
        delete_bridge("d0", host_netns)
    assert info.value.errno == errno.EINVAL
    assert oracle.link(host_netns, "d0") is not None


def test_setup_loopback(container):
    assert not oracle.is_up(oracle.link(container.netns, "lo"))
    setup_loopback(container.fd)
    setup_loopback(container.fd)
    assert oracle.is_up(oracle.link(container.netns, "lo"))
    assert oracle.ping(container.netns, "127.0.0.1")


def test_host_netns_by_bare_name_and_missing_netns_is_not_created(host_netns):
    name = os.path.basename(host_netns)
    assert ensure_bridge("br0", name) == oracle.link(host_netns, "br0")["ifindex"]
    missing = f"{host_netns}-missing"
    with pytest.raises(NetnsError) as info:
        nic_exists("one-12-0", missing)
    assert info.value.errno == errno.ENOENT
    # pyroute2's IPRoute(netns=name) would have created it (flags=O_CREAT).
    assert not os.path.exists(missing)


def test_open_netns_by_pid_and_path(container, host_netns):
    for target in (container.pid, container.netns):
        fd = open_netns(target)
        try:
            assert os.fstat(fd).st_ino == os.stat(container.netns).st_ino
            assert os.get_inheritable(fd) is False
        finally:
            os.close(fd)
    fd = open_netns(host_netns)
    os.close(fd)
    with pytest.raises(NetnsError) as info:
        open_netns(f"/proc/{container.pid}/ns/uts")
    assert info.value.errno == errno.EINVAL


def test_ipr_helpers_raise_netns_error_not_netlink_error(host_netns, container):
    with host_ipr(host_netns) as ipr:
        assert [x.get("ifname") for x in ipr.get_links()] == ["lo"]
        with pytest.raises(NetnsError) as info:
            ipr.link("get", ifname="nope0")
        assert info.value.errno == errno.ENODEV
        assert "nope0" in str(info.value)
    with netns_ipr(container.fd) as ipr:
        assert [x.get("ifname") for x in ipr.get_links()] == ["lo"]
    # An fd that is not a namespace fails at setns() and leaves this thread where it was.
    own = os.readlink("/proc/thread-self/ns/net")
    with open("/proc/self/stat") as f, pytest.raises(NetnsError) as bad, netns_ipr(f.fileno()):
        pass
    assert bad.value.errno == errno.EINVAL
    assert os.readlink("/proc/thread-self/ns/net") == own
    # The errors survive pickling (a resident agent sends them to its clients).
    copy = pickle.loads(pickle.dumps(info.value))
    assert (type(copy), copy.errno, str(copy)) == (NetnsError, errno.ENODEV, str(info.value))


def test_concurrent_add_nic_from_threads_keeps_every_thread_in_its_netns(host_netns, container):
    # setns() moves only the calling thread: eight threads plugging NICs at once must each
    # end up back where they started, and all NICs must land on the right sides.
    ensure_bridge("br0", host_netns)
    own = os.readlink("/proc/thread-self/ns/net")
    errors: list[BaseException] = []
    stranded: list[str] = []

    def plug(i: int) -> None:
        try:
            add_nic(NicSpec(f"one-7-{i}", guest_name=f"eth{i}", bridge="br0",
                            addresses=(Address(f"10.70.{i}.2", 24),)), container.fd, host_netns)
            if os.readlink("/proc/thread-self/ns/net") != own:
                stranded.append(f"thread {i}")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=plug, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors and not stranded
    assert os.readlink("/proc/thread-self/ns/net") == own
    assert {f"eth{i}" for i in range(8)} <= set(oracle.links(container.netns))
    assert sum(1 for x in oracle.links(host_netns).values() if x.get("master") == "br0") == 8


def test_timings_are_printed(host_netns, container, capsys):
    """Median of 20 add_nic/remove_nic and IPRoute-in-netns creations; printed, never asserted."""
    def median_ms(fn, n: int = 20) -> float:
        samples = []
        for _ in range(n):
            t = time.perf_counter()
            fn()
            samples.append(time.perf_counter() - t)
        return statistics.median(samples) * 1000

    ensure_bridge("br0", host_netns)
    nic = nic0()
    adds, removes = [], []
    for _ in range(20):
        t = time.perf_counter()
        add_nic(nic, container.fd, host_netns)
        adds.append(time.perf_counter() - t)
        t = time.perf_counter()
        remove_nic("one-12-0", host_netns)
        removes.append(time.perf_counter() - t)

    def enter_container() -> None:
        with netns_ipr(container.fd):
            pass

    def enter_host() -> None:
        with host_ipr(host_netns):
            pass

    ipr_ct = median_ms(enter_container)
    ipr_host = median_ms(enter_host)
    with capsys.disabled():
        print(f"\n[netns timings, {'userns' if container.userns else 'netns'}] median of 20: "
              f"add_nic {statistics.median(adds) * 1000:.2f} ms, "
              f"remove_nic {statistics.median(removes) * 1000:.2f} ms, "
              f"IPRoute in container netns (fd) {ipr_ct:.3f} ms, "
              f"IPRoute in host netns (path) {ipr_host:.3f} ms")
