"""The scheduler's heartbeat to every server, and which nodes are failed (pure).

The status sweep visits one node at a time with HTTP (`GET /status`), one second apart, with
retries: a node whose processes died kept its buckets until the sweep came round to it, and
every new connection hashed to them was refused meanwhile. The scheduler therefore also sends
the failover heartbeat (heartbeat.py) to every server each ping interval, and fails a
node after ``threshold`` answers missed in a row — the rule the servers use for the scheduler,
so one slow answer of a busy node fails nothing. An answer counts only when it comes from the
right node and says its proxy serves.

Two sources now judge a node: the sweep (its status channel) and the heartbeat. ``NodeLiveness``
keeps them apart: a node is failed while either source says so, and it recovers only when
neither does, so the two can never undo each other's verdict and make a node flap.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scheduler.status_sweep import NodeFailed, NodeRecovered

HEARTBEAT = "heartbeat"
SWEEP = "sweep"


@dataclass
class _Track:
    misses: int = 0
    failed: bool = False


class ServerHeartbeats:
    """Consecutive heartbeat misses per node; events when a node fails or answers again."""

    def __init__(self, node_count: int, self_index: int, *, threshold: int = 3,
                 initially_failed: Iterable[int] = ()) -> None:
        if threshold < 1:
            raise ValueError("threshold must be >= 1")
        self.threshold = threshold
        self.self_index = self_index
        self.tracks = [_Track() for _ in range(node_count)]
        for i in initially_failed:
            if i != self_index:
                self.tracks[i] = _Track(threshold, True)

    def peers(self) -> list[int]:
        return [i for i in range(len(self.tracks)) if i != self.self_index]

    def on_round(self, answered: Mapping[int, bool]) -> list[NodeFailed | NodeRecovered]:
        """One round: for each pinged peer, whether it answered (and serves)."""
        out: list[NodeFailed | NodeRecovered] = []
        for i, ok in sorted(answered.items()):
            if i == self.self_index:
                continue
            t = self.tracks[i]
            if ok:
                t.misses = 0
                if t.failed:
                    t.failed = False
                    out.append(NodeRecovered(i))
                continue
            t.misses += 1
            if not t.failed and t.misses >= self.threshold:
                t.failed = True
                out.append(NodeFailed(i))
        return out


class NodeLiveness:
    """A node is failed while any source says so; events only when the verdict changes."""

    def __init__(self, node_count: int, initially_failed: Iterable[int] = ()) -> None:
        self.down: list[set[str]] = [set() for _ in range(node_count)]
        for i in initially_failed:
            self.down[i] = {HEARTBEAT, SWEEP}

    def failed(self, node: int) -> bool:
        return bool(self.down[node])

    def on_event(self, source: str, event: NodeFailed | NodeRecovered
                 ) -> NodeFailed | NodeRecovered | None:
        reasons = self.down[event.node]
        was = bool(reasons)
        if isinstance(event, NodeFailed):
            reasons.add(source)
        else:
            reasons.discard(source)
        if was == bool(reasons):
            return None
        return event
