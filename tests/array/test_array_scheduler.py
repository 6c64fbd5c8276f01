"""Issue 3 on a real namespace array (`dlba up`): the scheduler forwards by the client table
with its eBPF data plane, only it answers ARP for the VIP, responses bypass it, and `dlba status`
shows the tables. (A killed node's buckets: test_killed_node.py, on an array of its own.)"""

from __future__ import annotations

import json
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.array.array_harness import (
    CLIENT_IP,
    VIP,
    Array,
    dlba,
    running_array,
    wait_until,
)
from tests.array.test_netns_builder import arp_replies


@pytest.fixture(scope="module")
def array(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Array]:
    with running_array(tmp_path_factory.mktemp("array"), nodes=3, backends=2) as arr:
        yield arr


def owner_of(arr: Array, table: dict[str, object], sport: int) -> str:
    assignments = table["assignments"]
    assert isinstance(assignments, list)
    return str(assignments[arr.bucket(sport, len(assignments))])


def test_first_scheduler_is_highest_ip_with_ebpf(array: Array) -> None:
    assert array.scheduler() == 3
    summary = array.admin(3, "/summary")
    assert summary["dataplane"]["kind"] == "EbpfDataPlane"
    assert {n["name"] for n in summary["nodes"] if not n["failed"]} == {"n1", "n2", "n3"}
    table = array.admin(3, "/table")
    assert table["size"] == 4096 and len(table["assignments"]) == 4096
    counts = {name: table["assignments"].count(name) for name in ("n1", "n2", "n3")}
    assert max(counts.values()) - min(counts.values()) <= 1  # equal weights, even spread
    for k in (1, 2):  # non-schedulers refuse the scheduler's tables
        with pytest.raises(OSError):
            array.admin(k, "/table")


def test_each_connection_lands_on_the_node_the_table_names(array: Array) -> None:
    table = array.admin(3, "/table")
    landed: dict[str, int] = {}
    for sport in range(41000, 41024):
        before = array.hits()
        status, body = array.request("/whoami", sport)
        assert status == 200 and body in (b"b1", b"b2")
        def counted(b: dict[int, int] = before) -> dict[int, int] | None:
            h = array.hits()
            return h if h != b else None

        after = wait_until(counted, 5, "a node's hit counter")
        served = [k for k in after if after[k] == before[k] + 1]
        assert served == [int(owner_of(array, table, sport)[1:])], (sport, before, after)
        landed[f"n{served[0]}"] = landed.get(f"n{served[0]}", 0) + 1
    assert set(landed) == {"n1", "n2", "n3"}


def test_metrics_show_the_data_plane_and_the_role(array: Array) -> None:
    def metrics(k: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        def call() -> str:
            req = urllib.request.Request(f"http://{array.node_address(k)}:9000/metrics",
                                         headers={"Authorization": f"Bearer {array.token}"})
            with urllib.request.urlopen(req, timeout=5) as r:
                return str(r.read().decode())

        text = array.in_client(call)
        return {(s.name, tuple(sorted(s.labels.items()))): s.value
                for f in text_string_to_metric_families(text) for s in f.samples}

    # Its own traffic through every node, so that it passes alone and in any order.
    table = array.admin(3, "/table")
    for name in ("n1", "n2", "n3"):
        sport = next(p for p in range(46000, 47000) if owner_of(array, table, p) == name)
        assert array.request("/whoami", sport)[0] == 200
    m3, m1 = metrics(3), metrics(1)
    assert m3[("dlba_scheduler", (("node", "n3"),))] == 1
    assert m1[("dlba_scheduler", (("node", "n1"),))] == 0
    forwarded = {dict(labels)["node"]: v for (name, labels), v in m3.items()
                 if name == "dlba_dataplane_packets_total"}
    assert forwarded["n1"] > 0 and forwarded["n2"] > 0 and forwarded["n3"] > 0
    assert ("dlba_dataplane_drops_total", (("reason", "acl"), ("scheduler", "n3"))) in m3
    assert m3[("dlba_requests_total", (("node", "n3"),))] > 0


def test_only_the_scheduler_answers_arp_for_the_vip(array: Array) -> None:
    macs = arp_replies(array.client_ns, "eth0", CLIENT_IP, VIP)
    assert macs == {array.front_mac(3)}


def test_responses_go_straight_to_the_client(array: Array) -> None:
    table = array.admin(3, "/table")
    sport = next(p for p in range(42000, 43000) if owner_of(array, table, p) == "n1")
    before = array.tx_bytes(3)
    status, body = array.request("/bytes/5000000", sport, timeout=20)
    assert status == 200 and len(body) == 5_000_000
    grown = array.tx_bytes(3) - before
    assert grown < 500_000, f"the scheduler's front sent {grown} bytes of a 5 MB response"


def test_dlba_status_json_names_the_tables(array: Array) -> None:
    res = dlba("status", "--json", "--state", str(array.state))
    assert res.returncode == 0, res.stderr
    doc = json.loads(res.stdout)
    assert doc["scheduler"] == "n3"
    for key in ("node", "role", "config_version", "table_version", "nodes", "backends"):
        assert key in doc
    assert {n["name"] for n in doc["nodes"]} == {"n1", "n2", "n3"}
    for n in doc["nodes"]:
        assert {"ip_groups", "mac", "avg_response_ms", "hits", "open_connections", "failed",
                "enabled", "weight"} <= set(n)
    assert sum(n["ip_groups"] for n in doc["nodes"]) == 4096
    assert {b["id"] for b in doc["backends"]} == {1, 2}
    res = dlba("status", "--state", str(array.state))
    assert res.returncode == 0 and "n3" in res.stdout


def test_disabled_node_loses_idle_buckets_only(array: Array) -> None:
    before = array.admin(3, "/table")["assignments"]
    # This test's own traffic makes the busy buckets (bucket_idle_s is 300 s): it must not
    # lean on what earlier tests sent, so that it passes alone and in any order.
    busy = [p for p in range(44000, 44200) if before[array.bucket(p)] == "n2"][:6]
    assert len(busy) == 6
    for sport in busy:
        assert array.request("/whoami", sport)[0] == 200
    row = array.admin(3, "/nodes/n2/disable", method="POST")
    assert row["enabled"] is False
    try:
        after = wait_until(
            lambda: (a := array.admin(3, "/table")["assignments"]).count("n2") < 50 and a, 10,
            "n2's idle buckets to move",
        )
        for sport in busy:
            assert after[array.bucket(sport)] == "n2", sport
        assert next(n for n in array.admin(3, "/summary")["nodes"] if n["name"] == "n2")[
            "enabled"] is False
    finally:
        array.admin(3, "/nodes/n2/enable", method="POST")
    # Back to its full share (4096 = 1366 + 1365 + 1365): the next test finds the array as
    # this one found it.
    wait_until(lambda: array.admin(3, "/table")["assignments"].count("n2") >= 1365, 20,
               "n2 to take its buckets again")
