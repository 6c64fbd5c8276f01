"""DLBA server status table (Fig. 5) and summary web server status table (Fig. 8)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.client_table import ClientTable
from scheduler.server_status_table import ServerStatusTable, StatusError
from scheduler.summary_table import BackendRow, parse_backend_rows, summarize

CONTRACT_NODE_FIELDS = {
    "name",
    "address",
    "mac",
    "ip_groups",
    "avg_response_ms",
    "hits",
    "open_connections",
    "failed",
    "enabled",
    "weight",
}


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    weight: int = 100


NODES = [Node("n1", "198.18.0.11"), Node("n2", "198.18.0.12", 90), Node("n3", "198.18.0.13")]


def status_doc(name: str = "n2", hits: int = 4100) -> dict[str, Any]:
    """The contract's example ``GET /status`` answer (DESIGN.md)."""
    return {
        "node": name,
        "role": "server",
        "scheduler": "n3",
        "config_version": 3,
        "table_version": 17,
        "nodes": [
            {
                "name": name,
                "address": "198.18.0.12",
                "mac": "02:00:00:00:00:12",
                "ip_groups": 1365,
                "avg_response_ms": 1.2,
                "hits": hits,
                "open_connections": 12,
                "failed": False,
                "enabled": True,
                "weight": 100,
            }
        ],
        "backends": [
            {
                "id": 1,
                "address": "198.18.1.101:8080",
                "cookie_groups": 40,
                "avg_response_ms": 0.8,
                "hits": 3900,
                "open_connections": 5,
                "unable_to_connect": 0,
                "failed": False,
                "enabled": True,
                "weight": 100,
            }
        ],
    }


def test_rows_come_from_config_and_use_the_contract_names() -> None:
    t = ServerStatusTable(NODES, macs={"n1": "02:00:00:00:00:11"})
    rows = t.to_json()
    assert [r["name"] for r in rows] == ["n1", "n2", "n3"]
    assert [r["number"] for r in rows] == [0, 1, 2]
    assert rows[1]["weight"] == 90 and rows[1]["address"] == "198.18.0.12"
    assert rows[0]["mac"] == "02:00:00:00:00:11"
    for r in rows:
        assert r.keys() >= CONTRACT_NODE_FIELDS
    assert t.last_sweep is None


def test_status_answer_fills_the_dynamic_columns() -> None:
    t = ServerStatusTable(NODES)
    t.mark_failed(1)
    t.apply_status(1, status_doc(), now=42.0)
    r = t.rows[1]
    assert (r.avg_response_ms, r.hits, r.open_connections) == (1.2, 4100, 12)
    assert r.mac == "02:00:00:00:00:12"
    assert not r.failed and r.last_seen == 42.0
    assert r.backends == parse_backend_rows(status_doc())


def test_without_its_own_row_a_node_is_summed_from_its_backends() -> None:
    doc = status_doc()
    doc["nodes"] = []
    doc["backends"].append(dict(doc["backends"][0], id=2, hits=100, avg_response_ms=4.0))
    t = ServerStatusTable(NODES)
    t.apply_status(1, doc, now=1.0)
    assert t.rows[1].hits == 4000
    assert t.rows[1].open_connections == 10
    assert t.rows[1].avg_response_ms == pytest.approx((0.8 * 3900 + 4.0 * 100) / 4000)


def test_an_answer_from_the_wrong_node_is_refused() -> None:
    t = ServerStatusTable(NODES)
    before = t.to_json()
    with pytest.raises(StatusError):
        t.apply_status(0, status_doc("n2"), now=1.0)
    assert t.to_json() == before


_garbage = st.one_of(
    st.none(), st.booleans(), st.text(max_size=3), st.integers(-5, -1), st.floats(-1e3, -0.1)
)


@given(
    where=st.sampled_from(["node", "backend"]),
    key=st.sampled_from(["hits", "avg_response_ms", "open_connections"]),
    value=_garbage,
)
def test_a_malformed_answer_changes_nothing(where: str, key: str, value: Any) -> None:
    t = ServerStatusTable(NODES)
    t.apply_status(1, status_doc(hits=7), now=1.0)
    before = copy.deepcopy(t.to_json())
    doc = status_doc(hits=99)
    (doc["nodes"][0] if where == "node" else doc["backends"][0])[key] = value
    with pytest.raises(StatusError):
        t.apply_status(1, doc, now=2.0)
    assert t.to_json() == before


def test_a_failed_node_loses_its_connections_and_leaves_the_summary() -> None:
    t = ServerStatusTable(NODES)
    t.apply_status(1, status_doc(), now=1.0)
    assert [s.hits for s in t.summary()] == [3900]
    t.record_miss(1)
    t.mark_failed(1)
    assert t.rows[1].failed and t.rows[1].open_connections == 0 and t.rows[1].misses == 1
    assert t.summary() == []
    t.sweep_finished(9.0)
    assert t.last_sweep == 9.0


@given(
    hits=st.integers(0, 10**6),
    weight=st.integers(0, 500),
    failed=st.booleans(),
)
def test_panic_resets_dynamic_fields_to_config_defaults(
    hits: int, weight: int, failed: bool
) -> None:
    t = ServerStatusTable(NODES, enabled={"n3": False})
    fresh = ServerStatusTable(NODES, enabled={"n3": False}).to_json()
    for i in range(3):
        t.apply_status(i, status_doc(NODES[i].name, hits), now=5.0)
        t.set_weight(i, weight)
        t.set_enabled(i, True)
    if failed:
        t.mark_failed(0)
    t.panic()
    for got, want in zip(t.to_json(), fresh, strict=True):
        for k in ("avg_response_ms", "hits", "open_connections", "enabled", "weight", "misses"):
            assert got[k] == want[k], k
    # The sweep's observation survives: panic must not spread buckets onto a dead node.
    assert t.rows[0].failed is failed


def test_ip_groups_and_weights_link_to_the_client_table() -> None:
    t = ServerStatusTable(NODES)
    t.set_enabled(2, False)
    ct = ClientTable(100, t.table_weights())
    ct.fill(0.0)
    t.set_ip_groups(ct.counts())
    assert [r["ip_groups"] for r in t.to_json()] == [53, 47, 0]


backend_rows = st.builds(
    BackendRow,
    id=st.integers(1, 4),
    address=st.just("198.18.1.101:8080"),
    cookie_groups=st.integers(0, 100),
    avg_response_ms=st.floats(0, 1000),
    hits=st.integers(0, 10**6),
    open_connections=st.integers(0, 1000),
    unable_to_connect=st.integers(0, 10),
    failed=st.booleans(),
    enabled=st.booleans(),
    weight=st.just(100),
)
per_node_rows = st.lists(st.lists(backend_rows, max_size=4), max_size=5)


@given(per_node_rows, st.randoms(use_true_random=False))
def test_summary_sums_every_nodes_rows_in_any_order(
    per_node: list[list[BackendRow]], rnd: Any
) -> None:
    summary = {s.id: s for s in summarize(per_node)}
    shuffled = [list(rows) for rows in per_node]
    rnd.shuffle(shuffled)
    assert list(summary.values()) == summarize(shuffled)
    flat = [r for rows in per_node for r in rows]
    assert set(summary) == {r.id for r in flat}
    for bid, s in summary.items():
        rs = [r for r in flat if r.id == bid]
        assert s.hits == sum(r.hits for r in rs)
        assert s.open_connections == sum(r.open_connections for r in rs)
        assert s.cookie_groups == sum(r.cookie_groups for r in rs)
        assert s.unable_to_connect == sum(r.unable_to_connect for r in rs)
        assert s.failed == all(r.failed for r in rs)
        assert s.enabled == all(r.enabled for r in rs)
        assert s.nodes_reporting == len(rs)
        lo, hi = min(r.avg_response_ms for r in rs), max(r.avg_response_ms for r in rs)
        assert lo - 1e-6 <= s.avg_response_ms <= hi + 1e-6
        if sum(r.hits for r in rs):
            total = sum(r.avg_response_ms * r.hits for r in rs)
            assert s.avg_response_ms == pytest.approx(total / s.hits)


def test_summary_rows_serialize_with_contract_names() -> None:
    rows = summarize([parse_backend_rows(status_doc()), parse_backend_rows(status_doc())])
    j = rows[0].to_json()
    assert j["hits"] == 7800 and j["cookie_groups"] == 80 and j["avg_response_ms"] == 0.8
    assert {"id", "address", "open_connections", "unable_to_connect", "failed"} <= j.keys()
