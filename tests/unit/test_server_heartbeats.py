"""The scheduler's heartbeat to every server: a node fails after `threshold` misses in a row
(one slow answer of a busy node fails nothing), and with the sweep as a second judge a node is
failed while either says so."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scheduler.failover.server_heartbeats import HEARTBEAT, SWEEP, NodeLiveness, ServerHeartbeats
from scheduler.status_sweep import NodeFailed, NodeRecovered, StatusSweep


@given(st.integers(1, 5), st.lists(st.booleans(), max_size=80))
def test_failed_exactly_after_threshold_misses_in_a_row(threshold: int, rounds: list[bool]) -> None:
    hb = ServerHeartbeats(3, 0, threshold=threshold)
    run, failed = 0, False
    for ok in rounds:
        events = hb.on_round({1: ok, 2: True})
        run = 0 if ok else run + 1
        now_failed = run >= threshold
        expected: list[object] = []
        if now_failed and not failed:
            expected = [NodeFailed(1)]
        elif failed and ok:
            expected = [NodeRecovered(1)]
        assert events == expected
        failed = now_failed


def test_one_slow_answer_fails_nothing() -> None:
    hb = ServerHeartbeats(2, 1, threshold=3)
    for ok in [True, False, True, False, False, True, False, True]:
        assert hb.on_round({0: ok}) == []


def test_the_scheduler_never_fails_itself_and_known_dead_nodes_start_failed() -> None:
    hb = ServerHeartbeats(3, 0, threshold=1, initially_failed=[0, 2])
    assert hb.peers() == [1, 2]
    assert hb.on_round({0: False, 1: True, 2: False}) == []
    assert hb.on_round({2: True}) == [NodeRecovered(2)]


def test_a_node_is_failed_while_either_source_says_so() -> None:
    live = NodeLiveness(3)
    assert live.on_event(HEARTBEAT, NodeFailed(1)) == NodeFailed(1)
    assert live.on_event(SWEEP, NodeFailed(1)) is None
    assert live.on_event(HEARTBEAT, NodeRecovered(1)) is None  # the sweep still fails it
    assert live.failed(1)
    assert live.on_event(SWEEP, NodeRecovered(1)) == NodeRecovered(1)
    assert not live.failed(1)
    assert live.on_event(SWEEP, NodeRecovered(1)) is None


@given(st.lists(st.tuples(st.sampled_from([HEARTBEAT, SWEEP]), st.booleans()), max_size=40))
def test_liveness_events_alternate_and_follow_the_union(steps: list[tuple[str, bool]]) -> None:
    live = NodeLiveness(1, initially_failed=[0])
    down = {HEARTBEAT, SWEEP}
    was = True
    for source, fail in steps:
        ev = live.on_event(source, NodeFailed(0) if fail else NodeRecovered(0))
        (down.add if fail else down.discard)(source)
        now = bool(down)
        assert ev == (None if now == was else (NodeFailed(0) if now else NodeRecovered(0)))
        assert live.failed(0) is now
        was = now


def test_a_sweep_told_of_a_failed_node_reports_its_recovery() -> None:
    sweep = StatusSweep(2, retries=0, sweep_delay_s=0.0)
    sweep.mark_failed(0)
    sweep.next_action(0.0)
    assert NodeRecovered(0) in sweep.on_result(0, True, 0.0)
