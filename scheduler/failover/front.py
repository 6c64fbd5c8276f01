"""The node's front interface, as the agent needs it (blocking: run these in a thread).

pyroute2's synchronous API runs its own event loop, so none of this may run on the agent's.
"""

from __future__ import annotations

from scheduler.dataplane import DataPlane, make_dataplane, remove_leftovers
from scheduler.vip_owner import arp_probe, interface_of, mac_text

Prepared = tuple[str, bytes, DataPlane]  # interface name, its MAC, a loaded data plane


def remove_stale(address: str, vip: str) -> list[str]:
    """Remove what a dead process of this node left on the interface holding `address` (its
    tc program, the VIP); what was removed."""
    ifname, _ = interface_of(address)
    return remove_leftovers(ifname, vip)


def prepare(address: str, vip: str, buckets: int, kind: str) -> Prepared:
    """Find the front interface and load (verify) a data plane for it, not yet attached."""
    ifname, mac = interface_of(address)
    return ifname, mac, make_dataplane(ifname, vip, buckets, kind)


def vip_answerers(address: str, vip: str) -> set[str]:
    """The MACs that answer ARP for the VIP on the front interface."""
    ifname, _ = interface_of(address)
    return {mac_text(m) for m in arp_probe(ifname, address, vip)}
