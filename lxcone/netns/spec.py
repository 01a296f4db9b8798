"""What a NIC should look like: ``NicSpec`` and ``Address``, validated when constructed.

Stdlib only, so the driver can parse and validate NICs without paying for ``import pyroute2``.
Every check raises ``ValueError`` with one sentence naming the field, before any kernel call.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

#: Linux IFNAMSIZ: 16 bytes including the terminating NUL, so names have at most 15 bytes.
IFNAMSIZ = 16
MTU_MIN = 68  # the IPv4 minimum (RFC 791); the kernel's veth min_mtu is the same
MTU_MAX = 65535  # veth max_mtu (ETH_MAX_MTU)

# Stricter than the kernel's dev_valid_name() (which only bans "/", ":", whitespace, "." and
# ".."): host-side names travel on to OpenNebula's network hooks, which are shell scripts, and
# show up in `ip` output where "@" is a separator. A leading "-" would read as an option there.
_IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
_MAC_RE = re.compile(r"[0-9a-f]{2}([:-])[0-9a-f]{2}(\1[0-9a-f]{2}){4}")

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address


def validate_ifname(name: object, what: str = "interface name") -> str:
    """Return ``name`` if it is a safe Linux interface name; raise ``ValueError`` otherwise.

    Allowed: 1 to 15 bytes of ASCII letters, digits, ``_``, ``.`` and ``-``, not starting with
    ``.`` or ``-`` (so never ``.``, ``..``, a path, or anything a shell would expand).
    """
    if not isinstance(name, str):
        raise ValueError(f"{what} must be a string, not {type(name).__name__}")
    if not name:
        raise ValueError(f"{what} is empty")
    if not _IFNAME_RE.fullmatch(name):
        raise ValueError(
            f"{what} {name!r} may only contain ASCII letters, digits, '_', '.' and '-', "
            "and may not start with '.' or '-'")
    if len(name) >= IFNAMSIZ:
        raise ValueError(
            f"{what} {name!r} is {len(name)} characters long; Linux allows at most "
            f"{IFNAMSIZ - 1} (IFNAMSIZ)")
    return name


def normalize_mac(mac: object, what: str = "mac") -> str:
    """Return ``mac`` as lower-case ``xx:xx:xx:xx:xx:xx``; raise ``ValueError`` if unusable.

    Accepts ``:`` or ``-`` separators in any case. Multicast (including broadcast) and all-zero
    addresses are refused because the kernel refuses them for a veth (EADDRNOTAVAIL).
    """
    if not isinstance(mac, str):
        raise ValueError(f"{what} must be a string, not {type(mac).__name__}")
    low = mac.lower()
    if not _MAC_RE.fullmatch(low):
        raise ValueError(f"{what} {mac!r} is not a MAC address like 02:00:0a:00:00:01")
    octets = [int(x, 16) for x in re.split("[:-]", low)]
    if octets[0] & 1:
        raise ValueError(f"{what} {mac!r} is a multicast address; a NIC needs a unicast one")
    if not any(octets):
        raise ValueError(f"{what} {mac!r} is all zeros")
    return ":".join(f"{o:02x}" for o in octets)


def _parse_ip(value: object, what: str) -> IPAddress:
    if not isinstance(value, str):
        raise ValueError(f"{what} must be a string, not {type(value).__name__}")
    try:
        ip = ipaddress.ip_address(value)
    except ValueError:
        raise ValueError(f"{what} {value!r} is not an IPv4 or IPv6 address") from None
    if isinstance(ip, ipaddress.IPv6Address) and ip.scope_id is not None:
        # The interface is implied by the NIC; a "%scope" would name another one.
        raise ValueError(f"{what} {value!r} carries a %scope; give the bare address")
    if ip.is_unspecified or ip.is_multicast:
        raise ValueError(f"{what} {value!r} is not a unicast address")
    return ip


@dataclass(frozen=True)
class Address:
    """One address on a NIC inside the container, IPv4 or IPv6 (``address`` is normalised)."""

    address: str
    prefixlen: int

    def __post_init__(self) -> None:
        ip = _parse_ip(self.address, "address")
        if isinstance(self.prefixlen, bool) or not isinstance(self.prefixlen, int):
            raise ValueError(f"prefixlen of {self.address} must be an integer")
        if not 1 <= self.prefixlen <= ip.max_prefixlen:
            raise ValueError(
                f"prefixlen {self.prefixlen} of {self.address} is outside "
                f"1..{ip.max_prefixlen}")
        # Normalised ("fd00:0::2" -> "fd00::2") so equality and the kernel's dump agree.
        object.__setattr__(self, "address", ip.compressed)

    @classmethod
    def parse(cls, text: str) -> Address:
        """Build from ``"10.0.0.2/24"`` or ``"fd00::2/64"``; raise ``ValueError`` if malformed."""
        addr, sep, plen = text.partition("/") if isinstance(text, str) else ("", "", "")
        if not sep or not plen.isdigit():
            raise ValueError(f"address {text!r} is not ADDRESS/PREFIXLEN")
        return cls(addr, int(plen))

    @property
    def version(self) -> int:
        """4 or 6."""
        return 6 if ":" in self.address else 4

    def __str__(self) -> str:
        return f"{self.address}/{self.prefixlen}"


@dataclass(frozen=True)
class NicSpec:
    """One container NIC: a veth pair, the host end on ``bridge``, the guest end configured.

    ``host_name`` is the host-side veth (OpenNebula's TARGET, ``one-<vmid>-<nicid>``);
    ``guest_name`` is the name inside the container; ``mac`` is the guest-side MAC; ``mtu`` is
    set on both ends; ``gateway``/``gateway6`` become the container's IPv4/IPv6 default routes via
    this NIC. ``addresses`` may be given as any iterable of ``Address`` or ``"addr/len"`` strings;
    it is stored as a tuple. Raises ``ValueError`` with one sentence on the first invalid field.
    """

    host_name: str
    guest_name: str = "eth0"
    mac: str | None = None
    mtu: int | None = None
    bridge: str | None = None
    addresses: tuple[Address, ...] = ()
    gateway: str | None = None
    gateway6: str | None = None

    def __post_init__(self) -> None:
        validate_ifname(self.host_name, "host_name")
        validate_ifname(self.guest_name, "guest_name")
        if self.guest_name == "lo":
            raise ValueError("guest_name 'lo' is the container's loopback device")
        if self.mac is not None:
            object.__setattr__(self, "mac", normalize_mac(self.mac))
        if self.mtu is not None and (
                isinstance(self.mtu, bool) or not isinstance(self.mtu, int)
                or not MTU_MIN <= self.mtu <= MTU_MAX):
            raise ValueError(f"mtu {self.mtu!r} is not an integer in {MTU_MIN}..{MTU_MAX}")
        if self.bridge is not None:
            validate_ifname(self.bridge, "bridge")
            if self.bridge == self.host_name:
                raise ValueError(f"bridge and host_name are both {self.bridge!r}")
        object.__setattr__(self, "addresses", _addresses(self.addresses))
        own = {a.address for a in self.addresses}
        for field, version in (("gateway", 4), ("gateway6", 6)):
            value = getattr(self, field)
            if value is None:
                continue
            gw = _parse_ip(value, field)
            if gw.version != version:
                other = "gateway6" if version == 4 else "gateway"
                raise ValueError(f"{field} {value!r} is not IPv{version}; use {other}")
            if gw.compressed in own:
                raise ValueError(f"{field} {value} is one of this NIC's own addresses")
            object.__setattr__(self, field, gw.compressed)


def _addresses(value: object) -> tuple[Address, ...]:
    if isinstance(value, (str, bytes, Address)) or not isinstance(value, Iterable):
        raise ValueError("addresses must be a list or tuple of Address")
    out: list[Address] = []
    seen: set[str] = set()
    for item in value:
        addr = Address.parse(item) if isinstance(item, str) else item
        if not isinstance(addr, Address):
            raise ValueError(f"addresses entry {item!r} is not an Address")
        if addr.address in seen:
            raise ValueError(f"address {addr.address} is listed twice")
        seen.add(addr.address)
        out.append(addr)
    return tuple(out)
