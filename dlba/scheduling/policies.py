"""Balancing policies: the last step of back-end selection, for requests with no persistence.

Each policy chooses among candidate rows of the web server status table that the selector has
already filtered (accepting new sessions, not excluded by a failed attempt of this request). A
policy still ignores any candidate that does not accept new sessions, so a caller's mistake can
never send a new session to a draining or down back end.

Policies keep only small per-back-end state (rotation counter, smooth-WRR credits, cached ring)
and never allocate per call beyond a short tie list.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Protocol

from dlba.scheduling.hash_ring import HashRing
from dlba.scheduling.web_server_status_table import WebServerStatus


class Policy(Protocol):
    name: str

    def choose(self, candidates: Sequence[WebServerStatus], key: str) -> WebServerStatus | None:
        ...


def _lighter(a: WebServerStatus, b: WebServerStatus) -> bool:
    """True when a's load per unit of weight, (open+1)/weight, is below b's.

    Cross-multiplied in integers: float division would make equal loads compare unequal and
    break tie rotation. The +1 counts the request being placed, so an idle heavy back end beats
    an idle light one.
    """
    return (a.open_connections + 1) * b.effective_weight < (
        b.open_connections + 1) * a.effective_weight


class LeastConn:
    name = "least_conn"

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, candidates: Sequence[WebServerStatus], key: str) -> WebServerStatus | None:
        best: list[WebServerStatus] = []
        best_open = best_weight = 0
        for row in candidates:
            # Same comparison as _lighter, with each row's weight computed once.
            w = row.effective_weight
            if w <= 0:
                continue
            o = row.open_connections + 1
            if not best or o * best_weight < best_open * w:
                best, best_open, best_weight = [row], o, w
            elif o * best_weight == best_open * w:
                best.append(row)
        if not best:
            return None
        # Rotate among equals: always taking the first would pile every burst that arrives
        # before the first response onto one back end.
        self._turn += 1
        return best[self._turn % len(best)]


class WeightedRoundRobin:
    """nginx's smooth weighted round robin: over any run of sum(weights) picks with a fixed
    candidate set, each back end is picked exactly weight times, and the picks are spread out
    (5,1,1 gives a a b a c a a, not a a a a a b c)."""

    name = "weighted_rr"

    def __init__(self) -> None:
        self._current: dict[int, int] = {}

    def choose(self, candidates: Sequence[WebServerStatus], key: str) -> WebServerStatus | None:
        current = self._current
        total = 0
        best: WebServerStatus | None = None
        best_credit = 0
        for row in candidates:
            w = row.effective_weight
            if w <= 0 or not row.accepts_new:
                continue
            credit = current.get(row.id, 0) + w
            current[row.id] = credit
            total += w
            if best is None or credit > best_credit:
                best, best_credit = row, credit
        if best is not None:
            current[best.id] = best_credit - total
        return best

    def reset(self) -> None:
        self._current.clear()


class ResponseTime:
    """Least expected wait: moving-average response time x (open+1) / weight.

    A back end with no response yet has no average; it is tried first, otherwise a newly added
    (or freshly recovered) back end would never get the sample that lets it compete.
    """

    name = "response_time"
    # Added to every average so that back ends answering in ~0 ms still differ by load.
    FLOOR_MS = 0.1

    def __init__(self) -> None:
        self._turn = 0

    def choose(self, candidates: Sequence[WebServerStatus], key: str) -> WebServerStatus | None:
        best: list[WebServerStatus] = []
        best_score = 0.0
        untried: WebServerStatus | None = None
        for row in candidates:
            w = row.effective_weight
            if w <= 0:
                continue
            if row.responses == 0:
                if untried is None or _lighter(row, untried):
                    untried = row
                continue
            score = (row.avg_response_ms + self.FLOOR_MS) * (row.open_connections + 1) / w
            if not best or score < best_score:
                best, best_score = [row], score
            elif score == best_score:
                best.append(row)
        if untried is not None:
            return untried
        if not best:
            return None
        self._turn += 1
        return best[self._turn % len(best)]


class PowerOfTwoChoices:
    """Pick two candidates at random, keep the less loaded: nearly least_conn's balance without
    the herd effect of every node choosing the same global minimum at once."""

    name = "p2c"

    def __init__(self, rng: random.Random | None = None) -> None:
        self._rng = rng or random.Random()

    def choose(self, candidates: Sequence[WebServerStatus], key: str) -> WebServerStatus | None:
        n = len(candidates)
        if n and all(r.accepts_new for r in candidates):
            pool = candidates
        else:
            pool = [r for r in candidates if r.accepts_new]
            n = len(pool)
        if n == 0:
            return None
        if n == 1:
            return pool[0]
        i = self._rng.randrange(n)
        j = self._rng.randrange(n - 1)
        if j >= i:
            j += 1
        a, b = pool[i], pool[j]
        return b if _lighter(b, a) else a


class UrlHash:
    """Consistent hash of the key (the URL path) over the candidates, by effective weight.

    The ring is cached per candidate set: the set only changes when the table's state does or a
    request excludes a failed back end, so the common case reuses one ring.
    """

    name = "url_hash"
    _CACHE = 8

    def __init__(self) -> None:
        self._rings: dict[tuple[tuple[int, int], ...], HashRing] = {}

    def choose(self, candidates: Sequence[WebServerStatus], key: str) -> WebServerStatus | None:
        sig = tuple((r.id, r.effective_weight) for r in candidates if r.accepts_new)
        if not sig:
            return None
        ring = self._rings.get(sig)
        if ring is None:
            if len(self._rings) >= self._CACHE:
                self._rings.clear()
            ring = self._rings[sig] = HashRing(dict(sig))
        node = ring.get(key)
        for row in candidates:
            if row.id == node:
                return row
        return None


POLICY_NAMES = ("least_conn", "weighted_rr", "response_time", "p2c", "url_hash")


def make_policy(name: str, rng: random.Random | None = None) -> Policy:
    if name == "least_conn":
        return LeastConn()
    if name == "weighted_rr":
        return WeightedRoundRobin()
    if name == "response_time":
        return ResponseTime()
    if name == "p2c":
        return PowerOfTwoChoices(rng)
    if name == "url_hash":
        return UrlHash()
    raise ValueError(f"unknown policy {name!r}")
