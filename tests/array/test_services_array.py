"""Two services on three VIPs (one a /28) on a real namespace array: pushed live, served
through every VIP by the same client table, a port no service names dropped in the data
plane, every VIP moved by a failover, and a VIP removed by push answered nowhere after."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from dlba.local_array import processes
from tests.array.array_harness import CLIENT_IP, VIP, Array, dlba, running_array, wait_until
from tests.array.test_netns_builder import arp_replies

pytestmark = pytest.mark.array

PREFIX = "198.18.0.112/28"
LONE = "198.18.0.200"
SERVICES = f'''
[[services]]
name = "shop"
vips = ["{VIP}", "{PREFIX}"]
ports = [80, 443]

[[services]]
name = "api"
vips = ["{LONE}"]
ports = [8080]
tls_ports = []

[[classes]]
name = "gold"
priority = 0
vips = ["198.18.0.112/29"]

[[classes]]
name = "silver"
priority = 1
vips = ["198.18.0.120/29"]
'''


def with_services(arr: Array, services: str, name: str) -> Path:
    """The array's config with every node listening on all addresses (80 and 8080: the
    services' ports on every VIP) and these services."""
    text = (arr.state / "cluster.toml").read_text()
    text = re.sub(r'listen = \[[^\]]*\]', 'listen = [":80", ":8080"]', text)
    path = arr.state / name
    path.write_text(text + services)
    return path


def get(arr: Array, vip: str, port: int, sport: int, timeout: float = 3.0) -> str:
    """GET /whoami through vip:port from the client namespace: the back end's name."""
    def call() -> str:
        with socket.socket() as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.settimeout(timeout)
            s.bind((CLIENT_IP, sport))
            s.connect((vip, port))
            s.sendall(b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
        head, _, body = data.partition(b"\r\n\r\n")
        assert head.split()[1] == b"200", head
        return body.decode().strip()

    result: str = arr.in_client(call)
    return result


def refused_or_silent(arr: Array, vip: str, port: int, sport: int) -> bool:
    try:
        get(arr, vip, port, sport, timeout=1.0)
    except OSError:
        return True
    return False


def lo_has(arr: Array, k: int, network: str) -> bool:
    def check() -> bool:
        from pyroute2 import IPRoute
        with IPRoute() as ipr:
            return any(f"{m.get_attr('IFA_ADDRESS')}/{m['prefixlen']}" == network
                       for m in ipr.get_addr(label="lo"))

    return bool(processes.run_in_netns(arr.node_ns(k), check))


def served_everywhere(arr: Array, vips: list[tuple[str, int]], base: int) -> None:
    for i, (vip, port) in enumerate(vips):
        for j in range(3):
            try:
                assert get(arr, vip, port, base + 10 * i + j) in ("b1", "b2")
            except OSError as e:
                raise AssertionError(f"{vip}:{port} from port {base + 10 * i + j}: {e}") from e


def test_two_services_on_three_vips_pushed_served_moved_and_removed(tmp_path: Path) -> None:
    with running_array(tmp_path, nodes=3, backends=2) as arr:
        r = dlba("config", "push", str(with_services(arr, SERVICES, "services.toml")),
                 "--state", str(arr.state))
        assert r.returncode == 0, r.stderr
        every = [(VIP, 80), ("198.18.0.112", 80), ("198.18.0.127", 80), (LONE, 8080)]
        wait_until(lambda: not refused_or_silent(arr, "198.18.0.119", 80, 42000), 10,
                   "a new VIP to answer")
        served_everywhere(arr, every, 42100)
        for k in (1, 2, 3):
            assert all(lo_has(arr, k, f"198.18.0.{i}/32") for i in (112, 127, 200))
        # a port no service names on that VIP: dropped by the scheduler, never reaches a node
        assert refused_or_silent(arr, LONE, 80, 42300)
        assert refused_or_silent(arr, "198.18.0.113", 8080, 42301)
        drops = arr.admin(3, "/summary")["dataplane"]["drops"]["port"]
        assert drops >= 2, drops

        # failover: the scheduler's link goes down, every VIP moves to the new one
        arr.link(3, up=False)
        try:
            wait_until(lambda: arr.scheduler([1, 2]) == 2, 15, "n2 to take over")
            wait_until(lambda: not refused_or_silent(arr, "198.18.0.126", 80, 42400), 10,
                       "the /28 to answer again")
            served_everywhere(arr, every, 42500)
            assert arp_replies(arr.client_ns, "eth0", CLIENT_IP, "198.18.0.121") == {
                arr.front_mac(2)}
        finally:
            arr.link(3, up=True)
        wait_until(lambda: (arr.try_admin(3, "/status") or {}).get("role") == "server", 15,
                   "n3 to rejoin as a server")

        # the /28 and the api service removed by push: answered nowhere, gone from lo
        fewer = SERVICES.split("[[services]]\nname = \"api\"")[0].replace(
            f', "{PREFIX}"', "")
        r = dlba("config", "push", str(with_services(arr, fewer, "fewer.toml")),
                 "--state", str(arr.state))
        assert r.returncode == 0, r.stderr
        for gone in ("198.18.0.115", LONE):
            wait_until(lambda g=gone: not arp_replies(arr.client_ns, "eth0", CLIENT_IP, g,  # type: ignore[misc]
                                                      wait=0.3), 10, f"{gone} unanswered")
        for k in (1, 2, 3):
            wait_until(lambda k=k: not lo_has(arr, k, "198.18.0.127/32"), 10,  # type: ignore[misc]
                       f"n{k} to drop the /28")
        served_everywhere(arr, [(VIP, 80)], 42600)
