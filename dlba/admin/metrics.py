"""Prometheus exposition of a node's counters and tables, built only when scraped."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from dlba.proxy.node_stats import LatencyHistogram, NodeStats
from dlba.scheduling.web_server_status_table import WebServerStatusTable

ExtraMetrics = Callable[[], Iterator[Metric]]


def _histogram(
    name: str, doc: str, labels: list[str], series: list[tuple[list[str], LatencyHistogram]]
) -> HistogramMetricFamily:
    fam = HistogramMetricFamily(name, doc, labels=labels)
    for values, h in series:
        fam.add_metric(values, buckets=h.cumulative(), sum_value=h.total)
    return fam


class NodeCollector(Collector):
    def __init__(
        self, node: str, stats: NodeStats, table: Callable[[], WebServerStatusTable],
        extra: list[ExtraMetrics] | None = None,
    ) -> None:
        self.node = node
        self.stats = stats
        self.table = table
        self.extra = extra or []

    def collect(self) -> Iterator[Metric]:
        s, node = self.stats, self.node
        for name, doc, value in (
            ("requests", "Requests answered by this node", s.requests),
            ("request_errors", "Requests that ended in an error", s.errors),
            ("bad_requests", "Malformed requests rejected with 4xx", s.bad_requests),
            ("response_bytes", "Response body bytes sent to clients", s.bytes_out),
            ("reroutes", "Requests re-routed to another back end", s.reroutes),
            ("connections", "Client connections accepted", s.connections_total),
            ("tls_handshakes", "TLS connections accepted", s.tls_handshakes),
            ("cookie_injections", "Persistence cookies injected", s.cookie_injected),
            ("cookie_rejections", "Tampered or foreign persistence cookies", s.cookie_rejected),
            ("h2_connections", "Client connections that chose HTTP/2", s.h2_connections),
            ("h2_refused", "HTTP/2 connections closed for a flood, a protocol error or a limit",
             s.h2_refused),
        ):
            c = CounterMetricFamily(f"dlba_{name}", doc, labels=["node"])
            c.add_metric([node], value)
            yield c
        g = GaugeMetricFamily("dlba_open_connections", "Open client connections", labels=["node"])
        g.add_metric([node], s.connections_open)
        yield g
        yield _histogram(
            "dlba_request_duration_seconds", "Request latency at this node", ["node"],
            [([node], s.latency)],
        )
        per = sorted(s.by_backend.items())
        for name, doc, attr in (
            ("backend_requests", "Requests sent to a back end", "requests"),
            ("backend_errors", "Failed requests or connects per back end", "errors"),
            ("backend_response_bytes", "Response bytes per back end", "bytes_out"),
        ):
            c = CounterMetricFamily(f"dlba_{name}", doc, labels=["node", "backend"])
            for bid, counters in per:
                c.add_metric([node, str(bid)], getattr(counters, attr))
            yield c
        yield _histogram(
            "dlba_backend_request_duration_seconds", "Request latency per back end",
            ["node", "backend"], [([node, str(bid)], c_.latency) for bid, c_ in per],
        )
        up = GaugeMetricFamily(
            "dlba_backend_up", "1 when the back end is up", labels=["node", "backend"]
        )
        conns = GaugeMetricFamily(
            "dlba_backend_open_connections", "Requests in flight per back end",
            labels=["node", "backend"],
        )
        weight = GaugeMetricFamily(
            "dlba_backend_effective_weight", "Weight after agent and state",
            labels=["node", "backend"],
        )
        for row in self.table().rows:
            labels = [node, str(row.id)]
            up.add_metric(labels, 1 if row.state.value == "up" else 0)
            conns.add_metric(labels, row.open_connections)
            weight.add_metric(labels, row.effective_weight)
        yield from (up, conns, weight)
        for extra in self.extra:
            yield from extra()


def render(collector: Collector) -> bytes:
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)


def learned_session_metrics(node: str, entries: int, learned: int, selections: int
                            ) -> Iterator[Metric]:
    """Learned session ids (dlba/scheduling/learned_sessions.py): table size, learns, selections."""
    g = GaugeMetricFamily("dlba_learned_sessions", "Session ids this node knows the issuer of",
                          labels=["node"])
    g.add_metric([node], entries)
    yield g
    for name, doc, value in (
        ("sessions_learned", "Session ids learned from this node's back-end responses", learned),
        ("learned_session_selections", "Requests sent to the back end that issued their "
         "session id", selections),
    ):
        c = CounterMetricFamily(f"dlba_{name}", doc, labels=["node"])
        c.add_metric([node], value)
        yield c


def service_metrics(node: str, view: dict[str, Any]) -> Iterator[Metric]:
    """Virtual services, pools and classes (dlba/services/runtime.py `to_json`/`merge_json`):
    requests per service, each pool's queue and slots, requests and shedding per class."""
    c = CounterMetricFamily("dlba_service_requests", "Requests per virtual service",
                            labels=["node", "service"])
    for s in view["services"]:
        c.add_metric([node, s["name"]], s["requests"])
    yield c
    gauges = [("queue_depth", "Requests waiting for a back-end slot"),
              ("slots_used", "Back-end slots held (back ends with maxconn)"),
              ("slots", "Back-end slots (sum of maxconn, this node's share)")]
    for key, doc in gauges:
        g = GaugeMetricFamily(f"dlba_pool_{key}", doc, labels=["node", "pool"])
        for name, pool in sorted(view["pools"].items()):
            g.add_metric([node, name], pool[key])
        yield g
    for key, doc in (("requests", "Requests per pool and client class"),
                     ("queued", "Requests that waited in the pool's queue, per class"),
                     ("shed", "Requests answered 503 by a full pool, per class")):
        c = CounterMetricFamily(f"dlba_class_{key}", doc, labels=["node", "pool", "class"])
        for name, pool in sorted(view["pools"].items()):
            for cls, counters in sorted(pool["classes"].items()):
                c.add_metric([node, name, cls], counters[key])
        yield c


class ServiceCollector(Collector):
    def __init__(self, node: str, view: Callable[[], dict[str, Any]]) -> None:
        self.node = node
        self.view = view

    def collect(self) -> Iterator[Metric]:
        yield from service_metrics(self.node, self.view())
