"""Real TCP through both data planes (eBPF and AF_PACKET) to many VIPs (seed 002): every VIP
is balanced by the one client table, a port no service names on a VIP is dropped, and a VIP
taken out of the set is no longer forwarded. Topology and helpers: test_dataplane_forwarding."""

from __future__ import annotations

import ipaddress
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from scheduler.frame_decision import bucket_of
from tests.array.test_dataplane_forwarding import (
    BUCKETS,
    CLIENT,
    CLIENT_SCRIPT,
    NODE_ORDER,
    RESPONSE,
    SERVER,
    VIP,
    Plane,
    build_topology,
    link_info,
    sh,
    stop_servers,
)

pytestmark = pytest.mark.array

PREFIX = "198.18.200.112/30"
LONE = "198.18.200.120"
EXTRA = [str(a) for a in ipaddress.IPv4Network(PREFIX)] + [LONE]


def connect(ns: str, vip: str, port: int, sports: list[int], timeout: float = 3.0
            ) -> list[list[Any]]:
    args = [CLIENT, vip, str(port), str(RESPONSE), str(timeout), json.dumps(sports)]
    out = sh("ip", "netns", "exec", ns, sys.executable, "-c", CLIENT_SCRIPT, *args,
             timeout=len(sports) * (timeout + 1) + 10)  # fmt: skip
    result: list[list[Any]] = json.loads(out)
    return result


@pytest.fixture
def topology(netns_names: dict[str, str], bpf_object: Path) -> Iterator[dict[str, str]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        build_topology(netns_names)
        for vip in EXTRA:  # the nodes hold every VIP on lo; the scheduler answers ARP
            for role in ("n1", "n2"):
                sh("ip", "-n", netns_names[role], "addr", "add", f"{vip}/32", "dev", "lo")
            sh("ip", "-n", netns_names["sch"], "addr", "add", f"{vip}/32", "dev", "front")
        for role in NODE_ORDER:  # one server per node on every address, port 80
            p = subprocess.Popen(["ip", "netns", "exec", netns_names[role], sys.executable, "-c",
                                  SERVER, role, "0.0.0.0", "80"], stdout=subprocess.PIPE,
                                 text=True)  # fmt: skip
            procs.append(p)
            assert p.stdout is not None and p.stdout.readline().strip() == "ready"
        yield netns_names
    finally:
        stop_servers(procs)


@pytest.mark.parametrize("kind", ["ebpf", "afpacket"])
def test_many_vips_one_table_unnamed_ports_dropped_removed_vip_left_alone(
        topology: dict[str, str], kind: str) -> None:
    ns = topology
    macs = {i: bytes.fromhex(link_info(ns[role], "front")["address"].replace(":", ""))
            for i, role in enumerate(NODE_ORDER)}
    table = [(i * 5) % 3 for i in range(BUCKETS)]
    plane = Plane(ns["sch"], kind, macs)
    try:
        plane.call("set_assignments", table)
        plane.call("set_port_rules", {80, 8080}, {}, None)
        plane.call("set_vips", {VIP: {80}, **{v: {80} for v in EXTRA[:-1]}, LONE: {80, 8080}})
        src = int(ipaddress.IPv4Address(CLIENT))
        for i, vip in enumerate([VIP, *EXTRA]):
            sports = list(range(32000 + 100 * i, 32000 + 100 * i + 6))
            for sport, served_by, nbytes in connect(ns["cl"], vip, 80, sports):
                expected = NODE_ORDER[table[bucket_of(src, sport, BUCKETS)]]
                assert (served_by, nbytes) == (expected, RESPONSE), f"{vip} port {sport}"
        # 8080 is named on LONE only: elsewhere the scheduler drops it (a timeout, not the
        # refusal a node without a listener on 8080 answers with).
        assert connect(ns["cl"], LONE, 8080, [33000])[0][1] == "error: ConnectionRefusedError"
        dropped = connect(ns["cl"], EXTRA[1], 8080, [33001], timeout=1.0)[0][1]
        assert dropped == "error: TimeoutError", dropped
        assert plane.call("counters").drops["port"] > 0
        # The /30 leaves the set: its frames are no longer ours, the scheduler's own stack
        # (which has the address on front here) answers them, whatever the table says.
        plane.call("set_assignments", [1] * BUCKETS)
        plane.call("set_vips", {VIP: {80}, LONE: {80}})
        assert {r[1] for r in connect(ns["cl"], EXTRA[2], 80, [33100, 33101])} == {"sch"}
        assert {r[1] for r in connect(ns["cl"], LONE, 80, [33102, 33103])} == {"n1"}
    finally:
        plane.stop()
