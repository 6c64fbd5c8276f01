"""Whether this node's proxy serves (pure): what the heartbeat answer and `/status` report.

A node is a failed node when its proxy does not serve, even if its admin API answers. With
worker processes the node process judges each worker from what it can see without touching
the request path: whether the process runs, and when it last reported over its control channel
(every `STATS_S`; a worker reports from the same event loop that accepts connections).

* A worker that exited closed its listening sockets: the kernel stops handing it connections,
  so it harms no client; the node respawns it. Only when *no* worker runs does nothing serve.
* A worker that runs but stopped reporting (stopped, wedged in a loop, deadlocked) still holds
  its SO_REUSEPORT socket: the kernel keeps giving it its share of new connections, which hang.
  One such worker makes the node unfit to receive traffic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

STALE_S = 1.5  # three missed reports (STATS_S = 0.5)
STARTUP_S = 10.0  # a fresh interpreter's imports and TLS set-up, on a loaded machine


@dataclass(frozen=True)
class WorkerView:
    running: bool
    spawned_at: float
    last_report: float | None  # monotonic time of its last report; None: none yet


@dataclass(frozen=True)
class ProxyHealth:
    healthy: bool
    reason: str = ""


def workers_health(workers: Sequence[WorkerView], now: float) -> ProxyHealth:
    running = [w for w in workers if w.running]
    for i, w in enumerate(workers):
        if not w.running:
            continue
        if w.last_report is None:
            if now - w.spawned_at > STARTUP_S:
                return ProxyHealth(False, f"worker {i} never reported")
        elif now - w.last_report > STALE_S:
            return ProxyHealth(False, f"worker {i} silent for {now - w.last_report:.1f}s")
    if not running:
        return ProxyHealth(False, "no proxy worker runs")
    return ProxyHealth(True)


def listeners_health(serving: Sequence[bool]) -> ProxyHealth:
    """The in-process proxy (`workers = 1`): every listener still accepts."""
    if not serving:
        return ProxyHealth(False, "no listener")
    if not all(serving):
        return ProxyHealth(False, "a listener stopped serving")
    return ProxyHealth(True)
