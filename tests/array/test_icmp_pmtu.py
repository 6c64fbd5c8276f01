"""Path-MTU discovery through the scheduler: a real router with a 1280-byte link sends
"fragmentation needed" for a node's 1500-byte segments, and the data plane must hand it to the
node that owns the flow, or that node's download stalls (its kernel never learns the MTU).

Topology (throwaway `dlbat-*` namespaces): the switch (a bridge in its own namespace) joins the
scheduler (node 0), two nodes and a router; the client sits behind the router, on a link whose
router end has MTU 1280 while the client's end keeps 1500 (so the client's SYN still offers a
1460-byte MSS and the nodes send full-size segments with DF set, as Linux does by default).
"""

from __future__ import annotations

import ipaddress
import json
import secrets
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.frame_decision import bucket_of
from tests.array.conftest import require_root
from tests.array.test_dataplane_forwarding import (
    BUCKETS,
    CLIENT_SCRIPT,
    HOSTS,
    NODE_ORDER,
    PORT,
    VIP,
    Plane,
    link_info,
    serve_on_nodes,
    sh,
    stop_servers,
)

pytestmark = pytest.mark.array

ROUTER_FRONT = "198.18.200.1"
CLIENT_NET = "198.18.201.0/24"
ROUTER_DOWN = "198.18.201.1"
CLIENT = "198.18.201.2"
SMALL_MTU = 1280
SIZE = 200_000
TABLE = [i % 3 for i in range(BUCKETS)]


@pytest.fixture
def names() -> Iterator[dict[str, str]]:
    require_root()
    suffix = secrets.token_hex(3)
    roles = ("sw", "rt", "cl", *NODE_ORDER)
    ns = {role: f"dlbat-{role}-{suffix}" for role in roles}
    try:
        yield ns
    finally:
        from pyroute2 import netns

        for name in ns.values():
            if name in netns.listnetns():
                netns.remove(name)


def build(ns: dict[str, str]) -> None:
    for name in ns.values():
        sh("ip", "netns", "add", name)
    sw = ns["sw"]
    sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", sw, "link", "set", "br0", "up")
    for role, addr in {**HOSTS, "rt": ROUTER_FRONT}.items():
        sh("ip", "-n", sw, "link", "add", f"p-{role}", "type", "veth", "peer", "name", "front",
           "netns", ns[role])  # fmt: skip
        sh("ip", "-n", sw, "link", "set", f"p-{role}", "master", "br0", "up")
        sh("ip", "-n", ns[role], "link", "set", "lo", "up")
        sh("ip", "-n", ns[role], "addr", "add", f"{addr}/24", "dev", "front")
        sh("ip", "-n", ns[role], "link", "set", "front", "up")
    for role in NODE_ORDER:
        sh("ip", "-n", ns[role], "route", "add", CLIENT_NET, "via", ROUTER_FRONT)
    for role in ("n1", "n2"):
        sh("ip", "-n", ns[role], "addr", "add", f"{VIP}/32", "dev", "lo")
        for conf in ("all", "front"):
            arp = [f"net.ipv4.conf.{conf}.arp_ignore=1", f"net.ipv4.conf.{conf}.arp_announce=2"]
            sh("ip", "netns", "exec", ns[role], "sysctl", "-qw", *arp)
    sh("ip", "-n", ns["sch"], "addr", "add", f"{VIP}/32", "dev", "front")  # it answers ARP
    # The small hop: router `small` (MTU 1280) <-> client `eth0` (MTU 1500).
    rt, cl = ns["rt"], ns["cl"]
    sh("ip", "-n", rt, "link", "add", "small", "type", "veth", "peer", "name", "eth0", "netns", cl)
    sh("ip", "-n", rt, "link", "set", "dev", "small", "mtu", str(SMALL_MTU), "up")
    sh("ip", "-n", rt, "addr", "add", f"{ROUTER_DOWN}/24", "dev", "small")
    sh("ip", "netns", "exec", rt, "sysctl", "-qw", "net.ipv4.ip_forward=1")
    sh("ip", "-n", cl, "link", "set", "lo", "up")
    sh("ip", "-n", cl, "addr", "add", f"{CLIENT}/24", "dev", "eth0")
    sh("ip", "-n", cl, "link", "set", "eth0", "up")
    sh("ip", "-n", cl, "route", "add", "default", "via", ROUTER_DOWN)


@pytest.fixture
def topology(names: dict[str, str], bpf_object: Path) -> Iterator[dict[str, str]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        build(names)
        procs = serve_on_nodes(names)
        yield names
    finally:
        stop_servers(procs)


def port_for(owner: int) -> int:
    base = int(ipaddress.IPv4Address(CLIENT))
    return next(p for p in range(32000, 32100) if TABLE[bucket_of(base, p, BUCKETS)] == owner)


def download(ns: str, sports: list[int], timeout: float = 3.0) -> list[list[Any]]:
    """Each port: one connection from the client that asks for SIZE bytes (recv timeout)."""
    args = [CLIENT, VIP, str(PORT), str(SIZE), str(timeout), json.dumps(sports)]
    out = sh("ip", "netns", "exec", ns, sys.executable, "-c", CLIENT_SCRIPT, *args,
             timeout=len(sports) * (timeout + 2) + 10)  # fmt: skip
    result: list[list[Any]] = json.loads(out)
    return result


def cached_mtu(ns: str) -> str:
    return sh("ip", "-n", ns, "route", "get", CLIENT)


@pytest.mark.parametrize("kind", ["ebpf", "afpacket"])
def test_frag_needed_from_a_small_hop_reaches_the_owning_node(
    topology: dict[str, str], kind: str
) -> None:
    ns = topology
    macs = {
        i: bytes.fromhex(link_info(ns[role], "front")["address"].replace(":", ""))
        for i, role in enumerate(NODE_ORDER)
    }
    plane = Plane(ns["sch"], kind, macs)
    try:
        plane.call("set_assignments", TABLE)
        sports = [port_for(owner) for owner in (1, 2, 0)]  # n1, n2, then the scheduler's own
        results = download(ns["cl"], sports)
        # Every download completes, from the node the table names: each node learnt the
        # small MTU from the router's error, which only the data plane could bring it.
        assert [r[1:] for r in results] == [["n1", SIZE], ["n2", SIZE], ["sch", SIZE]], results
        for role in NODE_ORDER:
            assert f"mtu {SMALL_MTU}" in cached_mtu(ns[role]), (role, cached_mtu(ns[role]))
        counters = plane.call("counters")
        assert counters.icmp_errors >= 3, counters  # one per node at least, routed by flow
        assert counters.passed_other == 0, counters  # none fell to the scheduler's stack
    finally:
        plane.stop()
