"""Fencing and fast failure on a real namespace array.

* The scheduler's `front` link goes down, the others elect a new scheduler, the link comes
  back: sampled every ~50 ms for 3 s, never two nodes say `scheduler` and never two MACs answer
  ARP for the VIP (the returning node stood down when its link fell and asks before it serves).
* A non-scheduler node's processes die: the scheduler's heartbeat to every server fails it, and
  new connections hashed to its buckets work again, with a status sweep too slow (60 s apart)
  to be what noticed.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from dlba.local_array import config_gen
from dlba.local_array.topology import make_plan
from tests.array.array_harness import (
    CLIENT_IP,
    VIP,
    Array,
    kill_node,
    running_array,
    supervision_paused,
    wait_until,
)
from tests.array.test_netns_builder import arp_replies


@pytest.fixture
def array(tmp_path: Path) -> Iterator[Array]:
    with running_array(tmp_path, nodes=3, backends=2) as arr:
        yield arr


def roles(arr: Array) -> dict[int, str]:
    out = {}
    for k in range(1, arr.nodes + 1):
        st = arr.try_admin(k, "/status")
        out[k] = st.get("role", "?") if st else "unreachable"
    return out


def test_a_returning_scheduler_never_answers_beside_the_new_one(array: Array) -> None:
    assert array.scheduler() == 3
    macs = {array.front_mac(k): k for k in (1, 2, 3)}
    array.link(3, up=False)
    try:
        wait_until(lambda: array.scheduler([1, 2]) == 2, 10, "n2 to take over")
        wait_until(lambda: arp_replies(array.client_ns, "eth0", CLIENT_IP, VIP, wait=0.1)
                   == {array.front_mac(2)}, 5, "n2 alone to answer ARP")
    finally:
        array.link(3, up=True)
    seen: list[tuple[float, dict[int, str], set[int]]] = []
    healed = time.monotonic()
    while time.monotonic() - healed < 3.0:
        answerers = {macs.get(m, 0) for m in
                     arp_replies(array.client_ns, "eth0", CLIENT_IP, VIP, wait=0.05)}
        seen.append((time.monotonic() - healed, roles(array), answerers))
    doubles = [s for s in seen
               if sum(r == "scheduler" for r in s[1].values()) > 1 or len(s[2]) > 1]
    assert doubles == [], f"two schedulers or ARP answerers after the link came back: {doubles}"
    assert len(seen) >= 10, seen  # it did sample the window
    wait_until(lambda: (array.try_admin(3, "/status") or {}).get("scheduler") == "n2", 10,
               "n3 to follow n2")
    assert arp_replies(array.client_ns, "eth0", CLIENT_IP, VIP) == {array.front_mac(2)}


def new_connection_gap(arr: Array, k: int, ports: list[int], limit_s: float) -> float | None:
    """kill -9 every process of node k, then new connections from `ports` (its buckets) in a
    bounded loop: seconds from the kill until one succeeds, None if none did within limit_s."""
    kill_node(arr, k)
    killed = time.monotonic()
    i = 0
    while (elapsed := time.monotonic() - killed) < limit_s:
        port = ports[i % len(ports)]
        i += 1
        try:
            if arr.request("/whoami", port, timeout=0.5)[0] == 200:
                return elapsed
        except OSError:
            pass
        time.sleep(0.02)
    return None


def test_a_dead_server_loses_its_buckets_without_waiting_for_the_sweep(tmp_path: Path) -> None:
    state = tmp_path / "state"
    state.mkdir()
    config = state / "slow_sweep.toml"
    text = config_gen.config_for_plan(make_plan(3, 2))
    config.write_text(text.replace("[cluster]\n", "[cluster]\nsweep_interval_s = 60.0\n", 1))
    with running_array(tmp_path, nodes=3, backends=2, up_args=("--config", str(config))) as arr:
        assert arr.scheduler() == 3
        table = wait_until(
            lambda: (t := arr.admin(3, "/table")["assignments"]).count("n1") > 0 and t, 10,
            "n1 to own buckets")
        ports = [p for p in range(42000, 46000) if table[arr.bucket(p)] == "n1"][:20]
        # The first sweep is over: the next one is 60 s away, so it cannot be what notices.
        wait_until(lambda: arr.admin(3, "/summary")["sweeps"] >= 1, 15, "a finished sweep")
        assert all(arr.request("/whoami", p)[0] == 200 for p in ports[:3])
        with supervision_paused(arr):
            gap = new_connection_gap(arr, 1, ports, limit_s=10.0)
            print(f"new connections into the dead node's buckets failed for {gap} s")
            assert gap is not None, "the dead node's buckets never moved (sweep 60 s apart)"
            summary = arr.admin(3, "/summary")
            assert summary["nodes"][0]["failed"] is True
            assert "n1" not in arr.admin(3, "/table")["assignments"]
