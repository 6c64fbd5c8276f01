"""The restart policy of `dlba up`'s supervisor (pure): backoff, its cap, and its reset."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dlba.local_array.supervisor import RestartPolicy


def test_a_dead_node_waits_the_backoff_then_starts() -> None:
    p = RestartPolicy(base_s=0.5, cap_s=30.0, stable_s=30.0)
    p.seen_alive("n1", 0.0)
    assert not p.seen_dead("n1", 10.0)  # first death: due at 10.5
    assert not p.seen_dead("n1", 10.4)
    assert p.seen_dead("n1", 10.5)
    p.started("n1", 10.5)
    assert not p.seen_dead("n1", 11.0)  # died again at once: twice the wait
    assert not p.seen_dead("n1", 11.9)
    assert p.seen_dead("n1", 12.0)
    assert p.failures("n1") == 2


def test_a_node_that_stayed_up_starts_the_backoff_afresh() -> None:
    p = RestartPolicy(base_s=0.5, cap_s=30.0, stable_s=30.0)
    for i in range(5):
        p.started("n1", float(i))
        p.seen_dead("n1", float(i))
    assert p.failures("n1") == 5
    p.started("n1", 100.0)
    p.seen_alive("n1", 131.0)
    assert not p.seen_dead("n1", 140.0)
    assert p.failures("n1") == 1
    assert p.seen_dead("n1", 140.5)


def test_nodes_are_tracked_apart() -> None:
    p = RestartPolicy(base_s=1.0)
    p.seen_dead("n1", 0.0)
    p.seen_dead("n1", 1.0)
    assert p.failures("n1") == 1 and p.failures("n2") == 0
    assert not p.seen_dead("n2", 0.0)


@given(st.integers(1, 200))
def test_backoff_grows_and_is_capped(failures: int) -> None:
    p = RestartPolicy(base_s=0.5, cap_s=30.0)
    assert p.base_s <= p.delay(failures) <= p.cap_s
    assert p.delay(failures) <= p.delay(failures + 1)
