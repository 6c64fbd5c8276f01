"""Applies a topology `Plan` with pyroute2 (netlink, no `ip` processes) and tears it down.

Teardown works from the prefix alone, not from a plan, so it also removes what a crashed
run with other sizes left behind: every namespace and root-namespace link whose name starts
with the prefix, after killing (by PID) the processes still living in those namespaces.
"""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass, field

from pyroute2 import IPRoute, netns
from pyroute2.netlink.exceptions import NetlinkError

from dlba.local_array import processes
from dlba.local_array.topology import Endpoint, Namespace, Plan

ENOENT = 2
ENODEV = 19
EEXIST = 17


@dataclass
class Removed:
    """What a teardown found and removed (for the one line `dlba down` prints)."""

    processes: list[int] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    links: list[str] = field(default_factory=list)

    def __bool__(self) -> bool:
        return bool(self.processes or self.namespaces or self.links)

    def summary(self) -> str:
        return (
            f"{len(self.processes)} processes, {len(self.namespaces)} namespaces, "
            f"{len(self.links)} links"
        )


def _index(ipr: IPRoute, ifname: str) -> int:
    found = ipr.link_lookup(ifname=ifname)
    if not found:
        raise RuntimeError(f"interface {ifname!r} not found after creating it")
    return int(found[0])


def _add_bridge(ipr: IPRoute, name: str, address: str | None, prefixlen: int) -> int:
    # The host may have br_netfilter loaded (Docker does): then bridged frames go through
    # iptables FORWARD, where a DROP policy silently cuts the array's switch. Turning the
    # per-bridge hooks off keeps the switch a plain switch whatever the host's firewall.
    # STP off: ports forward at once instead of after the listening/learning delay.
    ipr.link(
        "add",
        ifname=name,
        kind="bridge",
        br_stp_state=0,
        br_nf_call_iptables=0,
        br_nf_call_ip6tables=0,
        br_nf_call_arptables=0,
    )
    idx = _index(ipr, name)
    if address:
        ipr.addr("add", index=idx, address=address, prefixlen=prefixlen)
    ipr.link("set", index=idx, state="up")
    return idx


def _add_veth(ipr: IPRoute, ep: Endpoint, bridges: dict[str, int]) -> None:
    # Create the pair with its inside end born in the namespace: nothing named `eth0` or
    # `front` ever appears, even briefly, in the root namespace.
    ipr.link("add", ifname=ep.peer, kind="veth", peer={"ifname": ep.ifname, "net_ns_fd": ep.netns})
    idx = _index(ipr, ep.peer)
    ipr.link("set", index=idx, master=bridges[ep.bridge], state="up")


def _configure_inside(ns: Namespace, vip: str) -> None:
    with IPRoute(netns=ns.name) as ipr:
        lo = _index(ipr, "lo")
        ipr.link("set", index=lo, state="up")
        if ns.vip_on_lo:
            # /32 on lo: the node accepts packets for the VIP and answers from it, while
            # arp_ignore=1 (set below) keeps it from answering ARP for it.
            ipr.addr("add", index=lo, address=vip, prefixlen=32)
        for ep in ns.endpoints:
            idx = _index(ipr, ep.ifname)
            ipr.addr("add", index=idx, address=ep.address, prefixlen=ep.prefixlen)
            ipr.link("set", index=idx, state="up")
        if ns.default_dev:
            ipr.route("add", dst="0.0.0.0/0", oif=_index(ipr, ns.default_dev))


OWNER_TAG = "dlba-state:"


def build(plan: Plan, owner: str | None = None) -> None:
    """Create the plan's namespaces, bridges, veth pairs, addresses, routes and sysctls.

    All or nothing: on any error the partial topology is torn down before re-raising.
    Raises FileExistsError when something with the plan's prefix already exists, so a
    running array is never half-overwritten (run `teardown` / `dlba down` first).
    `owner` (the state folder) is written as the front bridge's alias, so `dlba down` and
    `dlba up` of another state folder can tell the array is not theirs.
    """
    found = leftovers(plan.prefix)
    if found:
        raise FileExistsError(f"{plan.prefix}* already exists ({found.summary()}): run dlba down")
    try:
        for ns in plan.namespaces:
            netns.create(ns.name)
        with IPRoute() as ipr:
            bridges = {
                plan.front_bridge: _add_bridge(ipr, plan.front_bridge, plan.host_address, 24),
                plan.back_bridge: _add_bridge(ipr, plan.back_bridge, None, 24),
            }
            if owner is not None:
                ipr.link("set", index=bridges[plan.front_bridge],
                         ifalias=(OWNER_TAG + owner)[:255])
            for ns in plan.namespaces:
                for ep in ns.endpoints:
                    _add_veth(ipr, ep, bridges)
        for ns in plan.namespaces:
            # sysctls first: a device's conf exists once the device is in the namespace,
            # and ARP behaviour must be right before the interface comes up.
            if ns.sysctls:
                processes.write_sysctls(ns.name, ns.sysctls)
            _configure_inside(ns, plan.vip)
    except BaseException:
        teardown(plan.prefix)
        raise


def _our_namespaces(prefix: str) -> list[str]:
    return sorted(n for n in netns.listnetns() if n.startswith(prefix))


def _our_links(prefix: str) -> list[str]:
    with IPRoute() as ipr:
        names = [link.get_attr("IFLA_IFNAME") for link in ipr.get_links()]
    return sorted(n for n in names if isinstance(n, str) and n.startswith(prefix))


def owner(prefix: str) -> str | None:
    """The state folder recorded on the prefix's front bridge (None: no bridge or no tag)."""
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=f"{prefix}sw")
        if not found:
            return None
        alias = ipr.get_links(found[0])[0].get_attr("IFLA_IFALIAS")
    if isinstance(alias, str) and alias.startswith(OWNER_TAG):
        return alias[len(OWNER_TAG):]
    return None


def pids_in(netns_name: str) -> list[int]:
    """PIDs of the processes living in one namespace (found by its inode, not by name)."""
    return _pids_in([netns_name]) if netns_name in netns.listnetns() else []


def _pids_in(names: list[str]) -> list[int]:
    if not names:
        return []
    by_ns = netns.ns_pids()
    me = os.getpid()
    return sorted({p for n in names for p in by_ns.get(n, []) if p != me})


def leftovers(prefix: str) -> Removed:
    """What teardown(prefix) would remove, without removing anything."""
    spaces = _our_namespaces(prefix)
    return Removed(_pids_in(spaces), spaces, _our_links(prefix))


def teardown(prefix: str, deadline_s: float = 5.0) -> Removed:
    """Remove every trace of an array with this prefix. Idempotent; safe on a clean host.

    Processes still inside our namespaces are stopped by PID (found by the namespace's
    inode, never by process name): a namespace with a live process would outlive the
    removal of its name and keep its addresses and ports busy invisibly.
    """
    if not prefix:
        raise ValueError("an empty prefix would match every namespace")
    removed = Removed()
    spaces = _our_namespaces(prefix)
    for pid in _pids_in(spaces):
        if processes.stop_pid(pid, None, deadline_s):
            removed.processes.append(pid)
    for name in spaces:
        # Deleting the namespace deletes the veth ends inside it, which deletes their peers.
        with contextlib.suppress(FileNotFoundError):
            netns.remove(name)
            removed.namespaces.append(name)
    with IPRoute() as ipr:
        for name in _our_links(prefix):
            try:
                ipr.link("del", index=_index(ipr, name))
                removed.links.append(name)
            except (NetlinkError, RuntimeError) as exc:
                # A veth peer can vanish between listing and deleting once its namespace
                # is released by the kernel; that is the goal, not an error.
                if isinstance(exc, NetlinkError) and exc.code not in (ENODEV, ENOENT):
                    raise
    return removed
