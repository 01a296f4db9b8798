"""Vm (OpenNebula's view) -> ContainerSpec (the runtime's), as a pure function: no I/O.

Mapping (documented in docs/driver.md):
  MEMORY (MiB)            -> hard memory limit; LXC_SWAP or default_swap_mb -> swap allowance
  CPU (1.0 = one core)    -> hard quota CPU x period, and weight (shares 1024 x CPU)
  VCPU                    -> cpuset of that many CPUs (vcpu_pinning), capped at the host's
  NIC                     -> veth TARGET on BRIDGE, guest eth<NIC_ID>, MAC, MTU, addresses from
                             IP + CONTEXT ETH<i>_MASK (or _IP6_PREFIX_LENGTH), gateway
  NAME / SET_HOSTNAME     -> host name; LXC_UNPRIVILEGED=no -> privileged
"""

from __future__ import annotations

import ipaddress
import signal
from collections.abc import Sequence
from dataclasses import replace

from lxcone.cgroups import Resources
from lxcone.driver.config import DriverConfig
from lxcone.driver.vmxml import Nic, Vm, VmXmlError, hostname_for
from lxcone.netns import Address, NicSpec
from lxcone.runtime.spec import HOSTNAME_RE, Bind, ContainerSpec, IdMap

MIB = 1 << 20


def signal_number(name: str) -> int:
    """'SIGPWR', 'SIGRTMIN+3' or '30' -> the signal number; ValueError otherwise."""
    text = name.strip().upper()
    if text.isdigit():
        return int(text)
    text = text if text.startswith("SIG") else "SIG" + text
    if text.startswith("SIGRTMIN+") and text[9:].isdigit():
        return int(signal.SIGRTMIN) + int(text[9:])
    try:
        return int(signal.Signals[text])
    except KeyError:
        raise ValueError(f"unknown signal {name!r}") from None


def resources_for(vm: Vm, cfg: DriverConfig, host_cpus: int) -> Resources:
    memory = vm.memory_mb * MIB if vm.memory_mb else None
    swap_mb = vm.swap_mb if vm.swap_mb is not None else cfg.default_swap_mb
    quota = shares = None
    if vm.cpu:
        # never below 1 ms of quota per period: the kernel refuses cfs_quota_us < 1000
        quota = max(1000, round(vm.cpu * cfg.cpu_period_us))
        shares = max(2, min(262144, round(vm.cpu * 1024)))
    cpuset = None
    if cfg.vcpu_pinning and vm.vcpu:
        n = min(vm.vcpu, host_cpus)
        cpuset = "0" if n == 1 else f"0-{n - 1}"
    return Resources(
        memory_limit_bytes=memory,
        memory_swap_limit_bytes=swap_mb * MIB if memory is not None else None,
        cpu_quota_us=quota, cpu_period_us=cfg.cpu_period_us if quota else None,
        cpu_shares=shares, cpuset_cpus=cpuset,
    )


def resize_resources(vm: Vm, cfg: DriverConfig, host_cpus: int) -> Resources:
    """Limits for a live resize: like a deploy's, except that what the VM no longer sets
    becomes unlimited rather than staying as it was (a resize to no CPU cap removes the cap)."""
    res = resources_for(vm, cfg, host_cpus)
    return replace(
        res,
        memory_limit_bytes=res.memory_limit_bytes or -1,
        memory_swap_limit_bytes=res.memory_swap_limit_bytes or -1,
        cpu_quota_us=res.cpu_quota_us or -1,
        cpu_shares=res.cpu_shares or 1024,
    )


def resolv_conf(vm: Vm) -> str | None:
    """/etc/resolv.conf for the guest from the NICs' DNS and CONTEXT DNS, ETH<i>_DNS,
    SEARCH_DOMAIN and ETH<i>_SEARCH_DOMAIN (what one-context would write); None when the VM
    names no DNS server, so that the guest's own file is left alone."""
    ctx = vm.context
    servers: list[str] = []
    search: list[str] = []
    for n in vm.nics:
        servers += n.dns
        servers += ctx.get(f"ETH{n.nic_id}_DNS", "").split()
        search += ctx.get(f"ETH{n.nic_id}_SEARCH_DOMAIN", "").split()
    servers += ctx.get("DNS", "").split()
    search += ctx.get("SEARCH_DOMAIN", "").split()
    good = []
    for server in servers:
        try:
            good.append(str(ipaddress.ip_address(server)))
        except ValueError:
            raise VmXmlError(f"DNS server {server[:60]!r} is not an IP address") from None
    for domain in search:
        if not HOSTNAME_RE.fullmatch(domain):
            raise VmXmlError(f"SEARCH_DOMAIN {domain[:60]!r} is not a domain name")
    good = list(dict.fromkeys(good))
    if not good:
        return None
    lines = ["# written by LXCoNe from the VM's DNS settings"]
    if search:
        lines.append("search " + " ".join(dict.fromkeys(search)))
    lines += [f"nameserver {s}" for s in good]
    return "\n".join(lines) + "\n"


def nic_spec(vm: Vm, nic: Nic) -> NicSpec:
    """The runtime's NIC for an OpenNebula NIC, configured from the NIC and CONTEXT ETH<id>_*."""
    ctx = vm.context
    prefix = f"ETH{nic.nic_id}_"
    addrs = []
    if nic.ip:
        mask = ctx.get(prefix + "MASK", "255.255.255.0")
        try:
            plen = ipaddress.IPv4Network(f"0.0.0.0/{mask}").prefixlen
        except ValueError:
            raise VmXmlError(f"CONTEXT {prefix}MASK {mask[:40]!r} is not a netmask") from None
        addrs.append(Address(nic.ip, plen))
    if nic.ip6:
        raw = ctx.get(prefix + "IP6_PREFIX_LENGTH", "64")
        if not raw.isdigit() or not 1 <= int(raw) <= 128:
            raise VmXmlError(f"CONTEXT {prefix}IP6_PREFIX_LENGTH {raw[:20]!r} is not 1..128")
        addrs.append(Address(nic.ip6, int(raw)))
    gateway = nic.gateway or ctx.get(prefix + "GATEWAY") or None
    gateway6 = ctx.get(prefix + "GATEWAY6") or None
    try:
        return NicSpec(host_name=nic.target, guest_name=f"eth{nic.nic_id}", mac=nic.mac,
                       mtu=nic.mtu, bridge=nic.bridge, addresses=tuple(addrs),
                       gateway=gateway, gateway6=gateway6)
    except ValueError as exc:
        raise VmXmlError(f"NIC {nic.nic_id}: {exc}") from None


def container_spec(vm: Vm, cfg: DriverConfig, rootfs: str, binds: Sequence[Bind] = (),
                   host_cpus: int = 1) -> ContainerSpec:
    """The container for ``vm``, its root filesystem already mounted at ``rootfs``."""
    if vm.context.get("SET_HOSTNAME"):
        vm = replace(vm, name=vm.context["SET_HOSTNAME"])
    unprivileged = cfg.unprivileged if vm.unprivileged is None else vm.unprivileged
    return ContainerSpec(
        name=vm.deploy_id, rootfs=rootfs, hostname=hostname_for(vm),
        privileged=not unprivileged,
        id_map=IdMap(cfg.id_map_host_uid, cfg.id_map_host_gid, cfg.id_map_size),
        binds=tuple(binds), resources=resources_for(vm, cfg, host_cpus),
        nics=tuple(nic_spec(vm, n) for n in vm.nics),
        stop_signal=signal_number(cfg.stop_signal),
    )
