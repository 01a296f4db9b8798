"""Realistic OpenNebula VM XML for tests, shaped like what oned 7.x sends (protocol doc §4.2)."""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from xml.sax.saxutils import escape


def _cdata(tag: str, value: object) -> str:
    text = str(value)
    if "]]>" in text:  # CDATA cannot hold its own terminator: fall back to escaping
        return f"<{tag}>{escape(text)}</{tag}>"
    return f"<{tag}><![CDATA[{text}]]></{tag}>"


def _block(tag: str, fields: Mapping[str, object]) -> str:
    return f"<{tag}>" + "".join(_cdata(k, v) for k, v in fields.items()) + f"</{tag}>"


def disk(disk_id: int, **fields: object) -> dict[str, object]:
    d: dict[str, object] = {
        "DISK_ID": disk_id, "CLONE": "YES", "DATASTORE": "default", "DATASTORE_ID": 1,
        "DEV_PREFIX": "sd", "DISK_TYPE": "FILE", "DRIVER": "raw", "FORMAT": "raw",
        "IMAGE": "busybox", "IMAGE_ID": 5, "READONLY": "NO", "SIZE": 64,
        "SOURCE": "/var/lib/one//datastores/1/3b5c1f0e2d6a8b9c",
        "TARGET": f"sd{'abcdefgh'[disk_id % 8]}", "TM_MAD": "shared", "TYPE": "FILE",
    }
    d.update(fields)
    return d


def nic(vm_id: int, nic_id: int, **fields: object) -> dict[str, object]:
    n: dict[str, object] = {
        "AR_ID": 0, "BRIDGE": "br0", "BRIDGE_TYPE": "linux", "IP": f"192.168.150.{100 + nic_id}",
        "MAC": f"02:00:c0:a8:96:{100 + nic_id:02x}", "NAME": f"NIC{nic_id}", "NETWORK": "vnet",
        "NETWORK_ID": 0, "NIC_ID": nic_id, "SECURITY_GROUPS": 0, "TARGET": f"one-{vm_id}-{nic_id}",
        "VN_MAD": "bridge",
    }
    n.update(fields)
    return n


def vm_xml(vm_id: int = 12, *, name: str | None = None, memory: object = 512,
           cpu: object = 0.5, vcpu: object | None = 1, disks: Sequence[Mapping] | None = None,
           nics: Sequence[Mapping] | None = None, context: Mapping[str, object] | None = None,
           deploy_id: str = "", sys_ds_id: int = 0, boot: str | None = None,
           user: Mapping[str, object] | None = None, extra_template: str = "") -> bytes:
    """A <VM> document; pass raw values (even hostile ones) to exercise the parser."""
    disks = [disk(0)] if disks is None else disks
    nics = [nic(vm_id, 0)] if nics is None else nics
    ctx = {"DISK_ID": 1, "NETWORK": "YES", "TARGET": "hda", "SSH_PUBLIC_KEY": "ssh-ed25519 AAAA"}
    ctx.update(context or {})
    tmpl = [_block("CONTEXT", ctx), _cdata("CPU", cpu)]
    tmpl += [_block("DISK", d) for d in disks]
    tmpl.append(_block("GRAPHICS", {"LISTEN": "0.0.0.0", "PORT": 5900 + vm_id, "TYPE": "VNC"}))
    tmpl.append(_cdata("MEMORY", memory))
    tmpl += [_block("NIC", n) for n in nics]
    if boot is not None:
        tmpl.append(f"<OS>{_cdata('BOOT', boot)}</OS>")
    if vcpu is not None:
        tmpl.append(_cdata("VCPU", vcpu))
    tmpl += [_cdata("TEMPLATE_ID", 3), _cdata("TM_MAD_SYSTEM", "shared"), _cdata("VMID", vm_id),
             extra_template]
    user_t = {"HYPERVISOR": "lxcone", **(user or {})}
    doc = (
        f"<VM><ID>{vm_id}</ID><UID>0</UID><GID>0</GID><UNAME>oneadmin</UNAME>"
        f"<GNAME>oneadmin</GNAME>{_cdata('NAME', name if name is not None else f'web-{vm_id}')}"
        "<LAST_POLL>0</LAST_POLL><STATE>3</STATE><LCM_STATE>2</LCM_STATE><RESCHED>0</RESCHED>"
        f"<STIME>1730000000</STIME><ETIME>0</ETIME><DEPLOY_ID>{escape(deploy_id)}</DEPLOY_ID>"
        f"<MONITORING/><TEMPLATE>{''.join(tmpl)}</TEMPLATE>{_block('USER_TEMPLATE', user_t)}"
        f"<HISTORY_RECORDS><HISTORY><OID>{vm_id}</OID><SEQ>0</SEQ><HOSTNAME>node1</HOSTNAME>"
        f"<HID>0</HID><CID>0</CID><VM_MAD><![CDATA[lxcone]]></VM_MAD>"
        f"<TM_MAD><![CDATA[shared]]></TM_MAD><DS_ID>{sys_ds_id}</DS_ID></HISTORY>"
        "</HISTORY_RECORDS></VM>"
    )
    return doc.encode()


def action_data(vm: bytes, host: str = "node1") -> bytes:
    """VMM_DRIVER_ACTION_DATA as most actions receive it (decoded) on stdin."""
    return (b"<VMM_DRIVER_ACTION_DATA><HOST>" + host.encode() + b"</HOST>"
            b"<MIGR_HOST></MIGR_HOST><DEPLOY_ID></DEPLOY_ID>" + vm + b"</VMM_DRIVER_ACTION_DATA>")


def as_local_stdin(xml: bytes) -> bytes:
    """What a `-l` local action gets: base64, no newline (Base64.strict_encode64)."""
    return base64.b64encode(xml)
