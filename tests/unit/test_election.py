"""Properties of the Elect Scheduler state machine (patent 003, "Scheduler Failover")."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from scheduler.election import (
    Decision,
    Election,
    PeerView,
    PeerViews,
    PingResult,
    Role,
    SchedulerSeen,
    StatusChannel,
)

addresses = st.integers(min_value=1, max_value=2**32 - 2).map(
    lambda i: str(ipaddress.IPv4Address(i))
)
address_sets = st.lists(addresses, min_size=1, max_size=8, unique=True)


def following(address: str, scheduler: str, threshold: int = 3) -> Election:
    e = Election(address, ping_failures=threshold)
    assert e.on_scheduler_seen(scheduler, 0.0) is Decision.STAY_SERVER
    return e


def lose_scheduler(e: Election) -> Decision:
    d = Decision.KEEP
    for i in range(e.threshold):
        d = e.on_ping_result(False, float(i))
    return d


def test_addresses_compare_as_integers_not_strings() -> None:
    a = following("10.0.0.9", "10.0.0.1")
    b = following("10.0.0.10", "10.0.0.1")
    for e in (a, b):
        assert lose_scheduler(e) is Decision.ELECT
    assert a.on_peer_views([b.view()], 5.0) is Decision.STAY_SERVER
    assert b.on_peer_views([a.view()], 5.0) is Decision.TAKE_OVER


@given(address_sets, addresses, st.data())
def test_exactly_the_highest_live_candidate_takes_over_in_any_order(
    survivors: list[str], dead: str, data: st.DataObject
) -> None:
    survivors = [a for a in survivors if a != dead] or ["192.0.2.1"]
    nodes = [following(a, dead) for a in survivors]
    for e in nodes:
        assert lose_scheduler(e) is Decision.ELECT
    views = [e.view() for e in nodes]
    decisions = {}
    for e in nodes:
        seen = data.draw(st.permutations(views))
        decisions[e.address] = e.on_peer_views(seen, 10.0)
        # Order independence: any other order gives the same answer from the same state.
        again = Election(e.address)
        again.role, again.scheduler = Role.SUSPECTING, dead
        assert again.on_peer_views(list(reversed(seen)), 10.0) is decisions[e.address]
    winner = max(survivors, key=lambda a: int(ipaddress.IPv4Address(a)))
    assert [a for a, d in decisions.items() if d is Decision.TAKE_OVER] == [winner]
    assert all(d is Decision.STAY_SERVER for a, d in decisions.items() if a != winner)


@given(addresses, address_sets, st.data())
def test_only_candidates_are_eligible(me: str, peers: list[str], data: st.DataObject) -> None:
    peers = [p for p in peers if p != me]
    flags = data.draw(st.lists(st.booleans(), min_size=len(peers), max_size=len(peers)))
    e = following(me, "192.0.2.254")
    lose_scheduler(e)
    views = [
        PeerView(p, candidate=f, scheduler_alive=False) for p, f in zip(peers, flags, strict=True)
    ]
    key = int(ipaddress.IPv4Address(me))
    i_win = all(int(ipaddress.IPv4Address(p)) < key for p, f in zip(peers, flags, strict=True) if f)
    expected = Decision.TAKE_OVER if i_win else Decision.STAY_SERVER
    assert e.on_peer_views(views, 1.0) is expected


@given(addresses, addresses, st.booleans())
def test_a_returning_node_never_preempts_a_live_scheduler(
    me: str, scheduler: str, via_arp: bool
) -> None:
    if me == scheduler:
        return
    e = Election(me)  # starting or returning, whatever its IP
    if via_arp:
        d = e.on_scheduler_seen(scheduler, 0.0)
    else:
        live = PeerView(scheduler, candidate=False, scheduler_alive=True, is_scheduler=True, term=4)
        d = e.on_peer_views([live, PeerView("0.0.0.1", candidate=True, scheduler_alive=False)], 0.0)
    assert d is Decision.STAY_SERVER
    assert e.role is Role.SERVER and e.scheduler == scheduler


def test_old_scheduler_stands_down_after_partition_heals() -> None:
    old = Election("10.0.0.20")
    assert old.on_peer_views([PeerView("10.0.0.11", True, False)], 0.0) is Decision.TAKE_OVER
    # Partitioned: the others elect 10.0.0.11 in a later term.
    new = following("10.0.0.11", "10.0.0.20")
    lose_scheduler(new)
    assert new.on_peer_views([PeerView("10.0.0.5", True, False, term=1)], 5.0) is Decision.TAKE_OVER
    assert new.view().term == 2
    # Healed: the old one hears another ARP answerer, asks, and yields despite its higher IP.
    assert old.on_scheduler_seen(new.address, 6.0) is Decision.ELECT
    assert old.on_peer_views([new.view()], 6.0) is Decision.STAND_DOWN
    assert old.role is Role.SERVER and old.scheduler == new.address
    assert new.on_peer_views([old.view()], 6.0) is Decision.KEEP


def test_equal_terms_resolve_by_ip() -> None:
    low, high = Election("10.0.0.5"), Election("10.0.0.6")
    assert low.on_peer_views([], 0.0) is Decision.TAKE_OVER
    assert high.on_peer_views([], 0.0) is Decision.TAKE_OVER
    assert low.on_peer_views([high.view()], 1.0) is Decision.STAND_DOWN
    assert high.on_peer_views([low.view()], 1.0) is Decision.KEEP


def test_a_peer_that_still_reaches_the_scheduler_blocks_the_election() -> None:
    e = following("10.0.0.99", "10.0.0.1")
    lose_scheduler(e)
    views = [PeerView("10.0.0.2", candidate=False, scheduler_alive=True)]
    assert e.on_peer_views(views, 1.0) is Decision.STAY_SERVER
    assert e.role is Role.SUSPECTING


@given(st.integers(1, 6), st.lists(st.booleans(), max_size=60))
def test_ping_failures_elect_only_at_threshold_consecutive(
    threshold: int, pings: list[bool]
) -> None:
    e = following("10.0.0.2", "10.0.0.1", threshold)
    run = 0
    for t, ok in enumerate(pings):
        d = e.on_ping_result(ok, float(t))
        run = 0 if ok else run + 1
        assert (d is Decision.ELECT) == (run >= threshold)


@given(
    st.lists(
        st.one_of(
            st.builds(StatusChannel, st.booleans(), st.floats(0, 100)),
            st.builds(PingResult, st.just(True), st.floats(0, 100)),
        ),
        max_size=50,
    )
)
def test_a_broken_status_channel_never_starts_an_election(
    events: list[StatusChannel | PingResult],
) -> None:
    e = following("10.0.0.200", "10.0.0.1", threshold=1)
    for ev in events:
        assert e.handle(ev) is Decision.KEEP
    assert e.role is Role.SERVER


def test_scheduler_ignores_pings_and_its_own_arp() -> None:
    e = Election("10.0.0.3")
    assert e.handle(PeerViews((), 0.0)) is Decision.TAKE_OVER
    assert e.handle(PingResult(False, 1.0)) is Decision.KEEP
    assert e.handle(SchedulerSeen("10.0.0.3", 1.0)) is Decision.KEEP
    assert e.role is Role.SCHEDULER
