"""Real TCP through both data planes: client -> scheduler -> node, and node -> client directly.

Topology (all in throwaway `dlbat-*` namespaces): a bridge in its own namespace is the switch;
a client, a scheduler (node 0) and two nodes hang off it. Every node has the VIP on lo with
arp_ignore=1/arp_announce=2; the scheduler also has it on `front`, so it alone answers ARP for
it. Each node runs a tiny TCP server on the VIP that names itself and sends a large response.
"""

from __future__ import annotations

import ipaddress
import json
import multiprocessing
import subprocess
import sys
import time
from collections.abc import Iterator
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import pytest

from scheduler.frame_decision import bucket_of

pytestmark = pytest.mark.array

VIP = "198.18.200.100"
CLIENT = "198.18.200.2"
HOSTS = {"sch": "198.18.200.10", "n1": "198.18.200.11", "n2": "198.18.200.12"}
NODE_ORDER = ["sch", "n1", "n2"]  # node index = position
BUCKETS = 16
PORT = 80
RESPONSE = 64 * 1024

SERVER = """
import socket, sys
name, vip, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
s = socket.socket()
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind((vip, port))
s.listen(128)
s.settimeout(90)  # bounded: exits after 90 s without a client
print("ready", flush=True)
while True:
    try:
        c, _ = s.accept()
    except OSError:
        break
    c.settimeout(5)
    try:
        req = b""
        while not req.endswith(b"\\n") and len(req) < 64:
            d = c.recv(64)
            if not d:
                break
            req += d
        c.sendall(name.encode().ljust(16) + b"x" * int(req.strip() or 0))
    except (OSError, ValueError):
        pass
    finally:
        c.close()
"""

CLIENT_SCRIPT = """
import json, socket, sys
src, vip, port, size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
timeout = float(sys.argv[5])
out = []
for sport in json.loads(sys.argv[6]):
    c = socket.socket()
    c.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    c.settimeout(timeout)
    try:
        c.bind((src, sport))
        c.connect((vip, port))
        c.sendall(b"%d\\n" % size)
        data = b""
        while len(data) < size + 16:
            d = c.recv(65536)
            if not d:
                break
            data += d
        out.append([sport, data[:16].decode().strip(), len(data) - 16])
    except OSError as exc:
        out.append([sport, "error: " + type(exc).__name__, 0])
    finally:
        c.close()
print(json.dumps(out))
"""

PING_SCRIPT = """
import socket, struct, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
s.settimeout(2)
body = struct.pack("!BBHHH", 8, 0, 0, 0x1dba, 1) + b"dlbaping"  # even length
csum = sum(struct.unpack("!%dH" % (len(body) // 2), body))
csum = (csum >> 16) + (csum & 0xFFFF)
csum = ~(csum + (csum >> 16)) & 0xFFFF
s.sendto(body[:2] + struct.pack("!H", csum) + body[4:], (sys.argv[1], 0))
deadline = time.monotonic() + 2
while time.monotonic() < deadline:
    data, addr = s.recvfrom(2048)
    if addr[0] == sys.argv[1] and data[20] == 0 and data[24:26] == b"\\x1d\\xba":
        sys.exit(0)
sys.exit(1)
"""


def sh(*args: str, timeout: float = 20) -> str:
    res = subprocess.run(args, capture_output=True, text=True, timeout=timeout, check=False)
    if res.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed: {res.stderr.strip()}")
    return res.stdout


def link_info(ns: str, dev: str) -> dict[str, Any]:
    info: list[dict[str, Any]] = json.loads(sh("ip", "-n", ns, "-j", "-s", "link", "show", dev))
    return info[0]


def build_topology(ns: dict[str, str]) -> None:
    for name in ns.values():
        sh("ip", "netns", "add", name)
    sw = ns["sw"]
    sh("ip", "-n", sw, "link", "add", "br0", "type", "bridge")
    sh("ip", "-n", sw, "link", "set", "br0", "up")
    hosts = {"cl": ("eth0", CLIENT), **{h: ("front", a) for h, a in HOSTS.items()}}
    for role, (dev, addr) in hosts.items():
        peer = f"p-{role}"
        sh("ip", "-n", sw, "link", "add", peer, "type", "veth", "peer", "name", dev,
           "netns", ns[role])  # fmt: skip
        sh("ip", "-n", sw, "link", "set", peer, "master", "br0", "up")
        sh("ip", "-n", ns[role], "link", "set", "lo", "up")
        sh("ip", "-n", ns[role], "addr", "add", f"{addr}/24", "dev", dev)
        sh("ip", "-n", ns[role], "link", "set", dev, "up")
    for role in ("n1", "n2"):
        sh("ip", "-n", ns[role], "addr", "add", f"{VIP}/32", "dev", "lo")
        for conf in ("all", "front"):
            arp = [f"net.ipv4.conf.{conf}.arp_ignore=1", f"net.ipv4.conf.{conf}.arp_announce=2"]
            sh("ip", "netns", "exec", ns[role], "sysctl", "-qw", *arp)
    # The scheduler answers ARP for the VIP (VIP ownership proper is another module's job).
    sh("ip", "-n", ns["sch"], "addr", "add", f"{VIP}/32", "dev", "front")


def dataplane_child(ns: str, kind: str, macs: dict[int, bytes], conn: Connection) -> None:
    """Runs in the scheduler's namespace (setns, as the scheduler role does): owns the plane."""
    from pyroute2 import netns

    from scheduler.dataplane import make_dataplane

    netns.setns(ns, flags=0)
    dp = make_dataplane("front", VIP, BUCKETS, prefer=kind)
    try:
        dp.install()
        dp.set_nodes(macs)
        dp.set_self(0, macs[0])
        dp.set_port_rules({PORT}, {}, None)
        conn.send(type(dp).__name__)
        while conn.poll(120):
            method, args = conn.recv()
            if method == "stop":
                break
            conn.send(getattr(dp, method)(*args))
    finally:
        dp.close()
        conn.send("closed")


class Plane:
    def __init__(self, ns: str, kind: str, macs: dict[int, bytes]) -> None:
        ctx = multiprocessing.get_context("fork")
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=dataplane_child, args=(ns, kind, macs, child), daemon=True)
        self.proc.start()
        if not self.conn.poll(30):
            raise AssertionError("data plane did not start within 30 s")
        self.kind: str = self.conn.recv()

    def call(self, method: str, *args: Any) -> Any:
        self.conn.send((method, args))
        if not self.conn.poll(30):
            raise AssertionError(f"data plane did not answer {method}")
        return self.conn.recv()

    def stop(self) -> None:
        if self.proc.is_alive():
            try:
                self.conn.send(("stop", ()))
                self.conn.poll(10)
            except OSError:
                pass
            self.proc.join(5)
        if self.proc.is_alive():
            self.proc.kill()  # by PID
            self.proc.join(5)


def connect_many(ns: str, sports: list[int], timeout: float = 3.0) -> list[list[Any]]:
    args = [CLIENT, VIP, str(PORT), str(RESPONSE), str(timeout), json.dumps(sports)]
    out = sh("ip", "netns", "exec", ns, sys.executable, "-c", CLIENT_SCRIPT, *args,
             timeout=len(sports) * (timeout + 1) + 10)  # fmt: skip
    result: list[list[Any]] = json.loads(out)
    return result


def serve_on_nodes(names: dict[str, str]) -> list[subprocess.Popen[str]]:
    """One SERVER per node namespace, each ready when this returns (the caller kills them)."""
    procs: list[subprocess.Popen[str]] = []
    for role in NODE_ORDER:
        p = subprocess.Popen(
            ["ip", "netns", "exec", names[role], sys.executable, "-c", SERVER,
             role, VIP, str(PORT)],
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        procs.append(p)
        assert p.stdout is not None and p.stdout.readline().strip() == "ready"
    return procs


def stop_servers(procs: list[subprocess.Popen[str]]) -> None:
    for p in procs:
        p.kill()  # by PID
        p.wait(5)


@pytest.fixture
def topology(netns_names: dict[str, str], bpf_object: Path) -> Iterator[dict[str, str]]:
    procs: list[subprocess.Popen[str]] = []
    try:
        build_topology(netns_names)
        procs = serve_on_nodes(netns_names)
        yield netns_names
    finally:
        stop_servers(procs)


@pytest.mark.parametrize("kind", ["ebpf", "afpacket"])
def test_tcp_reaches_table_owner_and_answers_bypass_scheduler(
    topology: dict[str, str], kind: str
) -> None:
    ns = topology
    macs = {
        i: bytes.fromhex(link_info(ns[role], "front")["address"].replace(":", ""))
        for i, role in enumerate(NODE_ORDER)
    }
    table = [(i * 7) % 3 for i in range(BUCKETS)]
    plane = Plane(ns["sch"], kind, macs)
    try:
        assert plane.kind == {"ebpf": "EbpfDataPlane", "afpacket": "AfPacketDataPlane"}[kind]
        plane.call("set_assignments", table)
        tx_before = link_info(ns["sch"], "front")["stats64"]["tx"]["bytes"]
        sports = list(range(31000, 31024))
        t0 = time.monotonic_ns()
        results = connect_many(ns["cl"], sports)
        tx_growth = link_info(ns["sch"], "front")["stats64"]["tx"]["bytes"] - tx_before

        src = int(ipaddress.IPv4Address(CLIENT))
        by_node = {role: 0 for role in NODE_ORDER}
        for sport, served_by, nbytes in results:
            expected = NODE_ORDER[table[bucket_of(src, sport, BUCKETS)]]
            assert (served_by, nbytes) == (expected, RESPONSE), f"port {sport}"
            by_node[served_by] += nbytes
        assert all(by_node.values()), by_node  # every node, the scheduler too, served some
        # Responses from n1/n2 go straight to the client: the scheduler's front TX carries its
        # own responses plus the small forwarded client->node segments, never theirs.
        others = by_node["n1"] + by_node["n2"]
        assert tx_growth < by_node["sch"] + others // 4, (tx_growth, by_node)

        counters = plane.call("counters")
        assert counters.redirected > 0 and counters.passed_self > 0
        assert set(counters.packets) == {0, 1, 2}
        stamps = plane.call("last_access_ns")
        used = {bucket_of(src, p, BUCKETS) for p in sports}
        assert all(stamps[b] >= t0 - 20_000_000 for b in used)  # coarse clock: a tick

        # A new table moves new connections at once (whole-table swap).
        plane.call("set_assignments", [2] * BUCKETS)
        assert {r[1] for r in connect_many(ns["cl"], [31100, 31101, 31102])} == {"n2"}

        # Deny ACL: the client's network is dropped in the data plane and counted.
        plane.call("set_deny", [f"{CLIENT}/32"])
        assert connect_many(ns["cl"], [31200], timeout=1.0)[0][1].startswith("error")
        assert plane.call("counters").drops["acl"] > 0
        plane.call("set_deny", [])
        assert connect_many(ns["cl"], [31201])[0][1] == "n2"

        # Port rules (seed 001): pinned, then the default node, then no rule at all: dropped.
        plane.call("set_port_rules", set(), {PORT: 1}, None)
        assert connect_many(ns["cl"], [31300])[0][1] == "n1"
        plane.call("set_port_rules", set(), {}, 0)
        assert connect_many(ns["cl"], [31301])[0][1] == "sch"
        plane.call("set_port_rules", set(), {}, None)
        assert connect_many(ns["cl"], [31302], timeout=1.0)[0][1].startswith("error")
        assert plane.call("counters").drops["port"] > 0

        # ICMP to the VIP is answered by the scheduler itself (it is not TCP/UDP to balance).
        sh("ip", "netns", "exec", ns["cl"], sys.executable, "-c", PING_SCRIPT, VIP)
    finally:
        plane.stop()
