"""Issue 4 on a real namespace array: the scheduler's link goes down mid-traffic, the highest live
IP takes over with the synced table, transfers on the other nodes finish intact, the old
scheduler comes back without preempting, and a broken status channel (the admin API) starts no
election while the heartbeat passes."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from pyroute2 import IPRoute

from tests.array.array_harness import CLIENT_IP, VIP, Array, running_array, wait_until
from tests.array.test_netns_builder import arp_replies

SIZE = 24_000_000


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Array]:
    with running_array(tmp_path_factory.mktemp("failover"), nodes=3, backends=2) as arr:
        yield arr


def slow_download(arr: Array, sport: int, out: dict[int, object], started: set[int]) -> None:
    """GET /bytes/SIZE from a fixed source port, read slowly so it spans the failover."""

    def run() -> None:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        s.settimeout(20)
        try:
            s.bind((CLIENT_IP, sport))
            s.connect((VIP, 80))
            s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: v\r\nConnection: close\r\n\r\n" % SIZE)
            got = 0
            head = b""
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline:
                chunk = s.recv(65536)
                if not chunk:
                    break
                if not head:
                    head, _, chunk = chunk.partition(b"\r\n\r\n")
                    started.add(sport)
                got += len(chunk)
                time.sleep(0.004)
            out[sport] = got
        except OSError as e:
            out[sport] = e
        finally:
            s.close()

    arr.in_client(run)


def owners(arr: Array, k: int) -> list[str]:
    return list(arr.admin(k, "/table")["assignments"])


def test_table_changes_reach_peers_before_the_kernel(array: Array) -> None:
    sched = array.scheduler()
    assert sched == 3
    r = array.admin(3, "/panic", method="POST")
    try:
        version = r["table_version"]
        for k in (1, 2):  # pushed before the data plane took it: already there
            assert array.admin(k, "/peer")["table_version"] == version
        # panic: buckets spread evenly over the live nodes, the scheduler pinned
        summary = array.admin(3, "/summary")
        assert summary["panic"] is True
        counts = [owners(array, 3).count(n) for n in ("n1", "n2", "n3")]
        assert max(counts) - min(counts) <= 1 and sum(counts) == 4096
    finally:
        array.admin(3, "/panic", method="DELETE")


EGRESS = 0xFFFFFFF3  # clsact's egress hook


@contextmanager
def admin_replies_dropped(arr: Array, k: int) -> Iterator[None]:
    """Node k's admin API (TCP 9000) answers nobody, its heartbeat (UDP 9000) still does: a
    u32 filter on `front` egress redirects TCP source port 9000 into a veth whose peer is down
    (this kernel has mirred but no drop action)."""
    with IPRoute(netns=arr.node_ns(k)) as ipr:
        ipr.link("add", ifname="bh0", kind="veth", peer="bh1")
        bh0 = ipr.link_lookup(ifname="bh0")[0]
        ipr.link("set", index=bh0, state="up")
        front = ipr.link_lookup(ifname="front")[0]
        ipr.tc("add-filter", "u32", front, parent=EGRESS, prio=9, protocol=0x0800,
               keys=["0x00060000/0x00ff0000+8", "0x23280000/0xffff0000+20"], target=0x10001,
               action={"kind": "mirred", "direction": "egress", "action": "redirect",
                       "ifindex": bh0})
    try:
        yield
    finally:
        with IPRoute(netns=arr.node_ns(k)) as ipr:
            front = ipr.link_lookup(ifname="front")[0]
            ipr.tc("del-filter", index=front, parent=EGRESS, prio=9)
            ipr.link("del", index=ipr.link_lookup(ifname="bh0")[0])


def test_broken_status_channel_starts_no_election(array: Array) -> None:
    table = owners(array, 3)
    sport = next(p for p in range(43000, 44000) if table[array.bucket(p)] == "n1")
    with admin_replies_dropped(array, 3):
        assert array.try_admin(3, "/status") is None  # the status channel is down
        time.sleep(2.0)  # a window of several failure-detection intervals, by design
        for k in (1, 2):
            st = array.admin(k, "/status")
            assert st["role"] == "server" and st["scheduler"] == "n3", array.admin(k, "/peer")
        assert array.request("/whoami", sport)[0] == 200
    assert arp_replies(array.client_ns, "eth0", CLIENT_IP, VIP) == {array.front_mac(3)}


def test_scheduler_link_down_then_back(array: Array) -> None:
    table = owners(array, 3)
    ports = [p for p in range(44000, 46000) if table[array.bucket(p)] in ("n1", "n2")][:4]
    results: dict[int, object] = {}
    started: set[int] = set()
    threads = [threading.Thread(target=slow_download, args=(array, p, results, started))
               for p in ports]
    for t in threads:
        t.start()
    wait_until(lambda: len(started) == len(ports), 10, "every transfer to be under way")
    array.link(3, up=False)
    t0 = time.monotonic()
    try:
        wait_until(lambda: array.scheduler([1, 2]) == 2, 10, "n2 to take over")

        def new_connection_works() -> bool:
            try:
                return array.request("/whoami", 0, timeout=1.0)[0] == 200
            except OSError:
                return False

        wait_until(new_connection_works, 10, "the VIP to answer again")
        gap = time.monotonic() - t0
        assert gap < 5.0, gap
        for t in threads:
            t.join(60)
        assert results == {p: SIZE for p in ports}, results  # zero broken transfers
        # the new scheduler kept every surviving assignment and shows the lost node failed
        after = owners(array, 2)
        for b, old in enumerate(table):
            if old != "n3":
                assert after[b] == old
        assert all(o in ("n1", "n2") for o in after)
        summary = wait_until(
            lambda: (s := array.admin(2, "/summary"))["nodes"][2]["failed"] and s, 10,
            "n3 shown failed",
        )
        assert summary["scheduler"] == "n2"
    finally:
        array.link(3, up=True)
    # the old scheduler returns: it stands down at once and never takes the VIP back
    healed = time.monotonic()
    both_seen = 0.0
    last_both: float | None = None
    while time.monotonic() - healed < 4.0:
        macs = arp_replies(array.client_ns, "eth0", CLIENT_IP, VIP, wait=0.1)
        if len(macs) > 1:
            last_both = last_both or time.monotonic()
            both_seen = time.monotonic() - last_both
        else:
            last_both = None
    assert both_seen < 0.6, f"two ARP answerers for {both_seen:.2f}s"
    wait_until(lambda: (array.try_admin(3, "/status") or {}).get("role") == "server", 10,
               "n3 to rejoin as a server")
    assert array.scheduler() == 2
    assert arp_replies(array.client_ns, "eth0", CLIENT_IP, VIP) == {array.front_mac(2)}
    wait_until(lambda: array.admin(3, "/peer")["table_version"]
               == array.admin(2, "/peer")["table_version"], 10, "n3 to sync the table")
