"""Idle-bucket moves checked again just before the kernel takes them (scheduler/move_guard.py)
and given back by the client table (ClientTable.keep)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from scheduler.client_table import ClientTable
from scheduler.move_guard import busy_moves

SINCE = 1_000


def test_only_moves_away_from_a_live_owner_that_carried_traffic_are_kept() -> None:
    before = [0, 0, 1, None, 2, 1]
    after = [1, 0, 0, 1, 0, 1]
    last = [SINCE, SINCE + 5, SINCE - 1, SINCE + 9, SINCE + 2, SINCE + 3]
    alive = {0: True, 1: True, 2: False}.__getitem__
    # 0: moved, busy since -> kept; 1, 5: not moved; 2: moved but idle; 3: a first owner;
    # 4: its owner died -> moves whatever its traffic.
    assert busy_moves(before, after, alive, last, SINCE) == [(0, 0)]


@given(st.lists(st.tuples(st.sampled_from([None, 0, 1, 2]), st.sampled_from([None, 0, 1, 2]),
                          st.integers(0, 2 * SINCE)), max_size=64))
def test_kept_buckets_are_moves_of_busy_buckets(rows: list[tuple[int | None, int | None, int]]
                                                ) -> None:
    before = [r[0] for r in rows]
    after = [r[1] for r in rows]
    last = [r[2] for r in rows]
    kept = busy_moves(before, after, lambda n: n != 2, last, SINCE)
    for b, owner in kept:
        assert before[b] == owner and after[b] not in (None, owner) and last[b] >= SINCE
    assert len({b for b, _ in kept}) == len(kept)


def test_keep_gives_buckets_back_in_a_new_version() -> None:
    table = ClientTable(8, [100, 0])
    table.fill(0.0)
    table.set_weight(1, 100)
    assert table.rebalance(100.0, 1.0) == 4  # idle buckets move to the new weight
    version = table.version
    bucket = next(i for i in range(8) if table.owner(i) == 1)
    assert table.keep([(bucket, 0)], 101.0) == 1
    assert table.owner(bucket) == 0 and table.version == version + 1
    assert table.changes_since(version, epoch=table.epoch) == [(bucket, 0)]
    assert table.keep([(bucket, 0)], 102.0) == 0  # already its owner: no new version


def test_keep_never_gives_a_bucket_to_a_member_dropped_since() -> None:
    """A drained member's slot can be gone from the table while the kernel's last assignment
    still names it: nothing goes back to it, and nothing fails on its number."""
    table = ClientTable(8, [100, 100, 0])
    table.fill(0.0)
    table.drop_last_node()
    assert table.keep([(0, 2), (1, 5)], 1.0) == 0
    assert all(table.owner(b) in (0, 1) for b in range(8))


def test_with_kept_puts_kept_buckets_back_on_their_owners() -> None:
    from scheduler.move_guard import with_kept

    assert with_kept([1, 1, None, 2], [(0, 0), (3, 1)]) == [0, 1, None, 1]
    assert with_kept([1, 2], []) == [1, 2]
