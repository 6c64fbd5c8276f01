"""The pool queue's rules, one scenario each, plus a random playbook (hypothesis)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from dlba.services.classes import ClientClass
from dlba.services.pool_queue import PoolQueue

GOLD = ClientClass("gold", 0)
SILVER = ClientClass("silver", 1)
BRONZE = ClientClass("bronze", 2)
A1 = ClientClass("a1", 1, weight=300)
A2 = ClientClass("a2", 1, weight=100)


def queue(max_waiting: int = 10, timeout: float = 5.0) -> PoolQueue[str]:
    q: PoolQueue[str] = PoolQueue("web", timeout, max_waiting)
    q.set_limits({1: 2, 2: 0})
    return q


def test_slots_and_unlimited_backends() -> None:
    q = queue()
    assert q.has_room(1)
    q.acquire(1)
    q.acquire(1)
    assert not q.has_room(1) and q.full() == frozenset({1})
    assert q.has_room(2)  # maxconn 0: no limit
    q.release(1)
    assert q.has_room(1)


def test_freed_slot_goes_to_the_highest_class_then_first_come() -> None:
    q = queue()
    q.push("b1", BRONZE, 0.0)
    q.push("s1", SILVER, 0.1)
    q.push("g1", GOLD, 0.2)
    q.push("s2", SILVER, 0.3)
    got = [w.item for w in iter(lambda: q.pop_for(1), None)]
    assert got == ["g1", "s1", "s2", "b1"]


def test_pinned_waiter_only_takes_its_backend() -> None:
    q = queue()
    q.push("pinned", GOLD, 0.0, backend=1)
    q.push("any", BRONZE, 0.0)
    w = q.pop_for(3)
    assert w is not None and w.item == "any"
    assert q.pop_for(3) is None
    w = q.pop_for(1)
    assert w is not None and w.item == "pinned"


def test_arrivals_never_overtake_their_class_or_a_higher_one() -> None:
    q = queue()
    q.push("s1", SILVER, 0.0)
    assert q.blocked(1, SILVER) and q.blocked(1, BRONZE)
    assert not q.blocked(1, GOLD)  # a higher class may take a free slot at once


def test_full_queue_sheds_the_newest_of_the_lowest_class_first() -> None:
    q = queue(max_waiting=3)
    assert q.push("b1", BRONZE, 0) == []
    assert q.push("b2", BRONZE, 0) == []
    assert q.push("s1", SILVER, 0) == []
    assert q.push("g1", GOLD, 0) == ["b2"]
    assert q.push("g2", GOLD, 0) == ["b1"]
    assert q.push("s2", SILVER, 0) == ["s2"]  # nothing below silver waits: the newcomer goes
    assert q.push("g3", GOLD, 0) == ["s1"]
    assert q.push("g4", GOLD, 0) == ["g4"]  # gold is shed only when only gold waits
    assert sorted(q.items()) == ["g1", "g2", "g3"]
    c = q.counters.by_class
    assert (c["bronze"].shed, c["silver"].shed, c["gold"].shed) == (2, 2, 1)


def test_wait_runs_out_after_timeout() -> None:
    q = queue(timeout=2.0)
    q.push("a", SILVER, 0.0)
    q.push("b", SILVER, 1.0)
    assert q.expire(1.9) == []
    assert q.expire(2.0) == ["a"]
    assert q.counters.timeouts == 1 and q.depth() == 1


def test_weight_share_within_a_priority() -> None:
    q = queue(max_waiting=100)
    for i in range(40):
        q.push(f"a1-{i}", A1, 0)
        q.push(f"a2-{i}", A2, 0)
    got = []
    for _ in range(40):
        w = q.pop_for(1)
        assert w is not None
        q.served(w.cls)
        got.append(w.cls.name)
    assert got.count("a1") == 30 and got.count("a2") == 10  # 3:1, as the weights say


def test_gone_items_are_dropped() -> None:
    q = queue()
    q.push("gone", GOLD, 0)
    q.push("here", BRONZE, 0)
    w = q.pop_for(1, alive=lambda item: item != "gone")
    assert w is not None and w.item == "here" and q.depth() == 0


CLASSES = [GOLD, SILVER, BRONZE]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["push", "pop", "expire"]), st.integers(0, 2)),
                max_size=80))
def test_playbook_invariants(steps: list[tuple[str, int]]) -> None:
    """Whatever happens: the depth bound holds, no class takes a slot while a higher one waits,
    and a class is shed to make room only when nothing lower waits."""
    q: PoolQueue[int] = PoolQueue("p", 3.0, max_waiting=5)
    now = 0.0
    for n, (op, k) in enumerate(steps):
        now += 0.5
        if op == "push":
            lower_waiting = any(w.cls.priority > CLASSES[k].priority for w in q.waiting)
            full = q.depth() >= 5
            shed = q.push(n, CLASSES[k], now)
            assert q.depth() <= 5
            if full and lower_waiting:
                assert shed != [n]
        elif op == "pop":
            w = q.pop_for(1)
            if w is not None:
                assert all(x.cls.priority >= w.cls.priority for x in q.waiting)
        else:
            for item in q.expire(now):
                assert item not in set(q.items())


def test_worker_views_merge() -> None:
    from dlba.services.runtime import merge_json

    def part(depth: int, shed: int) -> dict[str, object]:
        return {"services": [{"name": "s", "requests": 3}],
                "pools": {"web": {"backends": [1], "policy": "p2c", "queue_depth": depth,
                                  "queued": 1, "shed": shed, "timeouts": 0, "max_depth": depth,
                                  "slots_used": 1, "slots": 2,
                                  "classes": {"gold": {"requests": 2, "shed": shed}}}},
                "classes": [{"name": "gold", "priority": 0, "weight": 100}]}

    m = merge_json([part(2, 1), part(5, 0)])
    web = m["pools"]["web"]
    assert (web["queue_depth"], web["shed"], web["max_depth"], web["slots"]) == (7, 1, 5, 4)
    assert web["classes"]["gold"] == {"requests": 4, "shed": 1}
    assert m["services"][0]["requests"] == 6


def test_waiters_that_do_not_fit_are_passed_over_not_dropped() -> None:
    q = queue()
    q.push("failed-on-1", GOLD, 0)
    q.push("any", BRONZE, 0)
    w = q.pop_for(1, fits=lambda w: w.item != "failed-on-1")
    assert w is not None and w.item == "any"
    assert list(q.items()) == ["failed-on-1"]
