"""The node's own counters: plain integers on the hot path, turned into metrics when scraped.

prometheus_client's Counter takes a lock per increment; a proxy doing that several times per
request pays for it on every request, so the proxy counts here and the metrics module reads
these numbers only when /metrics is asked for.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Final

# Prometheus-style upper bounds in seconds for request latency.
# Typed as a tuple of any length: compiled code keeps a fixed-length tuple of floats as a C
# struct and would box all thirteen into a new tuple each time observe iterates it.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)


@dataclass
class LatencyHistogram:
    counts: list[int] = field(default_factory=lambda: [0] * (len(LATENCY_BUCKETS) + 1))
    total: float = 0.0
    count: int = 0

    def observe(self, seconds: float) -> None:
        # A scan from the fastest bucket (where most requests fall), compiled to float
        # compares: bisect's call cost more than the scan. Same index as bisect_left.
        i = 0
        for bound in LATENCY_BUCKETS:
            if seconds <= bound:
                break
            i += 1
        self.counts[i] += 1
        self.total += seconds
        self.count += 1

    def cumulative(self) -> list[tuple[str, int]]:
        out, running = [], 0
        for bound, n in zip((*LATENCY_BUCKETS, float("inf")), self.counts, strict=True):
            running += n
            out.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return out


@dataclass
class BackendCounters:
    requests: int = 0
    errors: int = 0
    bytes_out: int = 0
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)


@dataclass
class NodeStats:
    requests: int = 0
    errors: int = 0
    bad_requests: int = 0
    bytes_out: int = 0
    reroutes: int = 0
    connections_open: int = 0
    connections_total: int = 0
    tls_handshakes: int = 0
    cookie_injected: int = 0
    cookie_rejected: int = 0
    h2_connections: int = 0  # client connections that chose HTTP/2 (ALPN h2)
    h2_refused: int = 0  # HTTP/2 connections ended for an attack pattern or a broken limit
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    by_backend: dict[int, BackendCounters] = field(default_factory=dict)

    def backend(self, backend_id: int) -> BackendCounters:
        c = self.by_backend.get(backend_id)
        if c is None:
            c = self.by_backend[backend_id] = BackendCounters()
        return c
