"""Driver config and the Vm -> ContainerSpec conversion (pure, no kernel)."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from lxcone.driver.config import DriverConfig, load_config
from lxcone.driver.convert import container_spec, resources_for, signal_number
from lxcone.driver.vmxml import VmXmlError, parse_vm
from lxcone.testing.vmxml import nic, vm_xml

SAMPLE = Path(__file__).resolve().parents[3] / "remotes/etc/vmm/lxcone/lxcone.toml"


def test_the_shipped_sample_documents_exactly_the_defaults():
    text = SAMPLE.read_text()
    assert load_config(SAMPLE) == DriverConfig()
    for key in DriverConfig.__dataclass_fields__:
        assert f"{key} =" in text, f"{key} is not documented in {SAMPLE.name}"


def test_missing_file_means_defaults(tmp_path):
    assert load_config(tmp_path / "absent.toml") == DriverConfig()
    assert load_config(None) == DriverConfig()


@pytest.mark.parametrize(("text", "words"), [
    ('run_dri = "/x"', "unknown key 'run_dri'"),
    ("cpu_period_us = '100000'", "must be a int"),
    ("vcpu_pinning = 1", "must be a bool"),
    ("cpu_period_us = true", "must be a int"),
    ("run_dir = [", "lxcone.toml: Invalid value"),
])
def test_operator_mistakes_are_named(tmp_path, text, words):
    f = tmp_path / "lxcone.toml"
    f.write_text(text + "\n")
    with pytest.raises(ValueError, match=words):
        load_config(f)


def test_overrides_apply_and_int_is_accepted_for_float(tmp_path):
    f = tmp_path / "lxcone.toml"
    f.write_text('run_dir = "/srv/lx"\nshutdown_timeout_s = 5\nhost_netns = "/run/netns/t"\n')
    cfg = load_config(f)
    assert (cfg.run_dir, cfg.shutdown_timeout_s, cfg.host_netns) == ("/srv/lx", 5.0, "/run/netns/t")


def test_limits_follow_memory_cpu_vcpu_and_swap():
    cfg = DriverConfig()
    vm = parse_vm(vm_xml(1, memory=768, cpu=1.5, vcpu=4, user={"LXC_SWAP": 128}))
    r = resources_for(vm, cfg, host_cpus=2)
    assert r.memory_limit_bytes == 768 << 20 and r.memory_swap_limit_bytes == 128 << 20
    assert (r.cpu_quota_us, r.cpu_period_us, r.cpu_shares) == (150_000, 100_000, 1536)
    assert r.cpuset_cpus == "0-1"  # 4 VCPUs capped at the host's 2
    tiny = resources_for(parse_vm(vm_xml(1, cpu=0.001, vcpu=1)), cfg, 8)
    assert tiny.cpu_quota_us == 1000 and tiny.cpu_shares == 2 and tiny.cpuset_cpus == "0"
    r.validate()
    tiny.validate()


def test_nics_are_configured_from_nic_and_context():
    vm = parse_vm(vm_xml(5, nics=[nic(5, 0, MTU=1450), nic(5, 2, IP="10.0.0.9", IP6="fd00::9")],
                         context={"ETH0_MASK": "255.255.0.0", "ETH0_GATEWAY": "192.168.0.1",
                                  "ETH2_IP6_PREFIX_LENGTH": "48"}))
    spec = container_spec(vm, DriverConfig(), "/tmp")
    n0, n2 = spec.nics
    assert (n0.host_name, n0.guest_name, n0.mtu, n0.bridge) == ("one-5-0", "eth0", 1450, "br0")
    assert [(a.address, a.prefixlen) for a in n0.addresses] == [("192.168.150.100", 16)]
    assert n0.gateway == "192.168.0.1"
    assert [(a.address, a.prefixlen) for a in n2.addresses] == [("10.0.0.9", 24), ("fd00::9", 48)]
    assert n2.guest_name == "eth2"


def test_bad_context_masks_are_named():
    vm = parse_vm(vm_xml(5, context={"ETH0_MASK": "255.0.255.0"}))
    with pytest.raises(VmXmlError, match="ETH0_MASK"):
        container_spec(vm, DriverConfig(), "/tmp")


def test_name_privilege_and_stop_signal():
    vm = parse_vm(vm_xml(9, name="My Web_Server!", user={"LXC_UNPRIVILEGED": "no"}))
    spec = container_spec(vm, DriverConfig(stop_signal="SIGRTMIN+4"), "/tmp")
    assert (spec.name, spec.hostname, spec.privileged) == ("one-9", "My-Web-Server", True)
    assert spec.stop_signal == int(signal.SIGRTMIN) + 4
    vm = parse_vm(vm_xml(9, context={"SET_HOSTNAME": "db1"}))
    spec = container_spec(vm, DriverConfig(unprivileged=False), "/tmp")
    assert spec.hostname == "db1" and spec.privileged is True  # driver default applies
    assert signal_number("pwr") == int(signal.SIGPWR) and signal_number("15") == 15
    with pytest.raises(ValueError, match="unknown signal"):
        signal_number("SIGNOPE")
