"""Consistent hash ring: ~1/N of keys move when one of N back ends comes or goes, and keys of
surviving back ends never move between survivors."""

from __future__ import annotations

from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from dlba.scheduling.hash_ring import HashRing

URLS = [f"/static/img/{i}.gif" for i in range(10_000)]


def owners(ring: HashRing) -> list[int | None]:
    return [ring.get(u) for u in URLS]


@pytest.mark.parametrize("n", range(3, 11))
def test_removing_one_moves_about_one_nth(n: int) -> None:
    before = owners(HashRing({i: 100 for i in range(1, n + 1)}))
    gone = n // 2 + 1
    after = owners(HashRing({i: 100 for i in range(1, n + 1) if i != gone}))
    moved = sum(a != b for a, b in zip(before, after, strict=True))
    assert 0.5 / n < moved / len(URLS) < 2 / n
    # Only the removed node's keys move, and none lands on the removed node.
    for b, a in zip(before, after, strict=True):
        assert (a != b) == (b == gone)
        assert a != gone


@pytest.mark.parametrize("n", range(3, 11))
def test_adding_one_moves_about_one_nth(n: int) -> None:
    before = owners(HashRing({i: 100 for i in range(1, n)}))
    after = owners(HashRing({i: 100 for i in range(1, n + 1)}))
    moved = sum(a != b for a, b in zip(before, after, strict=True))
    assert 0.5 / n < moved / len(URLS) < 2 / n
    # Every key that moved went to the new node.
    assert all(a == n for b, a in zip(before, after, strict=True) if a != b)


def test_share_follows_weight() -> None:
    ring = HashRing({1: 100, 2: 200, 3: 100})
    share = Counter(owners(ring))
    assert share[2] > share[1] * 1.4 and share[2] > share[3] * 1.4


def test_empty_and_zero_weight() -> None:
    assert HashRing({}).get("/x") is None
    ring = HashRing({1: 0, 2: 10})
    assert {ring.get(u) for u in URLS[:500]} == {2}
    assert HashRing({1: 0}).get("/x") is None


@settings(max_examples=30, deadline=None)
@given(st.sets(st.integers(1, 50), min_size=2, max_size=10), st.data())
def test_get_excluding_equals_ring_without(nodes: set[int], data: st.DataObject) -> None:
    exclude = data.draw(st.sets(st.sampled_from(sorted(nodes)), max_size=len(nodes) - 1))
    full = HashRing({n: 100 for n in nodes})
    smaller = HashRing({n: 100 for n in nodes - exclude})
    for u in URLS[:300]:
        assert full.get_excluding(u, exclude) == smaller.get(u)
    assert full.get_excluding("/x", nodes) is None


def test_heavy_weights_stay_cheap() -> None:
    # Weights without a common divisor are rescaled, not turned into 16,000 points per node.
    ring = HashRing({1: 997, 2: 1000, 3: 1})
    assert set(owners(ring)[:2000]) <= {1, 2, 3}
    assert len(ring._ring.runtime._keys) < 10_000
