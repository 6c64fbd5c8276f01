"""The status sweep plan, checked against a straightforward model of the patent's words."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scheduler.status_sweep import (
    NodeAnswered,
    NodeFailed,
    NodeRecovered,
    StatusSweep,
    SweepFinished,
    Visit,
    Wait,
)


@given(
    n=st.integers(1, 6),
    retries=st.integers(0, 3),
    retry_delay=st.floats(0, 2),
    sweep_delay=st.floats(0, 5),
    results=st.lists(st.booleans(), max_size=120),
    work=st.floats(0, 1),
)
def test_sweep_visits_one_node_at_a_time_with_retries_and_delays(
    n: int,
    retries: int,
    retry_delay: float,
    sweep_delay: float,
    results: list[bool],
    work: float,
) -> None:
    s = StatusSweep(n, retries=retries, retry_delay_s=retry_delay, sweep_delay_s=sweep_delay)
    now = 0.0
    expected_node, attempt = 0, 1
    failed: set[int] = set()
    earliest = 0.0
    sweeps = 0
    for ok in results:
        action = s.next_action(now)
        if isinstance(action, Wait):
            assert action.until > now
            assert action.until == pytest.approx(earliest)
            now = action.until
            action = s.next_action(now)
        assert isinstance(action, Visit)
        assert now >= earliest
        assert action == Visit(expected_node, attempt)
        # Asking again before answering must not start a second visit.
        assert s.next_action(now) == action
        now += work
        events = s.on_result(action.node, ok, now)
        allowed = 1 if expected_node in failed else 1 + retries
        if not ok and attempt < allowed:
            assert events == []
            attempt += 1
            earliest = now + retry_delay
            continue
        expect: list[object] = []
        if ok:
            if expected_node in failed:
                expect.append(NodeRecovered(expected_node))
                failed.discard(expected_node)
            expect.append(NodeAnswered(expected_node))
        elif expected_node not in failed:
            failed.add(expected_node)
            expect.append(NodeFailed(expected_node))
        expected_node, attempt, earliest = expected_node + 1, 1, now
        if expected_node == n:
            sweeps += 1
            expected_node, earliest = 0, now + sweep_delay
            expect.append(SweepFinished(sweeps, now))
            assert s.last_sweep == now
        assert events == expect
        assert s.failed == failed
    assert s.sweeps == sweeps


def test_a_node_is_failed_only_after_all_retries() -> None:
    s = StatusSweep(2, retries=2, retry_delay_s=0.5, sweep_delay_s=10.0)
    assert s.on_result(*_visit(s, 0.0), True, 0.0) == [NodeAnswered(0)]
    assert s.on_result(*_visit(s, 0.1), False, 0.1) == []
    assert s.next_action(0.2) == Wait(0.6)
    assert s.on_result(*_visit(s, 0.6), False, 0.6) == []
    assert s.failed == frozenset()
    assert s.on_result(*_visit(s, 1.1), False, 1.1) == [NodeFailed(1), SweepFinished(1, 1.1)]
    assert s.failed == {1}
    assert s.next_action(5.0) == Wait(11.1)
    # Next sweep: the failed node gets a single try and comes back with one answer.
    s.on_result(*_visit(s, 11.1), True, 11.1)
    assert s.on_result(*_visit(s, 11.2), True, 11.2) == [
        NodeRecovered(1),
        NodeAnswered(1),
        SweepFinished(2, 11.2),
    ]


def test_a_result_nobody_asked_for_is_refused() -> None:
    s = StatusSweep(3)
    with pytest.raises(ValueError):
        s.on_result(0, True, 0.0)
    s.next_action(0.0)
    with pytest.raises(ValueError):
        s.on_result(2, True, 0.0)


def _visit(s: StatusSweep, now: float) -> tuple[int]:
    action = s.next_action(now)
    assert isinstance(action, Visit)
    return (action.node,)
