"""OpenNebula's <VM> XML -> a typed, validated ``Vm``.

Only this module reads OpenNebula's XML. It refuses what a driver must not trust: DTDs and
entities, absurd sizes, ids that are not numbers, names that could become paths. Field meanings
and units: shared/reference/opennebula-driver-protocol.md §4.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import re
import xml.etree.ElementTree as ET
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

MAX_XML_BYTES = 16 << 20  # a VM with hundreds of disks and NICs stays far below
MAX_ID = 2**31 - 1
MAX_MEMORY_MB = 2**40  # 1 EiB: anything above is a typo or an attack, not a VM
DEPLOY_ID_RE = re.compile(r"one-(\d{1,10})")
MAC_RE = re.compile(r"[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}")
IFNAME_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,14}")
DISK_TARGET_RE = re.compile(r"[a-z]{1,4}[a-z0-9]{0,8}")  # sda, vdb, hda, xvdz, nvme0n1-ish


class VmXmlError(ValueError):
    """The XML cannot be trusted or is missing what the action needs; one sentence says what."""


@dataclass(frozen=True)
class Disk:
    disk_id: int
    type: str                 # FILE, BLOCK, CDROM, RBD, fs (volatile), swap
    disk_type: str | None     # FILE, BLOCK, RBD (from the datastore)
    format: str               # raw | qcow2 (DRIVER/FORMAT), "raw" when unset
    target: str | None        # sda..., or an absolute mount point inside the container
    readonly: bool
    size_mb: int | None
    source: str | None        # image source: a path, pool/one-N (Ceph), an LV name
    tm_mad: str | None
    attach: bool = False      # DISK[ATTACH='YES']: the one being hot-(de)attached
    resize: bool = False      # DISK[RESIZE='YES']

    @property
    def mount_target(self) -> str:
        """Where the disk appears in the container: TARGET when absolute, else /media/<id>."""
        if self.target and self.target.startswith("/"):
            return self.target
        return f"/media/{self.disk_id}"


@dataclass(frozen=True)
class Nic:
    nic_id: int
    mac: str | None
    bridge: str | None
    target: str               # host-side interface name (one-<vmid>-<nicid> by default)
    vn_mad: str | None
    ip: str | None
    ip6: str | None
    mtu: int | None
    gateway: str | None
    dns: tuple[str, ...]
    attach: bool = False


@dataclass(frozen=True)
class Vm:
    vm_id: int
    name: str
    deploy_id: str            # one-<vm_id>: given, or derived on first deploy
    memory_mb: int | None
    cpu: float | None         # physical CPU share, 1.0 = one core
    vcpu: int | None
    boot: tuple[str, ...]     # OS/BOOT entries, e.g. ("disk0",)
    disks: tuple[Disk, ...]
    nics: tuple[Nic, ...]
    context: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    context_disk_id: int | None = None
    sys_ds_id: int | None = None
    unprivileged: bool | None = None  # USER_TEMPLATE/LXC_UNPRIVILEGED; None: the driver default
    swap_mb: int | None = None
    active_snapshot_id: int | None = None

    @property
    def root_disk(self) -> Disk | None:
        """The rootfs: the disk named first in OS/BOOT (diskN), else the first non-context,
        non-swap disk; None when the VM has none."""
        usable = [d for d in self.disks if d.type != "swap" and d.disk_id != self.context_disk_id]
        for entry in self.boot:
            m = re.fullmatch(r"disk(\d+)", entry.strip())
            if m:
                for d in usable:
                    if d.disk_id == int(m.group(1)):
                        return d
        return usable[0] if usable else None


def decode_stdin(data: bytes) -> bytes:
    """The XML, whatever the transport: raw over ssh (maybe with a trailing newline), base64
    for `-l` local actions (protocol doc addendum A.2)."""
    text = data.strip()
    if not text:
        raise VmXmlError("no VM XML on stdin")
    if text.startswith(b"<"):
        return text
    try:
        decoded = base64.b64decode(text, validate=True).strip()
    except (binascii.Error, ValueError):
        raise VmXmlError("stdin is neither XML nor base64-encoded XML") from None
    if not decoded.startswith(b"<"):
        raise VmXmlError("stdin is base64 but does not decode to XML")
    return decoded


def parse_root(xml: bytes, tag: str = "VM") -> ET.Element:
    """Parse with no DTD: OpenNebula never sends one, and entities are how XML bombs work."""
    if len(xml) > MAX_XML_BYTES:
        raise VmXmlError(f"XML is {len(xml)} bytes, more than the {MAX_XML_BYTES} accepted")
    if b"<!DOCTYPE" in xml or b"<!ENTITY" in xml:
        raise VmXmlError("XML with a DTD or entities is refused")
    try:
        root = ET.fromstring(xml)
    except ET.ParseError as exc:
        raise VmXmlError(f"malformed XML: {exc}") from None
    if root.tag != tag:
        # VMM_DRIVER_ACTION_DATA wraps the VM (base64-decoded stdin of most actions)
        vm = root.find(f".//{tag}")
        if vm is None:
            raise VmXmlError(f"no <{tag}> element in the XML (root is <{root.tag}>)")
        root = vm
    return root


def _text(el: ET.Element | None, path: str) -> str | None:
    if el is None:
        return None
    found = el.find(path)
    if found is None or found.text is None:
        return None
    value = found.text.strip()
    return value or None


def _int(el: ET.Element | None, path: str, lo: int = 0, hi: int = MAX_ID) -> int | None:
    raw = _text(el, path)
    if raw is None:
        return None
    if not re.fullmatch(r"-?\d{1,19}", raw):
        raise VmXmlError(f"{path} {raw[:40]!r} is not an integer")
    value = int(raw)
    if not lo <= value <= hi:
        raise VmXmlError(f"{path} {value} is out of range ({lo}..{hi})")
    return value


def _float(el: ET.Element | None, path: str, lo: float, hi: float) -> float | None:
    raw = _text(el, path)
    if raw is None:
        return None
    try:
        value = float(raw)
    except ValueError:
        raise VmXmlError(f"{path} {raw[:40]!r} is not a number") from None
    if not lo <= value <= hi:  # also refuses nan and inf
        raise VmXmlError(f"{path} {value} is out of range ({lo}..{hi})")
    return value


def _yes(el: ET.Element | None, path: str, default: bool = False) -> bool:
    raw = _text(el, path)
    if raw is None:
        return default
    return raw.lower() in ("yes", "true", "1")


def _choice(value: str | None, path: str, allowed: set[str]) -> str | None:
    if value is not None and value not in allowed:
        raise VmXmlError(f"{path} {value[:40]!r} is not one of {', '.join(sorted(allowed))}")
    return value


def _disk(el: ET.Element) -> Disk:
    disk_id = _int(el, "DISK_ID")
    if disk_id is None:
        raise VmXmlError("a DISK has no DISK_ID")
    where = f"DISK {disk_id}"
    raw_type = _text(el, "TYPE") or "FILE"
    # OpenNebula spells volatile types in lower case (fs, swap), datastore types in upper case
    dtype = raw_type.lower() if raw_type.lower() in ("fs", "swap") else raw_type.upper()
    _choice(dtype, f"{where} TYPE", {"FILE", "BLOCK", "CDROM", "RBD", "fs", "swap"})
    fmt = (_text(el, "DRIVER") or _text(el, "FORMAT") or "raw").lower()
    _choice(fmt, f"{where} DRIVER/FORMAT", {"raw", "qcow2"})
    target = _text(el, "TARGET")
    if target is not None and not (DISK_TARGET_RE.fullmatch(target) or _abs_container_path(target)):
        raise VmXmlError(f"{where} TARGET {target[:60]!r} is neither a device name nor an "
                         "absolute path without '..'")
    return Disk(
        disk_id=disk_id, type=dtype,
        disk_type=_text(el, "DISK_TYPE"), format=fmt, target=target,
        readonly=_yes(el, "READONLY"), size_mb=_int(el, "SIZE", 0, MAX_MEMORY_MB),
        source=_text(el, "SOURCE"), tm_mad=_text(el, "TM_MAD"),
        attach=_yes(el, "ATTACH"), resize=_yes(el, "RESIZE"),
    )


def _abs_container_path(p: str) -> bool:
    return (p.startswith("/") and p != "/" and ".." not in p.split("/")
            and not any(c in p for c in "\n\t\0") and len(p) < 4096)


def _ip(value: str | None, where: str, version: int | None) -> str | None:
    """A normalised address of the given version (None: either)."""
    if value is None:
        return None
    kind = f"IPv{version}" if version else "IP"
    try:
        addr = ipaddress.ip_address(value)
    except ValueError:
        raise VmXmlError(f"{where} {value[:60]!r} is not an {kind} address") from None
    if version and addr.version != version:
        raise VmXmlError(f"{where} {value} is not an {kind} address")
    return str(addr)


def _nic(el: ET.Element, vm_id: int) -> Nic:
    nic_id = _int(el, "NIC_ID")
    if nic_id is None:
        raise VmXmlError("a NIC has no NIC_ID")
    where = f"NIC {nic_id}"
    target = _text(el, "TARGET") or f"one-{vm_id}-{nic_id}"
    bridge = _text(el, "BRIDGE")
    for label, name in (("TARGET", target), ("BRIDGE", bridge)):
        if name is not None and not IFNAME_RE.fullmatch(name):
            raise VmXmlError(f"{where} {label} {name[:40]!r} is not a valid interface name "
                             "(1-15 of letters, digits, '_', '.', '-')")
    mac = _text(el, "MAC")
    if mac is not None and not MAC_RE.fullmatch(mac):
        raise VmXmlError(f"{where} MAC {mac[:40]!r} is not a MAC address")
    dns = tuple(_ip(d, f"{where} DNS", None) for d in (_text(el, "DNS") or "").split())
    return Nic(
        nic_id=nic_id, mac=mac.lower() if mac else None, bridge=bridge, target=target,
        vn_mad=_text(el, "VN_MAD"), ip=_ip(_text(el, "IP"), f"{where} IP", 4),
        ip6=_ip(_text(el, "IP6") or _text(el, "IP6_GLOBAL"), f"{where} IP6", 6),
        mtu=_int(el, "MTU", 68, 65535), gateway=_ip(_text(el, "GATEWAY"), f"{where} GATEWAY", 4),
        dns=dns, attach=_yes(el, "ATTACH"),
    )


def parse_vm(xml: bytes) -> Vm:
    """Parse and validate a <VM> (or a VMM_DRIVER_ACTION_DATA holding one). Raises VmXmlError."""
    root = parse_root(xml)
    vm_id = _int(root, "ID")
    if vm_id is None:
        vm_id = _int(root, "TEMPLATE/VMID")
    if vm_id is None:
        raise VmXmlError("the VM has no ID")
    deploy_id = _text(root, "DEPLOY_ID") or f"one-{vm_id}"
    m = DEPLOY_ID_RE.fullmatch(deploy_id)
    if not m or int(m.group(1)) != vm_id:
        raise VmXmlError(f"DEPLOY_ID {deploy_id[:40]!r} is not one-{vm_id}")
    tmpl = root.find("TEMPLATE")
    if tmpl is None:
        raise VmXmlError("the VM has no TEMPLATE")
    disks = tuple(_disk(d) for d in tmpl.findall("DISK"))
    ids = [d.disk_id for d in disks]
    if len(ids) != len(set(ids)):
        raise VmXmlError("two DISKs have the same DISK_ID")
    nics = tuple(_nic(n, vm_id) for n in tmpl.findall("NIC"))
    if len({n.nic_id for n in nics}) != len(nics) or len({n.target for n in nics}) != len(nics):
        raise VmXmlError("two NICs have the same NIC_ID or TARGET")
    ctx_el = tmpl.find("CONTEXT")
    context = {}
    if ctx_el is not None:
        for child in ctx_el:
            if child.text is not None and re.fullmatch(r"[A-Z][A-Z0-9_]{0,127}", child.tag):
                context[child.tag] = child.text.strip()
    user = root.find("USER_TEMPLATE")
    history = root.findall("HISTORY_RECORDS/HISTORY")
    boot = tuple(b for b in (_text(tmpl, "OS/BOOT") or "").split(",") if b.strip())
    name = _text(root, "NAME") or f"one-{vm_id}"
    return Vm(
        vm_id=vm_id, name=name, deploy_id=deploy_id,
        memory_mb=_int(tmpl, "MEMORY", 1, MAX_MEMORY_MB),
        cpu=_float(tmpl, "CPU", 0.001, 4096.0), vcpu=_int(tmpl, "VCPU", 1, 4096),
        boot=boot, disks=disks, nics=nics, context=MappingProxyType(context),
        context_disk_id=_int(ctx_el, "DISK_ID"),
        sys_ds_id=_int(history[-1], "DS_ID") if history else None,
        unprivileged=_yes(user, "LXC_UNPRIVILEGED") if _text(user, "LXC_UNPRIVILEGED") else None,
        swap_mb=_int(user, "LXC_SWAP", 0, MAX_MEMORY_MB),
        active_snapshot_id=_active_snapshot(tmpl),
    )


def _active_snapshot(tmpl: ET.Element) -> int | None:
    for snap in tmpl.findall("SNAPSHOT"):
        if _yes(snap, "ACTIVE"):
            return _int(snap, "SNAPSHOT_ID")
    return None


def hostname_for(vm: Vm) -> str:
    """A valid host name from the VM name, as LXCoNe did: spaces and '_' become '-'."""
    raw = re.sub(r"[^A-Za-z0-9.-]+", "-", vm.name.replace("_", "-"))
    # label by label: no label may start or end with '-' ("0.{0" must not become "0.-0")
    labels = [label.strip("-")[:63].strip("-") for label in raw.split(".")]
    h = ".".join(label for label in labels if label)[:63].rstrip("-.")
    return h or vm.deploy_id
