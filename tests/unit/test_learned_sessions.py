"""Learned session ids: LRU and TTL bounds, the change log, merges that converge (newer learn
wins whatever the order), the wire form, and what a response head issues."""

from __future__ import annotations

import random

from hypothesis import given
from hypothesis import strategies as st

from dlba.scheduling.learned_sessions import (
    MAX_ID_LEN,
    Learned,
    LearnedSessions,
    from_wire,
    issued_session_ids,
    to_wire,
)

SIDS = st.text("ABCDEF0123", min_size=1, max_size=4)
COOKIES = ("JSESSIONID", "PHPSESSID")
PARAMS = ("jsessionid", "sid")


def test_learn_lookup_and_ttl_refreshed_on_use() -> None:
    t = LearnedSessions(ttl_s=10, max_entries=100)
    assert t.learn("A", 2, now=0.0)
    assert t.lookup("A", 9.0) == 2  # used: lives until 19
    assert t.lookup("A", 18.0) == 2
    assert t.lookup("A", 28.5) is None  # idle longer than the TTL
    assert len(t) == 0
    assert t.lookup("missing", 0.0) is None


def test_a_new_learn_rebinds_and_counts() -> None:
    t = LearnedSessions(10, 100)
    t.learn("A", 1, 0.0)
    assert not t.learn("A", 1, 1.0)  # the same binding again: not a change
    assert t.learn("A", 3, 2.0)
    assert t.lookup("A", 2.0) == 3
    assert t.learned_total == 2


@given(st.lists(st.tuples(SIDS, st.integers(1, 4)), max_size=60), st.integers(1, 8))
def test_size_is_bounded_and_least_recently_used_go(ops: list[tuple[str, int]],
                                                    limit: int) -> None:
    t = LearnedSessions(1000, limit)
    last: dict[str, int] = {}
    order: list[str] = []
    for i, (sid, bid) in enumerate(ops):
        t.learn(sid, bid, float(i))
        last[sid] = bid
        if sid in order:
            order.remove(sid)
        order.append(sid)
        assert len(t) <= limit
    kept = order[-limit:]
    assert len(t) == len(kept)
    for sid in kept:
        assert t.lookup(sid, float(len(ops))) == last[sid]
    for sid in order[:-limit]:
        assert t.lookup(sid, float(len(ops))) is None


def test_expire_sweeps_from_the_idle_end() -> None:
    t = LearnedSessions(5, 100)
    for i in range(10):
        t.learn(f"s{i}", 1, float(i))
    assert t.expire(now=12.0) == 7  # s0..s6 idle more than 5 s
    assert len(t) == 3
    assert t.expire(now=12.0) == 0


def test_change_log_exports_each_change_once_in_batches() -> None:
    t = LearnedSessions(100, 1000)
    for i in range(25):
        t.learn(f"s{i}", i % 3 + 1, float(i))
    t.learn("s0", 9, 30.0)  # changed again: exported once, with its last binding
    batches = []
    while t.has_changes:
        batches.append(t.take_changes(10))
    assert [len(b) for b in batches] == [10, 10, 5]
    flat = [r for b in batches for r in b]
    assert sorted(r[0] for r in flat) == sorted(f"s{i}" for i in range(25))
    assert ("s0", 9, 30.0, 30.0) in flat


def test_use_is_reshared_once_per_quarter_ttl() -> None:
    t = LearnedSessions(100, 1000)
    t.learn("A", 1, 0.0)
    t.take_changes(10)
    t.lookup("A", 10.0)
    assert not t.has_changes
    t.lookup("A", 26.0)
    assert t.take_changes(10) == [("A", 1, 0.0, 26.0)]


def test_merge_newer_wins_and_later_use_extends() -> None:
    t = LearnedSessions(100, 1000)
    t.learn("A", 1, 10.0)
    t.take_changes(10)
    assert t.merge([("A", 2, 5.0, 50.0)], now=50.0) == [("A", 1, 10.0, 50.0)]  # older learn
    assert t.lookup("A", 50.0) == 1
    assert t.merge([("A", 2, 20.0, 20.0)], now=50.0)[0][:3] == ("A", 2, 20.0)
    assert t.lookup("A", 50.0) == 2
    assert not t.has_changes  # not shared by default: imports are not echoed
    t.merge([("B", 3, 40.0, 40.0)], 50.0, share=True)
    assert t.take_changes(10) == [("B", 3, 40.0, 40.0)]
    assert t.merge([("C", 1, 0.0, 0.0)], now=500.0) == []  # expired before it arrived
    assert t.merge([("A", 2, 20.0, 20.0)], now=50.0) == []  # nothing new


RECORDS = st.lists(st.tuples(SIDS, st.integers(1, 4), st.integers(0, 20).map(float),
                             st.integers(0, 20).map(float)), max_size=30)


def _state(t: LearnedSessions) -> dict[str, tuple[int, float, float]]:
    return {sid: (bid, la, ua) for sid, bid, la, ua in t.snapshot(10**6)}


@given(RECORDS, st.randoms())
def test_merge_converges_whatever_the_order(records: list[Learned], rnd: random.Random) -> None:
    records = [(s, b, la, max(la, ua)) for s, b, la, ua in records]
    a, b = LearnedSessions(100, 1000), LearnedSessions(100, 1000)
    a.merge(records, 20.0)
    shuffled = list(records)
    rnd.shuffle(shuffled)
    for r in shuffled:  # one at a time, as batches from different peers arrive
        b.merge([r], 20.0)
    assert _state(a) == _state(b)
    for sid, (bid, learned_at, used_at) in _state(a).items():
        mine = [r for r in records if r[0] == sid]
        newest = max((la, bi) for _, bi, la, _ in mine)
        assert (learned_at, bid) == newest
        assert used_at == max(ua for *_, ua in mine)


@given(RECORDS)
def test_wire_round_trip_keeps_times(records: list[Learned]) -> None:
    wire = to_wire(records, now=20.0)
    # The receiver's clock is 1000 s ahead: ages keep the meaning.
    back = from_wire(wire, now=1020.0, limit=100)
    assert len(back) == len(records)
    for (s, b, la, ua), (s2, b2, la2, ua2) in zip(records, back, strict=True):
        assert (s, b) == (s2, b2)
        assert abs((la + 1000) - la2) < 0.01 and abs((ua + 1000) - ua2) < 0.01


def test_from_wire_skips_garbage_and_is_bounded() -> None:
    good = ["A", 1, 0.5, 0]
    items = [good, ["B", "1", 0, 0], ["C", 1, -1, 0], ["D", 1, float("nan"), 0], ["E", 1, 0],
             "x", [None, 1, 0, 0], ["x" * (MAX_ID_LEN + 1), 1, 0, 0], ["F", True, 0, 0],
             ["bad\nid", 1, 0, 0]]
    assert [r[0] for r in from_wire(items, 10.0, 100)] == ["A"]
    assert from_wire({"not": "a list"}, 0.0, 10) == []
    assert len(from_wire([good] * 50, 0.0, limit=7)) == 7


def _head(*pairs: tuple[str, str]) -> list[tuple[bytes, bytes]]:
    return [(n.encode(), v.encode()) for n, v in pairs]


def test_issued_ids_from_set_cookie_and_location() -> None:
    head = _head(("Content-Type", "text/html"),
                 ("Set-Cookie", "JSESSIONID=abc123; Path=/; Max-Age=3600; HttpOnly"),
                 ("set-cookie", "other=1, PHPSESSID=\"q9\"; Path=/app"),
                 ("Location", "https://shop.test/app;jsessionid=LOC7?x=1"))
    assert issued_session_ids(head, COOKIES, PARAMS) == ["abc123", "q9", "LOC7"]
    assert issued_session_ids(_head(("Location", "/next?SID=s1")), COOKIES, PARAMS) == ["s1"]


def test_deletions_and_foreign_cookies_are_not_learned() -> None:
    head = _head(("Set-Cookie", "JSESSIONID=gone; Max-Age=0; Path=/"),
                 ("Set-Cookie", "JSESSIONID=; Path=/"),
                 ("Set-Cookie", "jsessionid=lower-case-is-another-cookie"),
                 ("Set-Cookie", "DLBASERVER=x"),
                 ("Location", "/plain/path"))
    assert issued_session_ids(head, COOKIES, PARAMS) == []
    assert issued_session_ids(_head(("Set-Cookie", "JSESSIONID=a")), (), ()) == []
