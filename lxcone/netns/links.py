"""Veth pairs, bridges and container-side configuration over pyroute2 (netlink, no ``ip``).

This is the only module that imports pyroute2 (~130 ms), and ``lxcone.netns`` loads it only when
one of its functions is first used. Each public call opens one ``IPRoute`` per namespace it
touches, uses it for every request of that call, and closes it. Every ``NetlinkError`` becomes
a ``NetnsError`` here.

Idempotence follows pyroute2's ``ensure()`` rules by errno: create tolerates EEXIST (then
re-applies the settings), delete tolerates ENODEV/ENOENT. No polling is needed between steps:
each RTNL request is acknowledged only after the change is done under the RTNL lock, and every
step here talks to one namespace through one socket.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import os
import socket
import types
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from pyroute2 import IPRoute, NetlinkError

from lxcone.netns.errors import NetnsError
from lxcone.netns.nsfd import in_netns, open_netns
from lxcone.netns.spec import MTU_MAX, MTU_MIN, NicSpec, validate_ifname

_GONE = (errno.ENODEV, errno.ENOENT)
IFF_UP = 0x1  # linux/if.h
LOOPBACK_IFINDEX = 1  # include/net/net_namespace.h
# RTM_GETNSID answers NETNSA_NSID_NOT_ASSIGNED (-1) when the netns has no id here; pyroute2
# decodes the s32 as an unsigned value.
_NSID_NOT_ASSIGNED = (None, -1, 0xFFFFFFFF)

Msg = Any  # a pyroute2 ifinfmsg; pyroute2 ships no type information


def _convert(exc: NetlinkError | OSError, operation: str, ifname: str | None,
             detail: str | None = None) -> NetnsError:
    if isinstance(exc, NetlinkError):
        code = exc.code
        # With ext_ack on, args[1] is the kernel's own explanation when it gave one
        # ("ipv4: Address already assigned"); otherwise it is just strerror.
        said = exc.args[1] if len(exc.args) > 1 else None
    else:
        code, said = exc.errno or errno.EIO, exc.strerror
    if said and said != os.strerror(code):
        detail = f"{detail}; kernel: {said}" if detail else f"kernel: {said}"
    return NetnsError(code, operation, ifname, detail)


def _nl(operation: str, subject: str | None, call: Callable[..., Any], /, *args: Any,
        detail: str | None = None, tolerate: tuple[int, ...] = (), **kwargs: Any) -> Any:
    """Run one pyroute2 request; return None on a tolerated errno, else raise NetnsError.

    The first three are positional-only so ``kwargs`` can carry pyroute2's own ``ifname``.
    """
    try:
        return call(*args, **kwargs)
    except NetlinkError as exc:
        if exc.code in tolerate:
            return None
        raise _convert(exc, operation, subject, detail) from None
    except OSError as exc:  # ENOBUFS and socket errors come from pyroute2 as plain OSError
        if exc.errno in tolerate:
            return None
        raise _convert(exc, operation, subject, detail) from None


def _new_iproute() -> IPRoute:
    # groups=0: we never read broadcasts; subscribing would queue every RTNL event of a busy
    # host in this socket. ext_ack=True: the kernel then says *why* a request failed.
    try:
        return IPRoute(groups=0, ext_ack=True)
    except NetlinkError as exc:  # pragma: no cover - socket setup does not send requests
        raise _convert(exc, "open netlink socket", None) from None
    except OSError as exc:
        raise _convert(exc, "open netlink socket", None) from None


def _open_ipr(fd: int | None) -> IPRoute:
    """An IPRoute bound to the netns on ``fd`` (None: the calling thread's own)."""
    if fd is None:
        return _new_iproute()
    # IPRoute.__init__ creates its socket synchronously (setup_endpoint), so leaving the
    # namespace as soon as the constructor returns is safe. pyroute2's own IPRoute(netns=...)
    # forks a helper process per socket (~7 ms) and *creates* a missing named netns
    # (flags=O_CREAT), so we do not use it.
    with in_netns(fd):
        return _new_iproute()


@contextmanager
def _closing(ipr: IPRoute, where: str) -> Iterator[IPRoute]:
    try:
        yield ipr
    except NetlinkError as exc:  # safety net: the steps below convert with more context
        raise _convert(exc, "netlink request", None, f"in {where}") from None
    finally:
        ipr.close()


def _ipr(fd: int, where: str) -> contextlib.AbstractContextManager[IPRoute]:
    """A raw IPRoute in the netns open on ``fd`` (the caller keeps the fd), closed after."""
    return _closing(_open_ipr(fd), where)


def _host(host_netns: str | None) -> contextlib.AbstractContextManager[IPRoute]:
    """A raw IPRoute in the host-side netns, closed after; never creates the namespace."""
    if host_netns is None:
        return _closing(_open_ipr(None), "the caller's netns")
    fd = open_netns(host_netns)
    try:
        ipr = _open_ipr(fd)
    finally:
        os.close(fd)  # the socket pins the namespace; the fd has done its job
    return _closing(ipr, f"host netns {host_netns}")


class NetlinkProxy:
    """An ``IPRoute`` stand-in whose requests raise ``NetnsError`` instead of ``NetlinkError``.

    Every pyroute2 method is available under its usual name (``link``, ``addr``, ``route``,
    ``get_links``...); only the exception type differs, so callers never see pyroute2's.
    """

    def __init__(self, ipr: IPRoute, where: str) -> None:
        self._ipr = ipr
        self._where = where

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._ipr, name)
        if not callable(attr):
            return attr
        where = self._where

        @functools.wraps(attr)
        def call(*args: Any, **kwargs: Any) -> Any:
            operation = f"{name} {args[0]}" if args and isinstance(args[0], str) else name
            subject = kwargs.get("ifname") or (
                f"index {kwargs['index']}" if "index" in kwargs else None)
            try:
                result = attr(*args, **kwargs)
            except (NetlinkError, OSError) as exc:
                if isinstance(exc, NetnsError):
                    raise
                raise _convert(exc, operation, subject, f"in {where}") from None
            if isinstance(result, types.GeneratorType):  # a lazy dump fails while iterated
                return _guarded(result, operation, subject, where)
            return result

        return call


def _guarded(gen: Iterator[Any], operation: str, subject: str | None,
             where: str) -> Iterator[Any]:
    try:
        yield from gen
    except NetlinkError as exc:
        raise _convert(exc, operation, subject, f"in {where}") from None


@contextmanager
def host_ipr(host_netns: str | None = None) -> Iterator[NetlinkProxy]:
    """Yield an IPRoute (as ``NetlinkProxy``) in the host-side netns, then close it.

    ``host_netns`` is a path (``/run/netns/x``), a bare name under /run/netns, or ``None`` for
    the calling thread's own netns; it is never created. Requests raise ``NetnsError``. Raises
    ``NetnsError`` if the namespace cannot be opened or joined.
    """
    where = "the caller's netns" if host_netns is None else f"host netns {host_netns}"
    with _host(host_netns) as ipr:
        yield NetlinkProxy(ipr, where)


@contextmanager
def netns_ipr(netns_fd: int) -> Iterator[NetlinkProxy]:
    """Yield an IPRoute (as ``NetlinkProxy``) in the netns open on ``netns_fd``, then close it.

    The fd stays open (it is the caller's). Requests raise ``NetnsError``; so does failing to
    join the namespace.
    """
    where = f"netns fd {netns_fd}"
    with _ipr(netns_fd, where) as ipr:
        yield NetlinkProxy(ipr, where)


# -- small steps, each on an already open IPRoute ----------------------------------------------


def _get_link(ipr: IPRoute, *, ifname: str | None = None, index: int | None = None) -> Msg:
    """The link's RTM_NEWLINK message, or None if there is no such link."""
    key = {"ifname": ifname} if index is None else {"index": index}
    found = _nl("link get", ifname or f"index {index}", ipr.link, "get", tolerate=_GONE, **key)
    return found[0] if found else None


def _kind(link: Msg) -> str | None:
    return link.get(("linkinfo", "kind"))


def _ensure_bridge(ipr: IPRoute, name: str, mtu: int | None) -> tuple[int, bool]:
    """(ifindex, created by this call) of bridge ``name``, created if missing, set up."""
    extra = {} if mtu is None else {"mtu": mtu}
    created = False
    # Look before creating: the bridge usually exists, and a get is one cheap request where
    # add-then-EEXIST-then-get is two.
    link = _get_link(ipr, ifname=name)
    if link is None:
        # EEXIST here means a concurrent add_nic created it first: that is fine, it is theirs.
        added = _nl("link add", name, ipr.link, "add", detail="bridge",
                    tolerate=(errno.EEXIST,), ifname=name, kind="bridge", state="up", **extra)
        created = added is not None
        link = _get_link(ipr, ifname=name)
        if link is None:  # deleted between our add and get (a concurrent delete_bridge)
            raise NetnsError(errno.ENODEV, "link get", name, "bridge vanished while being ensured")
    if _kind(link) != "bridge":
        raise NetnsError(errno.EEXIST, "ensure bridge", name,
                         f"exists and is a {_kind(link) or 'device without a kind'}, not a bridge")
    if not created and (not link["flags"] & IFF_UP
                        or (mtu is not None and link.get("mtu") != mtu)):
        _nl("link set", name, ipr.link, "set", index=link["index"], state="up", **extra)
    return link["index"], created


def _delete_if_unused_bridge(ipr: IPRoute, index: int) -> None:
    """Undo step: remove a bridge this call created, unless someone plugged a port into it."""
    ports = _nl("link dump", None, lambda: tuple(ipr.link("dump", master=index)))
    if not ports:
        _nl("link del", f"index {index}", ipr.link, "del", index=index, tolerate=_GONE)


def _peer_in_netns(host: IPRoute, link: Msg, netns_fd: int) -> bool:
    """Whether veth ``link``'s peer lives in the netns open on ``netns_fd``."""
    # IFLA_LINK_NETNSID is the peer's netns as an id local to the host netns; RTM_GETNSID with
    # the fd asks for the id of the container netns. Both absent/unassigned: not over there.
    peer_nsid = link.get("link_netnsid")
    info = _nl("get netnsid", None, host.get_netnsid, fd=netns_fd)
    nsid = info.get("nsid") if info else None
    return peer_nsid is not None and nsid not in _NSID_NOT_ASSIGNED and peer_nsid == nsid


def _create_veth(host: IPRoute, nic: NicSpec, netns_fd: int, master: int | None) -> bool:
    """One RTM_NEWLINK: host end (up, on the bridge) + the peer born in the container netns.
    False if a name was taken (EEXIST): the caller finds out which."""
    # The peer's IFLA_NET_NS_FD makes the kernel create it directly in the container netns
    # under its final name, so there is no create-move-rename window and no temporary name to
    # clean up. The peer's own ifinfomsg flags are not settable through pyroute2's peer dict,
    # so the peer is brought up from inside afterwards.
    peer: dict[str, Any] = {"ifname": nic.guest_name, "net_ns_fd": netns_fd}
    host_attrs: dict[str, Any] = {"state": "up"}
    if nic.mac is not None:
        peer["address"] = nic.mac
    if nic.mtu is not None:
        peer["mtu"] = host_attrs["mtu"] = nic.mtu
    if master is not None:
        host_attrs["master"] = master
    added = _nl("link add", nic.host_name, host.link, "add", detail=f"veth peer {nic.guest_name}",
                tolerate=(errno.EEXIST,), ifname=nic.host_name, kind="veth", peer=peer,
                **host_attrs)
    return added is not None


def _reapply_host(host: IPRoute, nic: NicSpec, link: Msg, master: int | None) -> None:
    changes: dict[str, Any] = {"state": "up"}
    if nic.mtu is not None and link.get("mtu") != nic.mtu:
        changes["mtu"] = nic.mtu
    # Without a bridge in the spec the host end is left where it is: an OpenNebula hook (OVS,
    # vxlan) may have plugged it somewhere we do not know about.
    if master is not None and link.get("master") != master:
        changes["master"] = master
    _nl("link set", nic.host_name, host.link, "set", index=link["index"], **changes)


def _configure_guest(ct: IPRoute, nic: NicSpec, index: int, fresh: bool) -> None:
    """Name, MAC, MTU, up; ``lo`` up; addresses; default routes. Each step is idempotent.

    ``fresh``: the peer was just born with the spec's name, MAC and MTU; skip checking them.
    """
    if not fresh:
        _reapply_guest_link(ct, nic, index)
    _set_lo_up(ct)
    # Addresses before "up" so IPv6 DAD starts with all of them in place.
    for addr in nic.addresses:
        _nl("addr add", nic.guest_name, ct.addr, "add", detail=str(addr),
            tolerate=(errno.EEXIST,), index=index, address=addr.address,
            prefixlen=addr.prefixlen)
    _nl("link set", nic.guest_name, ct.link, "set", index=index, state="up")
    # "replace", not "add": a re-run converges on the spec's gateway, and with several NICs the
    # last one plugged that has a gateway carries the default route (add would keep the first
    # one and answer EEXIST, silently ignoring the new spec). The route names the NIC (oif), so
    # an IPv6 link-local gateway works too. The link must be up first (else ENETDOWN).
    for gateway, family, any_addr in ((nic.gateway, socket.AF_INET, "0.0.0.0"),
                                      (nic.gateway6, socket.AF_INET6, "::")):
        if gateway is not None:
            _nl("route replace", nic.guest_name, ct.route, "replace",
                detail=f"default via {gateway}", family=family, dst=any_addr, dst_len=0,
                gateway=gateway, oif=index)


def _reapply_guest_link(ct: IPRoute, nic: NicSpec, index: int) -> None:
    link = _get_link(ct, index=index)
    if link is None:
        raise NetnsError(errno.ENODEV, "configure guest side", nic.guest_name,
                         f"peer of {nic.host_name} vanished from the container netns")
    changes: dict[str, Any] = {}
    if link.get("ifname") != nic.guest_name:
        changes["ifname"] = nic.guest_name
    if nic.mac is not None and link.get("address") != nic.mac:
        changes["address"] = nic.mac
    if nic.mtu is not None and link.get("mtu") != nic.mtu:
        changes["mtu"] = nic.mtu
    if not changes:
        return
    try:
        ct.link("set", index=index, **changes)
    except NetlinkError as exc:
        # Older kernels refuse to rename a running device (EBUSY): retry while it is down;
        # it is brought up again right after.
        if exc.code != errno.EBUSY:
            raise _convert(exc, "link set", nic.guest_name,
                           f"guest side of {nic.host_name}") from None
        _nl("link set", nic.guest_name, ct.link, "set", index=index, state="down")
        _nl("link set", nic.guest_name, ct.link, "set", index=index, **changes)


def _set_lo_up(ct: IPRoute) -> None:
    # lo is ifindex 1 in every netns (LOOPBACK_IFINDEX, include/net/net_namespace.h), and
    # setting an up link up is a no-op: one set, no get (~0.2 ms of attribute parsing).
    _nl("link set", "lo", ct.link, "set", index=LOOPBACK_IFINDEX, state="up")


# -- public API --------------------------------------------------------------------------------


def add_nic(nic: NicSpec, container_netns_fd: int, host_netns: str | None = None) -> None:
    """Plug ``nic`` into the container whose netns is open on ``container_netns_fd``.

    Creates the veth pair in one request (guest end born inside the container netns under its
    final name, with MAC and MTU), puts the host end up on ``nic.bridge`` (created if missing),
    then inside the container: name, MAC, MTU, addresses, link up, ``lo`` up, default route(s).
    Works on a running container (hot plug).

    Idempotent: if ``nic.host_name`` already exists as a veth whose peer is in that container
    netns, the settings are re-applied (existing addresses/routes are fine). If it exists as
    anything else, raises ``NetnsError(EEXIST)`` and leaves it alone. On any failure after this
    call created something (the veth, the bridge), that is deleted before the error propagates.

    Raises ``NetnsError`` (errno, operation, interface) for kernel refusals, ``TypeError`` if
    ``nic`` is not a ``NicSpec``.
    """
    if not isinstance(nic, NicSpec):
        raise TypeError(f"nic must be a NicSpec, not {type(nic).__name__}")
    undo: list[Callable[[], None]] = []
    with _host(host_netns) as host, _ipr(container_netns_fd, "the container netns") as ct:
        try:
            master = None
            if nic.bridge is not None:
                master, created = _ensure_bridge(host, nic.bridge, None)
                if created:
                    undo.append(lambda: _delete_if_unused_bridge(host, master))
            # Create first: the name is usually free, and a failed add costs less than a get
            # (~0.2 ms of attribute parsing each). EEXIST leads to the idempotent path.
            created_veth = _create_veth(host, nic, container_netns_fd, master)
            if created_veth:
                undo.append(lambda: _nl("link del", nic.host_name, host.link, "del",
                                        ifname=nic.host_name, tolerate=_GONE))
            link = _get_link(host, ifname=nic.host_name)
            if link is None:
                if not created_veth:  # the host name is free: the guest name was taken
                    raise NetnsError(errno.EEXIST, "link add", nic.host_name,
                                     f"veth peer {nic.guest_name}: the name is taken in the "
                                     "container netns")
                # removed under our feet by a concurrent remove_nic
                raise NetnsError(errno.ENODEV, "link get", nic.host_name,
                                 "veth vanished right after creation")
            if not created_veth:
                if _kind(link) != "veth":
                    raise NetnsError(errno.EEXIST, "link add", nic.host_name,
                                     f"exists and is a {_kind(link) or 'device'}, not a veth")
                if not _peer_in_netns(host, link, container_netns_fd):
                    raise NetnsError(errno.EEXIST, "link add", nic.host_name,
                                     "exists as a veth whose peer is not in this container")
                _reapply_host(host, nic, link, master)
            # IFLA_LINK of a veth end is its peer's ifindex, in the peer's own netns.
            peer_index = link.get("link")
            if peer_index is None:  # pragma: no cover - the kernel always reports it for veth
                raise NetnsError(errno.ENODEV, "link get", nic.host_name, "veth without a peer")
            _configure_guest(ct, nic, peer_index, fresh=created_veth)
        except BaseException as exc:
            for step in reversed(undo):
                try:
                    step()
                except Exception as cleanup_exc:  # keep the original error, note the other
                    exc.add_note(f"cleanup after failed add_nic also failed: {cleanup_exc}")
            raise


def remove_nic(host_name: str, host_netns: str | None = None) -> None:
    """Delete the veth ``host_name`` from the host side; its container end goes with it.

    Idempotent: a missing interface (ENODEV/ENOENT) counts as done. Refuses (``NetnsError``
    EINVAL) to delete anything that is not a veth, so a wrong name cannot take down a bridge
    or a physical NIC. Raises ``ValueError`` for an invalid name.
    """
    validate_ifname(host_name, "host_name")
    with _host(host_netns) as host:
        link = _host_veth(host, host_name, "link del")
        if link is not None:
            _nl("link del", host_name, host.link, "del", index=link["index"], tolerate=_GONE)


def _host_veth(host: IPRoute, host_name: str, operation: str) -> Msg | None:
    """The host end ``host_name``, None if missing; NetnsError(EINVAL) if it is not a veth, so
    a wrong name cannot take down a bridge or a physical NIC."""
    link = _get_link(host, ifname=host_name)
    if link is not None and _kind(link) != "veth":
        raise NetnsError(errno.EINVAL, operation, host_name,
                         f"is a {_kind(link) or 'device'}, not a veth: refusing to touch it")
    return link


RETIRED_PREFIX = "lxz"


def retire_nic(host_name: str, host_netns: str | None = None) -> None:
    """Unplug the veth ``host_name`` of a container whose init is dead or dying, without
    waiting for the kernel to delete it.

    One RTM_SETLINK takes the host end off its bridge, down, and renames it to
    ``lxz<ifindex in hex>``, so the name and the bridge port are free on return (~1 ms). The
    pair itself is deleted by the kernel with the container's netns, once init and its monitor
    are gone. An RTM_DELLINK would wait two RCU grace periods in our thread (15-18 ms on these
    VMs). Falls back to ``remove_nic`` when the rename is refused (a kernel that will not rename
    a device that is up: then down first; a taken name). Missing: done. Not a veth: refused
    (``NetnsError`` EINVAL), as ``remove_nic``.
    """
    validate_ifname(host_name, "host_name")
    with _host(host_netns) as host:
        link = _host_veth(host, host_name, "link set")
        if link is None:
            return
        index = link["index"]
        try:
            host.link("set", index=index, master=0, state="down",
                      ifname=f"{RETIRED_PREFIX}{index:x}")
            return
        except NetlinkError as exc:
            if exc.code in _GONE:
                return
            if exc.code == errno.EBUSY:  # kernels before live renames: down first, then rename
                _nl("link set", host_name, host.link, "set", index=index, master=0,
                    state="down", tolerate=_GONE)
                if _nl("link set", host_name, host.link, "set", index=index,
                       ifname=f"{RETIRED_PREFIX}{index:x}", tolerate=(*_GONE, errno.EEXIST),
                       ) is not None:
                    return
        _nl("link del", host_name, host.link, "del", index=index, tolerate=_GONE)


def ensure_bridge(name: str, host_netns: str | None = None, mtu: int | None = None) -> int:
    """Create bridge ``name`` if missing (EEXIST is fine), bring it up, return its ifindex.

    With ``mtu`` the bridge MTU is pinned (else the kernel follows its ports). Raises
    ``NetnsError(EEXIST)`` if ``name`` exists but is not a bridge, ``ValueError`` for an invalid
    name or MTU.
    """
    validate_ifname(name, "bridge")
    if mtu is not None and (isinstance(mtu, bool) or not isinstance(mtu, int)
                            or not MTU_MIN <= mtu <= MTU_MAX):
        raise ValueError(f"mtu {mtu!r} is not an integer in {MTU_MIN}..{MTU_MAX}")
    with _host(host_netns) as host:
        index, _ = _ensure_bridge(host, name, mtu)
        return index


def delete_bridge(name: str, host_netns: str | None = None) -> None:
    """Delete bridge ``name``; missing is fine. Its ports (if any) are detached, not deleted.

    Raises ``NetnsError(EINVAL)`` if ``name`` is not a bridge, ``ValueError`` for a bad name.
    """
    validate_ifname(name, "bridge")
    with _host(host_netns) as host:
        link = _get_link(host, ifname=name)
        if link is None:
            return
        if _kind(link) != "bridge":
            raise NetnsError(errno.EINVAL, "link del", name,
                             f"is a {_kind(link) or 'device'}, not a bridge: refusing to delete")
        _nl("link del", name, host.link, "del", index=link["index"], tolerate=_GONE)


def setup_loopback(container_netns_fd: int) -> None:
    """Bring ``lo`` up in the netns open on ``container_netns_fd`` (no-op if already up).

    Raises ``NetnsError`` if the namespace cannot be joined or the kernel refuses.
    """
    with _ipr(container_netns_fd, "the container netns") as ct:
        _set_lo_up(ct)


def nic_exists(host_name: str, host_netns: str | None = None) -> bool:
    """Whether an interface named ``host_name`` exists on the host side (any kind).

    Raises ``ValueError`` for an invalid name, ``NetnsError`` if ``host_netns`` cannot be
    opened (it is never created).
    """
    validate_ifname(host_name, "host_name")
    with _host(host_netns) as host:
        return _get_link(host, ifname=host_name) is not None
