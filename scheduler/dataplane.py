"""The scheduler's data plane: one interface, two implementations.

* eBPF (scheduler/dataplane_ebpf.py): a tc ingress program on `front`; the default.
* AF_PACKET (scheduler/dataplane_afpacket.py): the same decisions in pure Python, chosen
  automatically, with a one-line warning, where the BPF program cannot load.

Typical use by the scheduler role (inside the scheduler node's network namespace):

    dp = make_dataplane("front", "198.18.0.100", buckets=4096)
    dp.install()
    dp.set_nodes({0: mac_n1, 1: mac_n2, 2: mac_n3})
    dp.set_self(2, mac_n3)
    dp.set_port_rules({80, 443}, {9000: 0}, default_node=None)
    dp.set_deny(["203.0.113.0/24"])
    dp.set_vips({"198.18.0.100": None, "198.18.0.112": {80, 443}})   # seed 002: many VIPs
    dp.set_assignments(table)          # whenever the client table changes
    ... dp.last_access_ns(), dp.counters() ...
    dp.close()
"""

from __future__ import annotations

import ipaddress
import logging
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from scheduler.frame_decision import MAX_NODES

log = logging.getLogger("dlba.dataplane")


@dataclass
class DataPlaneCounters:
    """Totals since install: packets per node index (self included) and drops by reason."""

    packets: dict[int, int] = field(default_factory=dict)
    drops: dict[str, int] = field(default_factory=dict)  # acl, port, no_node
    redirected: int = 0  # frames sent on to another node
    passed_self: int = 0  # frames this node kept (owner == self)
    passed_other: int = 0  # non-TCP/UDP to the VIP, kept (ICMP)
    fragments: int = 0
    malformed: int = 0
    icmp_errors: int = 0  # ICMP errors routed by the flow they quote (to its owner)


def counters_json(dp: DataPlane, names: Sequence[str]) -> dict[str, object]:
    """What /summary shows of the data plane: its kind, packets per member, drops."""
    counters = dp.counters()
    return {"kind": type(dp).__name__,
            "packets": {names[i]: n for i, n in counters.packets.items() if i < len(names)},
            "drops": counters.drops, "redirected": counters.redirected}


class DataPlane(Protocol):
    def install(self) -> None:
        """Attach to the front interface (clsact ingress) in the current network namespace."""

    def set_nodes(self, macs: Mapping[int, bytes]) -> None:
        """Node index (0..N-1, config order) -> MAC; indexes not listed become unknown."""

    def set_self(self, index: int, own_mac: bytes) -> None:
        """Which node index this scheduler is, and the MAC of its front interface."""

    def set_assignments(self, table: Sequence[int | None]) -> None:
        """Bucket -> node index (None: nobody); len == buckets; swapped in atomically."""

    def set_port_rules(
        self, balanced: Collection[int], pinned: Mapping[int, int], default_node: int | None
    ) -> None:
        """VIP port rules (seed 001); before the first call ports 80 and 443 are balanced."""

    def set_deny(self, cidrs: Sequence[str]) -> None:
        """IPv4 source CIDRs dropped in the data plane and counted (seed 000)."""

    def set_vips(self, vips: Mapping[str, Collection[int] | None]) -> None:
        """Every VIP address answered -> the ports its services name (None: every port, the
        port rules decide). Replaces the set; before the first call only the VIP given at
        construction is answered, on every port. A VIP left out is no longer answered."""

    def last_access_ns(self) -> list[int]:
        """Per bucket, CLOCK_MONOTONIC ns of the last packet (0 = never); tick resolution."""

    def counters(self) -> DataPlaneCounters: ...

    def close(self) -> None:
        """Detach and remove everything install() made."""


def validate_mac(mac: bytes) -> bytes:
    if not isinstance(mac, bytes | bytearray) or len(mac) != 6:
        raise ValueError(f"a MAC is 6 bytes, got {mac!r}")
    return bytes(mac)


def validate_node(index: int, what: str = "node index") -> int:
    if not 0 <= index < MAX_NODES:
        raise ValueError(f"{what} {index} outside 0..{MAX_NODES - 1}")
    return index


def validate_table(table: Sequence[int | None], buckets: int) -> list[int | None]:
    if len(table) != buckets:
        raise ValueError(f"table has {len(table)} buckets, the data plane {buckets}")
    return [None if node is None else validate_node(node, "table entry") for node in table]


def validate_ports(
    balanced: Collection[int], pinned: Mapping[int, int], default_node: int | None
) -> None:
    for port in [*balanced, *pinned]:
        if not 0 <= port <= 0xFFFF:
            raise ValueError(f"port {port} outside 0..65535")
    both = set(balanced) & set(pinned)
    if both:
        raise ValueError(f"ports both balanced and pinned: {sorted(both)}")
    for node in pinned.values():
        validate_node(node, "pinned node")
    if default_node is not None:
        validate_node(default_node, "default node")


def validate_vips(vips: Mapping[str, Collection[int] | None]
                  ) -> dict[bytes, frozenset[int] | None]:
    """VIP text -> ports, as packed addresses; raises ValueError on a bad address, port or size."""
    from dlba.config.services import MAX_VIP_PORTS, MAX_VIPS

    out: dict[bytes, frozenset[int] | None] = {}
    pairs = 0
    for text, ports in vips.items():
        key = ipaddress.IPv4Address(text).packed
        if ports is None:
            out[key] = None
            continue
        for port in ports:
            if not 0 <= port <= 0xFFFF:
                raise ValueError(f"port {port} outside 0..65535")
        out[key] = frozenset(ports)
        pairs += len(ports)
    if len(out) > MAX_VIPS or pairs > MAX_VIP_PORTS:
        raise ValueError(f"{len(out)} VIPs with {pairs} ports: at most {MAX_VIPS} and "
                         f"{MAX_VIP_PORTS}")
    return out


def vip_map(config: Any) -> dict[str, frozenset[int] | None]:
    """The data plane's VIPs from a Config (dlba/config/model.py): every address of every
    service, with the union of the ports of the services on it; the implicit service (no
    [[services]]) takes every port."""
    out: dict[str, frozenset[int] | None] = {}
    for svc in config.services:
        for address in svc.addresses():
            if svc.implicit:
                out[address] = None
            elif address not in out or out[address] is not None:
                out[address] = frozenset(svc.ports) | (out.get(address) or frozenset())
    return out


def port_rules(config: Any, names: Sequence[str] | None = None,
               ) -> tuple[set[int], dict[int, int], int | None]:
    """[[ports]] rules (80 and 443 balanced without any); a port a service names is balanced
    unless a rule pins it: the same rules for every VIP. `names`: the node numbers' names
    (the scheduler's slots; default the config's order)."""
    index = {n: i for i, n in enumerate(names or [n.name for n in config.nodes])}
    balanced = {p.port for p in config.ports if p.pinned_node is None}
    pinned = {p.port: index[p.pinned_node] for p in config.ports if p.pinned_node is not None}
    if not config.ports:
        balanced = {80, 443}
    balanced |= {p for s in config.services for p in s.ports if p not in pinned}
    default = index.get(config.cluster.default_node) if config.cluster.default_node else None
    return balanced, pinned, default


def validate_cidrs(cidrs: Sequence[str]) -> list[ipaddress.IPv4Network]:
    return [ipaddress.IPv4Network(c, strict=False) for c in cidrs]


def make_dataplane(ifname: str, vip: str, buckets: int, prefer: str = "ebpf") -> DataPlane:
    """The eBPF data plane, or the AF_PACKET one when BPF cannot load (one warning line).

    prefer="afpacket" skips eBPF. The BPF object is loaded (verified) here, so a failure shows
    now rather than at install()."""
    if prefer not in ("ebpf", "afpacket"):
        raise ValueError(f"prefer must be 'ebpf' or 'afpacket', not {prefer!r}")
    ipaddress.IPv4Address(vip)
    if buckets <= 0:
        raise ValueError("buckets must be positive")
    from scheduler.dataplane_afpacket import AfPacketDataPlane

    if prefer == "ebpf":
        try:
            from scheduler.dataplane_ebpf import EbpfDataPlane

            return EbpfDataPlane(ifname, vip, buckets)
        except OSError as exc:
            log.warning("eBPF data plane unavailable (%s); using AF_PACKET fallback", exc)
    return AfPacketDataPlane(ifname, vip, buckets)


TC_INGRESS = 0xFFFFFFF2  # clsact's ingress hook


def _our_filter(msg: Any, bpf_prio: int, u32_prios: Collection[int]) -> int | None:
    """The priority of a filter (a pyroute2 tcmsg) one of our data planes installs, or None."""
    kind, prio = msg.get_attr("TCA_KIND"), int(msg["info"]) >> 16
    if kind == "bpf" and prio == bpf_prio:
        options = msg.get_attr("TCA_OPTIONS")
        name = options.get_attr("TCA_BPF_NAME") if options is not None else None
        return prio if name is None or "dlba" in str(name) else None
    if kind == "u32" and prio in u32_prios:
        return prio
    return None


def remove_leftovers(ifname: str, vip: str) -> list[str]:
    """Remove what a dead scheduler process of this node left on `ifname`: its tc filter
    (eBPF or AF_PACKET steal) and the VIP an older version put there. Call before serving:
    a stale program would re-forward the frames the live scheduler sends this node by a stale
    table, and a VIP on `front` would make this kernel answer ARP for it. Returns what it
    removed (for the log)."""
    from pyroute2 import IPRoute
    from pyroute2.netlink.exceptions import NetlinkError

    from scheduler.dataplane_afpacket import TC_PRIOS as U32_PRIOS
    from scheduler.dataplane_ebpf import TC_PRIORITY as BPF_PRIO
    from scheduler.vip_owner import remove_from_interface

    removed: list[str] = []
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=ifname)
        if not found:
            return removed
        index = int(found[0])
        try:
            filters = list(ipr.get_filters(index=index, parent=TC_INGRESS))
        except NetlinkError:  # no clsact qdisc: nothing of ours
            filters = []
        prios = {p for m in filters if (p := _our_filter(m, BPF_PRIO, U32_PRIOS)) is not None}
        for prio in sorted(prios):
            try:
                # prio alone (protocol 0, no handle) removes every filter at that priority;
                # tcm_info spelled out, as pyroute2 drops `prio` without a kind (a zero
                # info would delete every filter of the hook, not only ours)
                ipr.tc("del-filter", index=index, parent=TC_INGRESS, info=prio << 16)
                removed.append(f"tc_filter_prio_{prio}")
            except NetlinkError as e:
                log.warning("could not remove a stale tc filter (prio %d): %s", prio, e)
    if remove_from_interface(ifname, vip):
        removed.append("vip_on_interface")
    return removed
