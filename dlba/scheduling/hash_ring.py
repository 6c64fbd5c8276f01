"""Consistent hash ring of back ends (patent 003: URL hash scheduling to keep caches "hot").

"A consistent hash ... should be used for URL hash based scheduling so when servers are added
and removed the caches stay as hot as possible": adding or removing one of N back ends moves
about 1/N of the keys, and a key whose back end stays never moves to another surviving one.

Built on ``uhashring`` (ketama-style md5 continuum). uhashring gives each node
``vnodes * weight`` points; with the config's weights (100 by default) that would be 16,000 md5
computations per back end on every rebuild, so weights are first reduced to small ratios.
"""

from __future__ import annotations

from collections.abc import Collection, Iterator, Mapping
from math import gcd

from uhashring import HashRing as _UHashRing

# Points per unit of (reduced) weight: ~160 keeps each node's share within a few percent.
VNODES = 160
# Ratios above this are rescaled so one heavy node cannot make a rebuild slow.
MAX_RATIO = 16


def _points(weights: Mapping[int, int]) -> dict[int, int]:
    positive = {n: w for n, w in weights.items() if w > 0}
    if not positive:
        return {}
    unit = 0
    for w in positive.values():
        unit = gcd(unit, w)
    ratios = {n: w // unit for n, w in positive.items()}
    top = max(ratios.values())
    if top <= MAX_RATIO:
        # Equal weights (the common case) always give VNODES points each, whatever the other
        # nodes are: that is what keeps add/remove disruption at 1/N.
        return {n: VNODES * r for n, r in ratios.items()}
    return {n: max(1, round(VNODES * MAX_RATIO * w / max(positive.values())))
            for n, w in positive.items()}


class HashRing:
    """Immutable ring over back-end ids; build a new one when the weights change."""

    __slots__ = ("_ring", "nodes")

    def __init__(self, weights: Mapping[int, int]) -> None:
        points = _points(weights)
        self.nodes: frozenset[int] = frozenset(points)
        self._ring = _UHashRing({n: {"vnodes": p, "weight": 1} for n, p in points.items()})

    def __len__(self) -> int:
        return len(self.nodes)

    def get(self, key: str) -> int | None:
        if not self.nodes:
            return None
        node: int = self._ring.get_node(key)
        return node

    def walk(self, key: str) -> Iterator[int]:
        """The distinct nodes in ring order from ``key``'s position: the owner first, then the
        node that would inherit the key if the owner were gone, and so on."""
        if not self.nodes:
            return
        yield from self._ring.iterate_nodes(key)

    def get_excluding(self, key: str, exclude: Collection[int]) -> int | None:
        """The owner of ``key`` ignoring ``exclude`` -- the same node a ring built without the
        excluded nodes would return, without building that ring."""
        if not exclude:
            return self.get(key)
        for node in self.walk(key):
            if node not in exclude:
                return node
        return None
