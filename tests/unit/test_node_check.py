"""The pure part of `dlba node --check`: facts about a machine in, named problems out."""

from __future__ import annotations

from dlba.node_check import Facts, decide, effective_caps, kernel_version

ALL_CAPS = frozenset({"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF", "CAP_NET_BIND_SERVICE"})
GOOD_ARP = {"all": (1, 2), "default": (1, 2), "lo": (0, 0), "eth0": (0, 0)}


def vip_facts(**kw: object) -> Facts:
    base: dict[str, object] = dict(config_problems=(), vip="10.0.0.100", dataplane="ebpf",
                                   arp=GOOD_ARP, caps=ALL_CAPS, kernel=(6, 1),
                                   bpf_object="/x/dlba_tc.o", bpf_object_exists=True)
    base.update(kw)
    return Facts(**base)  # type: ignore[arg-type]


def failed(facts: Facts) -> dict[str, str]:
    return {c.name: c.detail for c in decide(facts) if not c.ok}


def test_ready_vip_node_passes_every_check() -> None:
    checks = decide(vip_facts())
    assert [c.name for c in checks] == ["config", "sysctl", "capabilities", "kernel", "bpf"]
    assert all(c.ok for c in checks)


def test_standalone_node_needs_no_sysctl_caps_or_bpf() -> None:
    checks = decide(Facts(config_problems=()))
    assert [(c.name, c.ok) for c in checks] == [("config", True), ("capabilities", True)]


def test_config_problems_each_on_its_own_line() -> None:
    checks = decide(Facts(config_problems=("f: a: bad", "f: b: worse")))
    assert not checks[0].ok
    assert checks[0].lines()[1:] == ["     f: a: bad", "     f: b: worse"]


def test_an_interface_that_could_answer_arp_is_named() -> None:
    arp = {"all": (0, 2), "eth0": (0, 2), "eth1": (1, 0), "lo": (0, 0)}
    detail = failed(vip_facts(arp=arp))["sysctl"]
    assert "eth0 arp_ignore=0" in detail and "eth1 arp_ignore=1 arp_announce=2" not in detail
    assert "lo " not in detail
    # `all` alone is enough: the kernel takes the larger of `all` and the interface's value.
    assert "sysctl" not in failed(vip_facts(arp={"all": (1, 2), "eth0": (0, 0)}))


def test_missing_capabilities_are_named() -> None:
    detail = failed(vip_facts(caps=frozenset({"CAP_NET_RAW"})))["capabilities"]
    assert "CAP_NET_ADMIN" in detail and "CAP_BPF (or CAP_SYS_ADMIN)" in detail
    assert "CAP_NET_RAW" not in detail
    assert "capabilities" not in failed(vip_facts(caps=frozenset(
        {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_SYS_ADMIN"})))
    # AF_PACKET needs no BPF capability.
    assert "capabilities" not in failed(vip_facts(
        dataplane="afpacket", caps=frozenset({"CAP_NET_ADMIN", "CAP_NET_RAW"})))
    low = failed(Facts(config_problems=(), low_ports=(80, 443)))["capabilities"]
    assert "CAP_NET_BIND_SERVICE (ports 80, 443)" in low


def test_bpf_and_kernel() -> None:
    assert "missing" in failed(vip_facts(bpf_object_exists=False))["bpf"]
    assert "EPERM" in failed(vip_facts(bpf_load_error="EPERM"))["bpf"]
    assert "older than 5.4" in failed(vip_facts(kernel=(4, 19)))["kernel"]
    assert "LimitMEMLOCK" in failed(vip_facts(kernel=(5, 10), memlock_unlimited=False))["kernel"]
    assert "kernel" not in failed(vip_facts(kernel=(5, 15), memlock_unlimited=False))
    assert {"kernel", "bpf"}.isdisjoint(failed(vip_facts(dataplane="afpacket", kernel=(4, 19),
                                                         bpf_object_exists=False)))


def test_gathering_helpers_parse_proc_and_uname() -> None:
    status = "Name:\tx\nCapEff:\t0000008000003000\n"
    assert effective_caps(status) == {"CAP_NET_ADMIN", "CAP_NET_RAW", "CAP_BPF"}
    assert effective_caps("CapEff:\t0000000000000000\n") == frozenset()
    assert kernel_version("6.18.44-fc-v1045") == (6, 18)
    assert kernel_version("5.10.0-28-amd64") == (5, 10)
    assert kernel_version("garbage") == (0, 0)
