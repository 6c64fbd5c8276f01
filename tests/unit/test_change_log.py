"""The client table's change log on its own: bounded, exact deltas, restart."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scheduler.change_log import ChangeLog


def test_since_gives_each_bucket_its_latest_owner() -> None:
    log = ChangeLog(limit=10)
    log.append(1, ((0, 1), (1, 1)))
    log.append(2, ((0, 2),))
    log.append(3, ((2, None),))
    assert log.since(0) == [(0, 2), (1, 1), (2, None)]
    assert log.since(2) == [(2, None)]
    assert log.since(3) == []


def test_evicting_raises_the_floor_by_whole_operations() -> None:
    log = ChangeLog(limit=3)
    log.append(1, ((0, 1), (1, 1)))
    log.append(2, ((2, 1), (3, 1)))  # 4 changes > 3: version 1 goes
    assert log.size == 2 and log.floor == 1
    assert log.since(0) is None
    assert log.since(1) == [(2, 1), (3, 1)]


def test_restart_forgets_the_history() -> None:
    log = ChangeLog(limit=10)
    log.append(1, ((0, 1),))
    log.restart(5)
    assert log.size == 0
    assert log.since(4) is None
    assert log.since(5) == []


@given(st.integers(1, 20), st.lists(st.lists(st.tuples(st.integers(0, 7), st.integers(0, 3)),
                                             min_size=1, max_size=6), max_size=20))
def test_size_never_exceeds_the_limit_and_deltas_stay_exact(
        limit: int, ops: list[list[tuple[int, int]]]) -> None:
    log = ChangeLog(limit)
    state: list[dict[int, int | None]] = [{}]
    for v, changes in enumerate(ops, start=1):
        log.append(v, tuple(changes))
        state.append({**state[-1], **dict(changes)})
        assert log.size <= limit
    for v in range(len(ops) + 1):
        delta = log.since(v)
        if delta is None:
            assert v < log.floor
            continue
        applied = {**state[v], **dict(delta)}
        assert applied == state[-1]
