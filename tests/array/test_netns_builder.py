"""The local array's namespaces on the real kernel (root). Every name carries a random
`lat<hex>-` prefix, so a user's running `dlba-` array is never touched (and not `dlbat`:
the data-plane tests name theirs `dlbat-*`, and a sweep of those must never hit ours).
Every test removes what it made even when it fails; traffic stays in these namespaces."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from pyroute2 import IPRoute, netns

from dlba.local_array import netns_builder, processes, up
from dlba.local_array.topology import VIP, Plan, link_names, make_plan
from scheduler.vip_owner import arp_probe

pytestmark = pytest.mark.array


def _prefix() -> str:
    return f"lat{secrets.token_hex(2)}-"


@pytest.fixture(scope="module")
def plan() -> Iterator[Plan]:
    p = make_plan(2, 2, prefix=_prefix(), redis=True)
    try:
        netns_builder.build(p)
        yield p
    finally:
        netns_builder.teardown(p.prefix)


# --- probes, in pure Python so the test needs no ping/arping binaries -------------------
def _checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(int(x) for x in struct.unpack(f"!{len(data) // 2}H", data))
    s = (s >> 16) + (s & 0xFFFF)
    s += s >> 16
    return ~s & 0xFFFF


def ping(ns: str, dst: str, timeout: float = 2.0) -> bool:
    """One ICMP echo from namespace `ns` to `dst`; True when the matching reply arrives."""
    ident, seq = secrets.randbits(16), 1
    sock = processes.run_in_netns(
        ns, lambda: socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP)
    )
    with sock:
        body = struct.pack("!BBHHH", 8, 0, 0, ident, seq) + b"dlba"
        body = body[:2] + struct.pack("!H", _checksum(body)) + body[4:]
        try:
            sock.sendto(body, (dst, 0))
        except OSError:  # no route: unreachable by construction
            return False
        end = time.monotonic() + timeout
        while (left := end - time.monotonic()) > 0:
            sock.settimeout(left)
            try:
                pkt, (src, _) = sock.recvfrom(2048)
            except TimeoutError:
                return False
            icmp = pkt[(pkt[0] & 0x0F) * 4 :]
            typ, _, _, rid, rseq = struct.unpack("!BBHHH", icmp[:8])
            if typ == 0 and src == dst and rid == ident and rseq == seq:
                return True
    return False


def arp_replies(ns: str, ifname: str, src_ip: str, target: str, wait: float = 1.0) -> set[str]:
    """Send one ARP who-has `target` out of `ifname` in `ns`; the MACs that answered."""
    found = processes.run_in_netns(ns, lambda: arp_probe(ifname, src_ip, target, wait))
    return {mac.hex(":") for mac in found}


def _links_inside(ns: str) -> set[str]:
    with IPRoute(netns=ns) as ipr:
        return {str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}


def _addrs_on(ns: str, ifname: str) -> set[str]:
    with IPRoute(netns=ns) as ipr:
        idx = ipr.link_lookup(ifname=ifname)[0]
        return {str(a.get_attr("IFA_ADDRESS")) for a in ipr.get_addr(index=idx)}


def _root_links(prefix: str) -> set[str]:
    with IPRoute() as ipr:
        names = {str(link.get_attr("IFLA_IFNAME")) for link in ipr.get_links()}
    return {n for n in names if n.startswith(prefix)}


def _read_sysctl(ns: str, name: str) -> str:
    def read() -> str:
        with open("/proc/sys/" + name.replace(".", "/")) as f:
            return f.read().strip()

    return processes.run_in_netns(ns, read)


# --- the topology -----------------------------------------------------------------------
def test_namespaces_and_links_exist(plan: Plan) -> None:
    assert {ns.name for ns in plan.namespaces} <= set(netns.listnetns())
    assert set(link_names(plan)) == _root_links(plan.prefix)
    for k in (1, 2):
        assert {"lo", "front", "back"} <= _links_inside(plan.node_ns(k))
        assert plan.node_front(k) in _addrs_on(plan.node_ns(k), "front")
        assert plan.node_back(k) in _addrs_on(plan.node_ns(k), "back")
    assert "198.18.0.2" in _addrs_on(plan.client_ns, "eth0")
    assert plan.backend_address(2) in _addrs_on(plan.backend_ns(2), "eth0")
    assert "198.18.1.2" in _addrs_on(plan.redis_ns, "eth0")
    with IPRoute() as ipr:
        br = ipr.link_lookup(ifname=plan.front_bridge)[0]
        ports = {
            str(li.get_attr("IFLA_IFNAME"))
            for li in ipr.get_links()
            if li.get_attr("IFLA_MASTER") == br
        }
    assert ports == {f"{plan.prefix}ce", f"{plan.prefix}n1f", f"{plan.prefix}n2f"}


def test_front_and_back_networks_carry_traffic(plan: Plan) -> None:
    for k in (1, 2):
        assert ping(plan.client_ns, plan.node_front(k)), f"client -> n{k} front"
        assert ping(plan.backend_ns(1), plan.node_back(k)), f"b1 -> n{k} back"
    assert ping(plan.node_ns(1), plan.backend_address(2))
    assert ping(plan.node_ns(2), "198.18.1.2"), "node -> redis"
    # The two networks are separate switches: a back end cannot reach the client.
    assert not ping(plan.backend_ns(1), "198.18.0.2", timeout=0.5)


def test_vip_on_every_node_lo_and_arp_sysctls(plan: Plan) -> None:
    for k in (1, 2):
        ns = plan.node_ns(k)
        assert VIP in _addrs_on(ns, "lo")
        for dev in ("all", "front"):
            assert _read_sysctl(ns, f"net.ipv4.conf.{dev}.arp_ignore") == "1"
            assert _read_sysctl(ns, f"net.ipv4.conf.{dev}.arp_announce") == "2"
        assert _read_sysctl(ns, "net.ipv4.conf.all.rp_filter") == "0"
    assert VIP not in _addrs_on(plan.client_ns, "lo")


def test_no_node_answers_arp_for_the_vip(plan: Plan) -> None:
    # The probe works: a node answers for its own front address...
    assert arp_replies(plan.client_ns, "eth0", "198.18.0.2", plan.node_front(1))
    # ...but nobody answers for the VIP, which only the scheduler may claim.
    assert arp_replies(plan.client_ns, "eth0", "198.18.0.2", VIP) == set()
    # And the silence is arp_ignore's doing: without it, n1 would answer (control).
    ns = plan.node_ns(1)
    items = [("net.ipv4.conf.all.arp_ignore", "0"), ("net.ipv4.conf.front.arp_ignore", "0")]
    processes.write_sysctls(ns, items)
    try:
        assert len(arp_replies(plan.client_ns, "eth0", "198.18.0.2", VIP)) == 1
    finally:
        processes.write_sysctls(ns, [(n, "1") for n, _ in items])


def test_processes_start_in_namespace_and_stop_by_pid(plan: Plan, tmp_path: Path) -> None:
    addr = plan.backend_address(1)
    argv = [sys.executable, "-m", "http.server", "--bind", addr, "8080"]
    p = processes.start("web", argv, tmp_path, plan.backend_ns(1))
    try:
        processes.wait_for_port(addr, 8080, plan.node_ns(1), 15.0, [p])
        assert processes.http_status(addr, 8080, "/", plan.node_ns(1)) == 200
        assert (tmp_path / "pids" / "web.pid").read_text().split()[0] == str(p.pid)
        assert (tmp_path / "logs" / "web.log").exists()
        assert processes.stop_recorded(tmp_path) == ["web"]
        # stop_recorded may have reaped it already; Popen learns that on its next wait
        assert p.popen.wait(10) is not None
        assert not (tmp_path / "pids" / "web.pid").exists()
    finally:
        processes.stop_pid(p.pid)


def test_wait_for_port_has_a_deadline(plan: Plan) -> None:
    t = time.monotonic()
    with pytest.raises(TimeoutError):
        processes.wait_for_port(plan.backend_address(2), 8080, plan.node_ns(1), deadline_s=0.5)
    assert time.monotonic() - t < 3


# --- teardown ---------------------------------------------------------------------------
def _assert_gone(prefix: str) -> None:
    assert not [n for n in netns.listnetns() if n.startswith(prefix)]
    assert not _root_links(prefix)


def test_teardown_leaves_nothing_and_is_idempotent(tmp_path: Path) -> None:
    p = make_plan(1, 1, prefix=_prefix())
    try:
        netns_builder.build(p)
        with pytest.raises(FileExistsError):
            netns_builder.build(p)  # never half-overwrite a running array
        sleeper = processes.start("s", ["sleep", "300"], tmp_path, p.node_ns(1))
        removed = netns_builder.teardown(p.prefix)
        assert sleeper.pid in removed.processes
        assert sleeper.popen.wait(timeout=5) is not None
        _assert_gone(p.prefix)
        assert not netns_builder.teardown(p.prefix)  # second run: nothing left
    finally:
        netns_builder.teardown(p.prefix)


def test_down_removes_a_crashed_runs_leftovers(tmp_path: Path) -> None:
    p = make_plan(2, 1, prefix=_prefix())
    state = tmp_path / "run"
    try:
        netns_builder.build(p)
        # A crashed run: processes with and without pid files, a stray bridge, no `up` left.
        recorded = processes.start("b1", ["sleep", "300"], state, p.backend_ns(1))
        unrecorded = processes.start("n1", ["sleep", "300"], state, p.node_ns(1))
        (state / "pids" / "n1.pid").unlink()
        with IPRoute() as ipr:
            ipr.link("add", ifname=f"{p.prefix}stray", kind="bridge")
        assert up.down_main(["--state", str(state), "--prefix", p.prefix]) == 0
        for proc in (recorded, unrecorded):
            assert proc.popen.wait(timeout=5) is not None
        _assert_gone(p.prefix)
        assert not list((state / "pids").glob("*.pid"))
        assert up.down_main(["--state", str(state), "--prefix", p.prefix]) == 0
    finally:
        netns_builder.teardown(p.prefix)


# --- dlba up --detach / dlba down, with stand-ins for the node and demo back end --------
_FAKE_SERVER = (
    "import http.server, sys\n"
    "class H(http.server.BaseHTTPRequestHandler):\n"
    "    def do_GET(self):\n"
    "        self.send_response(200); self.end_headers(); self.wfile.write(sys.argv[1].encode())\n"
    "http.server.HTTPServer((sys.argv[2], int(sys.argv[3])), H).serve_forever()\n"
)


def test_up_detach_then_down(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                             capsys: pytest.CaptureFixture[str]) -> None:  # fmt: skip
    # The real `dlba node` / `dlba demo-backend` are other modules' business; stand-ins that
    # listen on the same addresses prove the namespaces, start order and readiness checks.
    def fake_node(config: Path, name: str) -> list[str]:
        assert config.name == "cluster.toml" and config.exists()
        k = int(name[1:])
        return [sys.executable, "-c", _FAKE_SERVER, name, f"198.18.0.{10 + k}", "9000"]

    def fake_backend(name: str, listen: str) -> list[str]:
        host, port = listen.rsplit(":", 1)
        return [sys.executable, "-c", _FAKE_SERVER, name, host, port]

    monkeypatch.setattr(up, "node_command", fake_node)
    monkeypatch.setattr(up, "backend_command", fake_backend)
    prefix, state = _prefix(), tmp_path / "run"
    args = ["--nodes", "2", "--backends", "2", "--state", str(state), "--prefix", prefix]
    handler = signal.getsignal(signal.SIGTERM)
    try:
        assert up.up_main([*args, "--detach"]) == 0
        # `up` gives the caller its SIGTERM handler back: a handler left behind would reach
        # pyroute2's forked helpers, which are stopped with SIGTERM.
        assert signal.getsignal(signal.SIGTERM) is handler
        out = capsys.readouterr().out
        token = (state / "admin.token").read_text().strip()
        assert "http://198.18.0.100/" in out and "https://198.18.0.100/" in out
        assert f"http://198.18.0.11:9000/?token={token}" in out
        assert f"ip netns exec {prefix}client curl" in out
        assert (state / "cluster.toml").exists() and (state / "certs" / "ca.pem").exists()
        assert json.loads((state / "array.json").read_text())["prefix"] == prefix
        pids = {f.stem for f in (state / "pids").glob("*.pid")}
        assert pids == {"n1", "n2", "b1", "b2", "_supervisor"}
        assert processes.http_status("198.18.0.12", 9000, "/healthz", f"{prefix}client") == 200
        # A second `up` on a running array refuses instead of tearing it down.
        assert up.up_main(args) == 2
        running = processes.recorded(state)
        assert up.down_main(["--state", str(state), "--prefix", prefix]) == 0
        _assert_gone(prefix)
        assert not any(processes.alive(pid, st) for _, pid, st in running)
    finally:
        up.down_main(["--state", str(state), "--prefix", prefix])
        netns_builder.teardown(prefix)


def test_up_without_root_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    monkeypatch.setattr(up, "backend_command", lambda name, listen: [
        sys.executable, "-c", _FAKE_SERVER, name, *listen.rsplit(":", 1)])  # fmt: skip
    monkeypatch.setattr(up, "node_command", lambda config, name: ["false"])
    state, ns = tmp_path / "run", f"{_prefix()}lo"
    # The loopback mode runs in a private namespace (children inherit the calling thread's
    # namespace), so its 127.0.0.1 ports never meet the host's or a user's loopback node.
    netns.create(ns)
    try:
        with IPRoute(netns=ns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname="lo")[0], state="up")
        argv = ["--backends", "1", "--state", str(state), "--detach"]
        rc = processes.run_in_netns(ns, lambda: up.up_main(argv))
        out = capsys.readouterr()
        assert "network namespaces need root" in out.out
        # The stand-in node exits at once: `up` reports it instead of waiting forever.
        assert rc == 1 and "n1 exited" in out.err
        cfg = (state / "cluster.toml").read_text()
        assert "vip" not in cfg and '"127.0.0.1' in cfg
        assert not list((state / "pids").glob("*.pid"))  # the back end was stopped again
    finally:
        processes.stop_recorded(state)
        netns_builder.teardown(ns)
