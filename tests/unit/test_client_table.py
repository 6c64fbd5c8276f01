"""Properties of the client table (patent 003, Fig. 4): hypothesis drives every operation."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)

from scheduler.client_table import ClientTable, SyncError, bucket_of, quotas

sizes = st.integers(min_value=1, max_value=600)
weight_lists = st.lists(st.integers(min_value=1, max_value=1000), min_size=1, max_size=8)


def filled(size: int, weights: list[int], now: float = 0.0) -> ClientTable:
    t = ClientTable(size, weights)
    t.fill(now)
    return t


def test_bucket_is_ip_as_u32_plus_port_mod_size() -> None:
    # 10.0.0.1 = 0x0A000001 = 167772161
    assert bucket_of("10.0.0.1", 1000, 4096) == (167772161 + 1000) % 4096
    assert bucket_of(167772161, 1000, 4096) == bucket_of("10.0.0.1", 1000, 4096)
    # No u32 wrap: the C side must sum in 64 bits too.
    assert bucket_of("255.255.255.255", 65535, 7) == (0xFFFFFFFF + 65535) % 7
    with pytest.raises(ValueError):
        bucket_of("::1", 80, 16)
    with pytest.raises(ValueError):
        bucket_of(1, 70000, 16)


@given(sizes, weight_lists)
def test_fill_is_proportional_to_weight_within_one_bucket(size: int, weights: list[int]) -> None:
    t = filled(size, weights)
    counts = t.counts()
    assert sum(counts) == size
    assert None not in t.assignments()
    total = sum(weights)
    for c, w in zip(counts, weights, strict=True):
        assert abs(c - size * w / total) < 1
    assert counts == [t.assignments().count(i) for i in range(len(weights))]


@given(sizes, weight_lists, st.data())
def test_node_failed_moves_only_its_buckets(
    size: int, weights: list[int], data: st.DataObject
) -> None:
    t = filled(size, weights)
    dead = data.draw(st.integers(0, len(weights) - 1))
    before = t.assignments()
    t.node_failed(dead, now=5.0)
    after = t.assignments()
    for b, (old, new) in enumerate(zip(before, after, strict=True)):
        if old != dead:
            assert new == old, f"bucket {b} moved although its node is alive"
        else:
            assert new != dead
    if len(weights) > 1:
        assert None not in after
        # Orphans go only where they are needed: no receiver ends above its new quota.
        q, counts = t.quotas(), t.counts()
        for i in range(len(weights)):
            if counts[i] > before.count(i):
                assert counts[i] <= q[i]
    else:
        assert set(after) == {None}
    assert sum(t.counts()) == sum(1 for a in after if a is not None)


@given(
    sizes,
    weight_lists,
    st.integers(min_value=1, max_value=1000),
    st.data(),
)
def test_join_moves_only_idle_buckets_from_over_to_under_quota(
    size: int, weights: list[int], new_weight: int, data: st.DataObject
) -> None:
    t = filled(size, weights)
    idle_s, now = 300.0, 1000.0
    busy = data.draw(st.lists(st.booleans(), min_size=size, max_size=size))
    for b, is_busy in enumerate(busy):
        t.touch(b, now - (10.0 if is_busy else 400.0))
    newcomer = t.add_node(new_weight)
    assert t.node_joined(newcomer, now) == 0  # nothing is ownerless: nothing moves at join time
    before = t.assignments()
    q = t.quotas()
    t.rebalance(now, idle_s)
    after = t.assignments()
    for b, (old, new) in enumerate(zip(before, after, strict=True)):
        if old != new:
            assert not busy[b], f"busy bucket {b} moved"
            assert old is not None and before.count(old) > q[old]
    counts = t.counts()
    # Nobody was pushed above quota, and nobody who lost buckets went below it.
    for i in range(t.node_count):
        assert counts[i] <= max(q[i], before.count(i))
        if counts[i] < before.count(i):
            assert counts[i] >= q[i]
    if not any(busy):
        assert counts == q


@given(sizes, st.integers(1, 8), st.data())
def test_panic_spreads_evenly_over_live_nodes(size: int, n: int, data: st.DataObject) -> None:
    t = ClientTable(size, [100] * n)
    # A "messed up" table: arbitrary owners, some buckets ownerless.
    messy = data.draw(
        st.lists(st.none() | st.integers(0, n - 1), min_size=size, max_size=size)
    )
    t.apply_snapshot(1, messy, epoch=0)
    dead = data.draw(st.sets(st.integers(0, n - 1), max_size=n - 1))
    for d in dead:
        t.node_failed(d, now=1.0)
    t.panic(now=50.0, scheduler_index=0)
    counts = [c for i, c in enumerate(t.counts()) if i not in dead]
    assert max(counts) - min(counts) <= 1
    assert sum(counts) == size
    assert all(t.owner(b) not in dead for b in range(size))
    assert all(t.last_access(b) == 50.0 for b in range(size))
    assert t.panic_scheduler == 0


@given(sizes, weight_lists)
def test_panic_with_weights_reaches_exact_quotas(size: int, weights: list[int]) -> None:
    t = ClientTable(size, [1] * len(weights))
    t.fill(0.0)
    for i, w in enumerate(weights):
        t.set_weight(i, w)
    t.panic(now=1.0)
    assert t.counts() == quotas(size, weights, [True] * len(weights))


def test_all_nodes_drained_share_equally_rather_than_black_hole() -> None:
    assert quotas(10, [0, 0], [True, True]) == [5, 5]
    assert quotas(10, [0, 5], [True, True]) == [0, 10]
    assert quotas(10, [5, 5], [False, False]) == [0, 0]


@given(st.integers(1, 200), st.lists(st.tuples(st.integers(0, 10**6), st.floats(0, 1e9))))
def test_memory_does_not_depend_on_traffic(size: int, touches: list[tuple[int, float]]) -> None:
    t = filled(size, [1, 2, 3])
    owners_before = t._owner.buffer_info()
    last_before = t._last.buffer_info()
    t.touch_many((b % size, when) for b, when in touches)
    assert t._owner.buffer_info() == owners_before
    assert t._last.buffer_info() == last_before


def test_touch_never_moves_time_backwards() -> None:
    t = filled(4, [1])
    t.touch(2, 10.0)
    t.touch(2, 5.0)
    assert t.last_access(2) == 10.0
    t.load_last_access([1.0, 1.0, 20.0, 1.0])
    assert t.last_access(2) == 20.0


@pytest.mark.parametrize("now", [0.0, 5.0, 299.0])
def test_never_used_buckets_are_idle_on_a_freshly_booted_host(now: float) -> None:
    # The clock is seconds since boot: a host up for less than idle_s must still move buckets
    # that never carried traffic, whatever the data plane's map reads for them (0 = never).
    t = filled(8, [1, 1], now=now)
    t.load_last_access([0.0] * 8)
    t.set_weight(1, 0)  # node 1 disabled: all its buckets are idle, so all move
    assert t.rebalance(now, idle_s=300.0) == 4
    assert t.counts() == [8, 0]


def test_a_used_bucket_stays_busy_on_a_freshly_booted_host() -> None:
    t = filled(8, [1, 1], now=5.0)
    used = next(b for b in range(8) if t.owner(b) == 1)
    stamps = [0.0] * 8
    stamps[used] = 4.0  # carried traffic a second ago, as the data plane's map says
    t.load_last_access(stamps)
    t.set_weight(1, 0)
    assert t.rebalance(5.0, idle_s=300.0) == 3
    assert t.assignments() == [1 if b == used else 0 for b in range(8)]


def test_delta_not_based_on_followers_version_is_refused() -> None:
    leader = filled(8, [1, 1])
    follower = ClientTable(8, [1, 1])
    follower.apply_snapshot(leader.version, leader.assignments(), epoch=leader.epoch)
    leader.node_failed(0, now=1.0)
    v1 = leader.version
    leader.node_joined(0, now=2.0)
    leader.rebalance(now=1000.0, idle_s=1.0)
    with pytest.raises(SyncError):
        follower.apply_delta(v1, leader.version, leader.changes_since(v1, epoch=0) or [], epoch=0)
    with pytest.raises(SyncError):
        follower.apply_delta(follower.version, leader.version, [], epoch=7)
    assert leader.changes_since(0, epoch=99) is None  # another scheduler's term: send it all


class LeaderFollower(RuleBasedStateMachine):
    """A scheduler and a follower syncing over a lossy channel; every invariant, every step."""

    @initialize(
        size=st.integers(1, 64), weights=st.lists(st.integers(1, 5), min_size=1, max_size=5)
    )
    def setup(self, size: int, weights: list[int]) -> None:
        self.leader = ClientTable(size, weights, log_limit=max(1, size // 2))
        self.follower = ClientTable(size, weights)
        self.now = 0.0
        self.leader.fill(self.now)
        self.dead: set[int] = set()

    def _op(self, change: bool) -> None:
        # version moves iff assignments moved
        self.now += 1.0
        assert (self.leader.version > self.v0) == (self.leader.assignments() != self.a0)
        assert self.leader.version - self.v0 in (0, 1)
        assert change == (self.leader.version > self.v0)

    def _before(self) -> None:
        self.v0, self.a0 = self.leader.version, self.leader.assignments()

    @rule(data=st.data())
    def fail_node(self, data: st.DataObject) -> None:
        node = data.draw(st.integers(0, self.leader.node_count - 1))
        self._before()
        moved = self.leader.node_failed(node, self.now)
        self.dead.add(node)
        self._op(moved > 0)

    @rule(data=st.data())
    def join_node(self, data: st.DataObject) -> None:
        node = data.draw(st.integers(0, self.leader.node_count - 1))
        self._before()
        moved = self.leader.node_joined(node, self.now)
        self.dead.discard(node)
        self._op(moved > 0)

    @rule(idle=st.floats(0, 5), data=st.data())
    def traffic_and_rebalance(self, idle: float, data: st.DataObject) -> None:
        busy = data.draw(st.lists(st.integers(0, self.leader.size - 1), max_size=10))
        self.leader.touch_many((b, self.now) for b in busy)
        self._before()
        moved = self.leader.rebalance(self.now, idle)
        self._op(moved > 0)
        for b in busy:
            assert self.leader.owner(b) == self.a0[b] or self.a0[b] in self.dead

    @rule(data=st.data())
    def reweight(self, data: st.DataObject) -> None:
        node = data.draw(st.integers(0, self.leader.node_count - 1))
        self._before()
        self.leader.set_weight(node, data.draw(st.integers(0, 5)))
        self._op(False)

    @rule()
    def panic(self) -> None:
        self._before()
        moved = self.leader.panic(self.now)
        self._op(moved > 0)
        assert self.leader.counts() == self.leader.quotas() or not any(
            self.leader.is_live(i) for i in range(self.leader.node_count)
        )

    @rule()
    def sync(self) -> None:
        delta = self.leader.changes_since(self.follower.version, epoch=self.follower.epoch)
        if delta is None:
            self.follower.apply_snapshot(
                self.leader.version, self.leader.assignments(), epoch=self.leader.epoch
            )
        else:
            self.follower.apply_delta(
                self.follower.version, self.leader.version, delta, epoch=self.leader.epoch
            )
        assert self.follower.assignments() == self.leader.assignments()
        assert self.follower.version == self.leader.version
        assert self.follower.counts() == self.leader.counts()

    @precondition(lambda self: self.follower.version > 0)
    @rule()
    def failover(self) -> None:
        # The follower becomes the scheduler; the old leader rejoins as its follower.
        self.follower.begin_term(self.leader.epoch + 1, self.now)
        for i in range(self.leader.node_count):
            if self.leader.is_live(i) != self.follower.is_live(i):
                if self.leader.is_live(i):
                    self.follower.node_joined(i, self.now)
                else:
                    self.follower.node_failed(i, self.now)
        self.follower.fill(self.now)
        self.leader, self.follower = self.follower, self.leader
        assert all(self.leader.last_access(b) == self.now for b in range(self.leader.size))

    @invariant()
    def no_bucket_on_a_dead_node(self) -> None:
        for b in range(self.leader.size):
            o = self.leader.owner(b)
            assert o is None or self.leader.is_live(o)

    @invariant()
    def counts_sum_to_owned_buckets(self) -> None:
        a = self.leader.assignments()
        assert sum(self.leader.counts()) == sum(1 for o in a if o is not None)
        if any(self.leader.is_live(i) for i in range(self.leader.node_count)):
            assert None not in a

    @invariant()
    def log_is_bounded(self) -> None:
        assert self.leader._log.size <= self.leader._log.limit


TestLeaderFollower = LeaderFollower.TestCase
TestLeaderFollower.settings = settings(max_examples=150, stateful_step_count=30, deadline=None)
