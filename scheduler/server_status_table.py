"""The DLBA server status table of patent 003 (Fig. 5).

Static columns (number, name, physical IP, weight, enabled) come from the config; the MAC is
learned at run time; the dynamic columns (# IP groups, avg response time, hits, open
connections, failed) come from the status sweep and the client table.  Pure state: the sweep
shell calls ``apply_status``/``mark_failed`` with what it fetched.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from scheduler.summary_table import (
    BackendRow,
    StatusError,
    SummaryRow,
    parse_backend_rows,
    summarize,
    weighted_avg,
)

__all__ = ["NodeSpec", "ServerStatus", "ServerStatusTable", "StatusError"]


class NodeSpec(Protocol):
    """What the table needs from a config ``[[nodes]]`` entry (dlba.config.NodeConfig fits)."""

    @property
    def name(self) -> str: ...
    @property
    def address(self) -> str: ...
    @property
    def weight(self) -> int: ...


@dataclass
class ServerStatus:
    """One row of Fig. 5."""

    number: int
    name: str
    address: str
    config_weight: int
    config_enabled: bool = True
    mac: str = ""
    weight: int = 0
    enabled: bool = True
    ip_groups: int = 0
    avg_response_ms: float = 0.0
    hits: int = 0
    open_connections: int = 0
    failed: bool = False
    misses: int = 0  # failed visits in a row, shown next to `failed` for the operator
    config_version: int | None = None  # as the node reported it: skew shows a stuck push
    last_seen: float | None = None
    backends: list[BackendRow] = field(default_factory=list)

    def reset_dynamic(self) -> None:
        self.weight = self.config_weight
        self.enabled = self.config_enabled
        self.avg_response_ms = 0.0
        self.hits = 0
        self.open_connections = 0
        self.misses = 0
        self.backends = []

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "name": self.name,
            "address": self.address,
            "mac": self.mac,
            "ip_groups": self.ip_groups,
            "avg_response_ms": self.avg_response_ms,
            "hits": self.hits,
            "open_connections": self.open_connections,
            "failed": self.failed,
            "enabled": self.enabled,
            "weight": self.weight,
            "misses": self.misses,
            "config_version": self.config_version,
            "last_seen": self.last_seen,
        }


class ServerStatusTable:
    def __init__(
        self,
        nodes: Sequence[NodeSpec],
        *,
        macs: Mapping[str, str] | None = None,
        enabled: Mapping[str, bool] | None = None,
    ) -> None:
        names = [n.name for n in nodes]
        if len(set(names)) != len(names):
            raise ValueError("node names must be unique")
        self.rows: list[ServerStatus] = []
        for i, n in enumerate(nodes):
            on = True if enabled is None else enabled.get(n.name, True)
            row = ServerStatus(i, n.name, n.address, n.weight, on)
            row.mac = (macs or {}).get(n.name, "")
            row.reset_dynamic()
            self.rows.append(row)
        self._by_name = {r.name: r.number for r in self.rows}
        self.last_sweep: float | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def index_of(self, name: str) -> int:
        return self._by_name[name]

    def set_mac(self, index: int, mac: str) -> None:
        self.rows[index].mac = mac

    def set_enabled(self, index: int, enabled: bool) -> None:
        self.rows[index].enabled = enabled

    def set_weight(self, index: int, weight: int) -> None:
        if weight < 0:
            raise ValueError("weight must be >= 0")
        self.rows[index].weight = weight

    def set_ip_groups(self, counts: Sequence[int]) -> None:
        """Copy column 503 from ``ClientTable.counts()``."""
        if len(counts) != len(self.rows):
            raise ValueError("one count per node expected")
        for row, c in zip(self.rows, counts, strict=True):
            row.ip_groups = c

    def table_weights(self) -> list[int]:
        """Weights as the client table should see them: a disabled node takes no new buckets."""
        return [r.weight if r.enabled else 0 for r in self.rows]

    def apply_status(self, index: int, status: Mapping[str, Any], now: float) -> None:
        """Take a node's ``GET /status`` answer; raises StatusError and changes nothing if bad."""
        row = self.rows[index]
        if not isinstance(status, Mapping):
            raise StatusError("status is not an object")
        if status.get("node") != row.name:
            # Another machine at this address (or a mis-pushed config): not this node's data.
            raise StatusError(f"expected node {row.name!r}, got {status.get('node')!r}")
        backends = parse_backend_rows(status)
        own = self._own_row(status, row.name)
        if own is not None:
            avg = _number(own, "avg_response_ms", float)
            hits = _number(own, "hits", int)
            conns = _number(own, "open_connections", int)
            mac = own.get("mac")
        else:
            # An older node without its own row: its back-end table holds the same traffic.
            avg = weighted_avg((b.avg_response_ms, b.hits) for b in backends)
            hits = sum(b.hits for b in backends)
            conns = sum(b.open_connections for b in backends)
            mac = None
        row.avg_response_ms, row.hits, row.open_connections = avg, hits, conns
        if isinstance(mac, str) and mac and mac != "..":
            row.mac = mac
        row.backends = backends
        version = status.get("config_version")
        row.config_version = version if isinstance(version, int) else None
        row.failed = False
        row.misses = 0
        row.last_seen = now

    @staticmethod
    def _own_row(status: Mapping[str, Any], name: str) -> Mapping[str, Any] | None:
        nodes = status.get("nodes", [])
        if not isinstance(nodes, list):
            raise StatusError("nodes: expected a list")
        for n in nodes:
            if isinstance(n, Mapping) and n.get("name") == name:
                return n
        return None

    def record_miss(self, index: int) -> None:
        self.rows[index].misses += 1

    def mark_failed(self, index: int) -> None:
        """The sweep gave up on this node: its connections and back-end view are gone."""
        row = self.rows[index]
        row.failed = True
        row.open_connections = 0
        row.backends = []

    def sweep_finished(self, now: float) -> None:
        self.last_sweep = now

    def panic(self) -> None:
        """Reset dynamic columns to config defaults (patent's panic mode).

        ``failed`` is kept: it is the sweep's latest observation, not stale data, and clearing
        it would let the client table's panic spread buckets onto dead machines until the next
        sweep.
        """
        for row in self.rows:
            row.reset_dynamic()

    def summary(self) -> list[SummaryRow]:
        """Fig. 8 over the nodes whose last visit worked."""
        return summarize(r.backends for r in self.rows if not r.failed)

    def to_json(self) -> list[dict[str, Any]]:
        return [r.to_json() for r in self.rows]


def _number(row: Mapping[str, Any], key: str, kind: type[int] | type[float]) -> Any:
    value = row.get(key, 0)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise StatusError(f"nodes.{key}: expected a number, got {value!r}")
    if kind is int and not isinstance(value, int):
        raise StatusError(f"nodes.{key}: expected an integer, got {value!r}")
    if value < 0:
        raise StatusError(f"nodes.{key}: negative value {value!r}")
    return kind(value)
