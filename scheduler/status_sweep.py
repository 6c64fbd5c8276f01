"""The status sweep of patent 003 (Fig. 9, Get Server Status 902) as pure planning.

The scheduler "loops through the list of servers, communicating with each one, closing the
connection after each one responds.  Any server that it cannot communicate with after a
configurable number of retries is considered failed.  There is a configurable delay after the
status sweep."  This module decides what to do next and when; the shell that fetches
``GET /status`` only reports whether each visit worked:

    while True:
        action = sweep.next_action(clock())
        if isinstance(action, Wait):
            await sleep_until(action.until)
            continue
        ok = await fetch(action.node)
        for event in sweep.on_result(action.node, ok, clock()):
            ...   # NodeFailed -> client_table.node_failed, etc.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Visit:
    node: int
    attempt: int  # 1 for the first try in this sweep


@dataclass(frozen=True)
class Wait:
    until: float


@dataclass(frozen=True)
class NodeAnswered:
    node: int


@dataclass(frozen=True)
class NodeFailed:
    node: int


@dataclass(frozen=True)
class NodeRecovered:
    node: int


@dataclass(frozen=True)
class SweepFinished:
    number: int
    at: float


SweepEvent = NodeAnswered | NodeFailed | NodeRecovered | SweepFinished


def proxy_serves(doc: Mapping[str, Any]) -> bool:
    """Whether a node's ``/status`` says its proxy serves. A node whose admin API answers but
    whose proxy does not is a failed node: the visit counts as a miss. (A node of an older
    version says nothing: it is judged by its answer alone.)"""
    proxy = doc.get("proxy")
    return not isinstance(proxy, Mapping) or proxy.get("healthy") is not False


class StatusSweep:
    """Visit nodes 0..n-1 one at a time; ``1 + retries`` tries before a node counts as failed."""

    def __init__(
        self,
        node_count: int,
        *,
        retries: int = 3,
        retry_delay_s: float = 0.1,
        sweep_delay_s: float = 1.0,
        now: float = 0.0,
        initially_failed: frozenset[int] = frozenset(),
    ) -> None:
        if node_count < 1:
            raise ValueError("nothing to sweep")
        if retries < 0 or retry_delay_s < 0 or sweep_delay_s < 0:
            raise ValueError("retries and delays must be >= 0")
        self.node_count = node_count
        self.retries = retries
        self.retry_delay_s = retry_delay_s
        self.sweep_delay_s = sweep_delay_s
        self._failed = set(initially_failed)
        self._pos = 0
        self._attempt = 1
        self._not_before = now
        self._in_flight = False
        self.sweeps = 0
        self.last_sweep: float | None = None  # shown so monitoring can judge staleness

    @property
    def failed(self) -> frozenset[int]:
        return frozenset(self._failed)

    def mark_failed(self, node: int) -> None:
        """A node known failed from elsewhere (the first visit, the synced table): its next
        answer brings a NodeRecovered, as if this sweep had failed it."""
        self._failed.add(node)

    def attempts_allowed(self, node: int) -> int:
        # A node already failed gets one try per sweep: retrying it would only delay news
        # about the live ones, and one answer is enough to bring it back.
        return 1 if node in self._failed else 1 + self.retries

    def next_action(self, now: float) -> Visit | Wait:
        if not self._in_flight and now < self._not_before:
            return Wait(self._not_before)
        self._in_flight = True
        return Visit(self._pos, self._attempt)

    def on_result(self, node: int, ok: bool, now: float) -> list[SweepEvent]:
        if not self._in_flight or node != self._pos:
            raise ValueError(f"no visit to node {node} is outstanding")
        self._in_flight = False
        events: list[SweepEvent] = []
        if ok:
            if node in self._failed:
                self._failed.discard(node)
                events.append(NodeRecovered(node))
            events.append(NodeAnswered(node))
        elif self._attempt < self.attempts_allowed(node):
            self._attempt += 1
            self._not_before = now + self.retry_delay_s
            return events
        elif node not in self._failed:
            self._failed.add(node)
            events.append(NodeFailed(node))
        self._pos += 1
        self._attempt = 1
        self._not_before = now
        if self._pos == self.node_count:
            self._pos = 0
            self.sweeps += 1
            self.last_sweep = now
            self._not_before = now + self.sweep_delay_s
            events.append(SweepFinished(self.sweeps, now))
        return events
