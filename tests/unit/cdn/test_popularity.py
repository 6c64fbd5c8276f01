"""The popularity summary keeps bounded memory and the space-saving guarantees."""

from __future__ import annotations

from collections import Counter

from hypothesis import given, settings
from hypothesis import strategies as st

from dlba.cdn.chooser import Choice, choose, type_matcher
from dlba.cdn.popularity import Figure, Popularity, SpaceSaving, merge

events = st.lists(
    st.tuples(st.integers(0, 60).map(lambda i: f"/o{i}.css"), st.integers(1, 5000)),
    max_size=400,
)


@settings(max_examples=200, deadline=None)
@given(events, st.integers(1, 16))
def test_space_saving_bounds(stream: list[tuple[str, int]], capacity: int) -> None:
    ss = SpaceSaving(capacity)
    truth: Counter[str] = Counter()
    for key, n in stream:
        ss.add(key, n, True)
        truth[key] += n
    total = sum(truth.values())
    assert len(ss.entries) <= capacity
    assert ss.total == total
    for key, e in ss.entries.items():
        assert e.bytes >= truth[key]  # never under-estimated
        assert e.bytes - e.error <= truth[key]  # the error bounds the over-estimate
        assert e.error <= total // capacity
    for key, n in truth.items():
        if n * capacity > total:  # a heavy hitter is never lost
            assert key in ss.entries


@settings(max_examples=50, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 10_000).map(str), st.integers(1, 10)), max_size=500))
def test_window_memory_is_bounded(stream: list[tuple[str, int]]) -> None:
    p = Popularity(capacity=8, slots=3, slot_s=1.0)
    for i, (key, n) in enumerate(stream):
        p.add(key, n, True, now=i * 0.1)
        assert p.size() <= 8 * 3


def test_window_forgets_old_traffic() -> None:
    p = Popularity(capacity=8, slots=3, slot_s=10.0)
    p.add("/old.js", 1000, True, now=0.0)
    p.add("/new.js", 10, True, now=25.0)
    assert [f.path for f in p.figures(25.0)] == ["/old.js", "/new.js"]
    assert [f.path for f in p.figures(31.0)] == ["/new.js"]  # /old.js's bucket rotated out
    assert p.figures(100.0) == []


def test_uncacheable_sticks_and_merges() -> None:
    p = Popularity(capacity=8, slots=2, slot_s=10.0)
    p.add("/a.css", 10, True, now=0.0)
    p.add("/a.css", 10, False, now=1.0)
    p.add("/b.css", 5, True, now=11.0)
    figs = {f.path: f for f in p.figures(11.0)}
    assert figs["/a.css"] == Figure("/a.css", 20, 2, 0, False)
    merged = merge([[Figure("/b.css", 5, 1, 0, True)], p.figures(11.0)])
    assert merged[0] == Figure("/a.css", 20, 2, 0, False)
    assert merged[1] == Figure("/b.css", 10, 2, 0, True)


def test_choose_types_cacheable_top_and_ties() -> None:
    figs = [
        Figure("/big.css", 900, 3, 0, True),
        Figure("/page.html", 5000, 9, 0, True),  # not a configured type
        Figure("/private.js", 800, 4, 0, False),  # the back end said no
        Figure("/b.PNG", 500, 1, 0, True),  # globs ignore case
        Figure("/a.png", 500, 1, 0, True),  # tie: by path
        Figure("/c.woff2", 100, 1, 0, True),
    ]
    chosen = choose(figs, type_matcher(["*.css", "*.js", "*.png", "*.woff2"]), 3)
    assert [f.path for f in chosen] == ["/big.css", "/a.png", "/b.PNG"]
    assert choose(figs, type_matcher([]), 3) == []


def test_choice_version_follows_paths_only() -> None:
    a = Choice((Figure("/a.css", 1, 1, 0, True), Figure("/b.css", 2, 1, 0, True)))
    b = Choice((Figure("/b.css", 9, 3, 0, True), Figure("/a.css", 5, 1, 0, True)))
    assert a.version == b.version
    assert Choice().version == "empty"
    assert Choice.from_wire(a.to_wire()) == a


def test_chosen_objects_are_sticky_near_the_cut() -> None:
    types = type_matcher(["*.css"])
    figs = [Figure("/a.css", 1000, 1, 0, True), Figure("/b.css", 110, 1, 0, True),
            Figure("/c.css", 100, 1, 0, True)]
    assert [f.path for f in choose(figs, types, 2)] == ["/a.css", "/b.css"]
    # /c.css chosen before: /b.css must outweigh it by 25 % to take its place.
    assert [f.path for f in choose(figs, types, 2, frozenset({"/c.css"}))] == ["/a.css", "/c.css"]
    figs[1] = Figure("/b.css", 130, 1, 0, True)
    assert [f.path for f in choose(figs, types, 2, frozenset({"/c.css"}))] == ["/a.css", "/b.css"]
