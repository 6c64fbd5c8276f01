"""The node's front interface and `lo`, as the agent needs them.

pyroute2's synchronous API runs its own event loop, so none of the blocking calls may run on
the agent's: the coroutines below run them in a thread and log what went wrong.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from pyroute2.netlink.exceptions import NetlinkError

from scheduler.dataplane import DataPlane, make_dataplane, remove_leftovers
from scheduler.vip_owner import arp_probe, interface_of, lo_networks, mac_text, sync_lo_vips

events = logging.getLogger("dlba.event")
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


async def clean_stale(name: str, address: str, vip: str) -> None:
    """Remove what a dead process of this node left on `front` before this one serves."""
    try:
        removed = await asyncio.to_thread(remove_stale, address, vip)
    except (OSError, LookupError) as e:
        events.warning("event=stale_check_failed node=%s reason=%r", name, str(e))
        return
    if removed:
        events.warning("event=stale_dataplane_removed node=%s removed=%s", name,
                       ",".join(removed))


async def prepare_now(name: str, address: str, vip: str, buckets: int,
                      kind: str) -> Prepared | None:
    """Load (verify) the data plane and find the front interface now, so that a takeover
    only has to attach it: the verifier's time is not added to the outage."""
    try:
        return await asyncio.to_thread(prepare, address, vip, buckets, kind)
    except (OSError, LookupError) as e:
        events.warning("event=dataplane_not_prepared node=%s reason=%r", name, str(e))
        return None


async def hold_vips_on_lo(name: str, services: Sequence[object],
                          held: list[str]) -> list[str]:
    """Every VIP of every service on lo (a pushed config adds and removes them live); the
    addresses lo holds for us now (`held` unchanged when we may not change lo)."""
    wanted = lo_networks(services)
    try:
        await asyncio.to_thread(sync_lo_vips, wanted, held)
    except (OSError, IndexError, NetlinkError) as e:  # no CAP_NET_ADMIN: the host's job
        events.warning("event=lo_vips_failed node=%s reason=%r", name, str(e))
        return held
    return wanted
