"""The summary web server status table of patent 003 (Fig. 8), kept by the active scheduler.

Each node reports its own web server status table (Fig. 7) in ``GET /status`` under
``"backends"``; the summary adds them up per back end.  It is for monitoring only, so it is
rebuilt from the latest rows on demand rather than maintained incrementally.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any


class StatusError(ValueError):
    """A node's ``/status`` document does not follow the contract."""


@dataclass(frozen=True)
class BackendRow:
    """One row of one node's web server status table (Fig. 7), as found in its ``/status``."""

    id: int
    address: str
    cookie_groups: int = 0
    avg_response_ms: float = 0.0
    hits: int = 0
    open_connections: int = 0
    unable_to_connect: int = 0
    failed: bool = False
    enabled: bool = True
    weight: int = 100


@dataclass(frozen=True)
class SummaryRow:
    """One row of Fig. 8: a back end's figures summed over the nodes that reported it."""

    id: int
    address: str
    cookie_groups: int
    avg_response_ms: float
    hits: int
    open_connections: int
    unable_to_connect: int
    failed: bool  # every reporting node finds it failed: one node's view may be its own fault
    enabled: bool  # enabled on every reporting node: a half-applied disable shows as disabled
    weight: int
    nodes_reporting: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def _field(row: Mapping[str, Any], key: str, kind: type, default: Any) -> Any:
    value: Any = row.get(key, default)
    # bool is an int in Python; a counter that says `true` is a bug on the other side.
    if kind in (int, float) and isinstance(value, bool):
        raise StatusError(f"{key}: expected a number, got {value!r}")
    if kind is float and isinstance(value, int):
        value = float(value)
    if not isinstance(value, kind):
        raise StatusError(f"{key}: expected {kind.__name__}, got {value!r}")
    if isinstance(value, int | float) and value < 0:
        raise StatusError(f"{key}: negative value {value!r}")
    return value


def parse_backend_row(row: Mapping[str, Any]) -> BackendRow:
    if not isinstance(row, Mapping):
        raise StatusError(f"backend row is not an object: {row!r}")
    return BackendRow(
        id=_field(row, "id", int, None),
        address=_field(row, "address", str, None),
        cookie_groups=_field(row, "cookie_groups", int, 0),
        avg_response_ms=_field(row, "avg_response_ms", float, 0.0),
        hits=_field(row, "hits", int, 0),
        open_connections=_field(row, "open_connections", int, 0),
        unable_to_connect=_field(row, "unable_to_connect", int, 0),
        failed=_field(row, "failed", bool, False),
        enabled=_field(row, "enabled", bool, True),
        weight=_field(row, "weight", int, 100),
    )


def parse_backend_rows(status: Mapping[str, Any]) -> list[BackendRow]:
    rows = status.get("backends", [])
    if not isinstance(rows, list):
        raise StatusError("backends: expected a list")
    return [parse_backend_row(r) for r in rows]


def weighted_avg(pairs: Iterable[tuple[float, int]]) -> float:
    """Average response time weighted by hits; a plain mean when nobody had hits yet."""
    items = list(pairs)
    if not items:
        return 0.0
    hits = sum(h for _, h in items)
    # fsum is exactly rounded, so the result does not depend on which node answered first.
    if hits == 0:
        return math.fsum(a for a, _ in items) / len(items)
    return math.fsum(a * h for a, h in items) / hits


def summarize(per_node: Iterable[Sequence[BackendRow]]) -> list[SummaryRow]:
    """Fig. 8 from every node's Fig. 7 rows; the result does not depend on node order."""
    groups: dict[int, list[BackendRow]] = {}
    for rows in per_node:
        for r in rows:
            groups.setdefault(r.id, []).append(r)
    out: list[SummaryRow] = []
    for backend_id in sorted(groups):
        rs = groups[backend_id]
        out.append(
            SummaryRow(
                id=backend_id,
                # Config gives every node the same address; min() only makes a disagreement
                # deterministic instead of depending on which node answered first.
                address=min(r.address for r in rs),
                cookie_groups=sum(r.cookie_groups for r in rs),
                avg_response_ms=weighted_avg((r.avg_response_ms, r.hits) for r in rs),
                hits=sum(r.hits for r in rs),
                open_connections=sum(r.open_connections for r in rs),
                unable_to_connect=sum(r.unable_to_connect for r in rs),
                failed=all(r.failed for r in rs),
                enabled=all(r.enabled for r in rs),
                weight=max(r.weight for r in rs),
                nodes_reporting=len(rs),
            )
        )
    return out
