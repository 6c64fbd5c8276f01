"""Properties of the Elect Scheduler state machine (patent 003, "Scheduler Failover")."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from scheduler.failover.election import (
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


# --- fencing: never two ARP answerers when a cut-off scheduler comes back -------------------
def scheduler(address: str, term_views: list[PeerView] | None = None) -> Election:
    e = Election(address)
    assert e.on_peer_views(term_views or [], 0.0) is Decision.TAKE_OVER
    return e


def test_a_scheduler_whose_link_goes_down_stands_down_at_once() -> None:
    e = scheduler("10.0.0.20")
    assert e.on_link_state(True, 1.0) is Decision.KEEP
    assert e.on_link_state(False, 1.1) is Decision.STAND_DOWN
    assert e.role is Role.STARTING and e.scheduler is None
    assert not e.view().is_scheduler and not e.view().candidate
    # Cut off, nobody answers: it must not take the role back while its link is down.
    assert e.on_peer_views([], 1.5) is Decision.STAY_SERVER
    assert e.on_link_state(False, 1.6) is Decision.KEEP


def test_a_returning_scheduler_follows_the_one_elected_while_its_link_was_down() -> None:
    old = scheduler("10.0.0.20")
    old.on_link_state(False, 1.0)
    new = following("10.0.0.11", old.address)
    lose_scheduler(new)
    assert new.on_peer_views([], 2.0) is Decision.TAKE_OVER  # old is no candidate: not asked
    old.on_link_state(True, 3.0)
    # Back up, it asks before anything else and follows; it never answered ARP meanwhile.
    assert old.on_peer_views([new.view()], 3.1) is Decision.STAY_SERVER
    assert old.role is Role.SERVER and old.scheduler == new.address


def test_a_lone_node_whose_link_returns_takes_the_role_again() -> None:
    e = scheduler("10.0.0.20")
    e.on_link_state(False, 1.0)
    e.on_link_state(True, 2.0)
    assert e.on_peer_views([], 2.1) is Decision.TAKE_OVER  # nobody else: it is the array


def peer(address: str, term: int = 0, is_scheduler: bool = False) -> PeerView:
    return PeerView(address, candidate=False, scheduler_alive=False, is_scheduler=is_scheduler,
                    term=term)


def test_silent_peers_hold_arp_after_threshold_rounds_and_a_newer_scheduler_wins() -> None:
    e = scheduler("10.0.0.20")
    assert e.on_peer_heartbeats([peer("10.0.0.11", 1)], 1.0) is Decision.KEEP
    decisions = [e.on_peer_heartbeats([], 1.0 + i / 10) for i in range(1, 6)]
    assert decisions == [Decision.KEEP] * (e.threshold - 1) + [Decision.HOLD_ARP] + [
        Decision.KEEP] * (5 - e.threshold)
    assert e.arp_held and e.view().is_scheduler
    # The periodic ask finds nobody and nobody asked for the VIP: still held (cut off).
    assert e.on_peer_views([], 2.0) is Decision.KEEP and e.arp_held
    # Healed: a peer elected while we were away answers our heartbeat with a newer term.
    assert e.on_peer_heartbeats([peer("10.0.0.11", 2, is_scheduler=True)], 3.0) \
        is Decision.STAND_DOWN
    assert e.role is Role.SERVER and e.scheduler == "10.0.0.11" and not e.arp_held


def test_held_scheduler_resumes_when_peers_answer_without_a_newer_scheduler() -> None:
    e = scheduler("10.0.0.20")
    e.on_peer_heartbeats([peer("10.0.0.11")], 1.0)
    for i in range(e.threshold):
        e.on_peer_heartbeats([], 2.0 + i)
    assert e.arp_held
    assert e.on_peer_heartbeats([peer("10.0.0.11", 1)], 9.0) is Decision.RESUME_ARP
    assert not e.arp_held and e.view().is_scheduler


def test_a_lone_survivor_answers_again_when_the_network_asks_for_the_vip() -> None:
    e = scheduler("10.0.0.20")
    e.on_peer_heartbeats([peer("10.0.0.11"), peer("10.0.0.12")], 1.0)
    for i in range(e.threshold):
        e.on_peer_heartbeats([], 2.0 + i)  # every peer's process died at once
    assert e.arp_held and not e.confirm_wanted
    assert e.on_arp_request_held(6.0) is Decision.ELECT  # a client asked: not cut off
    assert e.confirm_wanted
    assert e.on_peer_views([], 6.1) is Decision.RESUME_ARP  # and no peer is newer
    assert not e.arp_held
    # Peers stay dead: no second hold, since none was heard since.
    assert all(e.on_peer_heartbeats([], 7.0 + i) is Decision.KEEP for i in range(10))


def test_a_scheduler_that_never_heard_a_peer_is_never_held() -> None:
    e = scheduler("10.0.0.20")
    assert all(e.on_peer_heartbeats([], float(i)) is Decision.KEEP for i in range(20))
    assert not e.arp_held
    assert e.on_arp_request_held(30.0) is Decision.KEEP


@given(st.lists(st.booleans(), max_size=60), st.integers(1, 5))
def test_hold_exactly_after_threshold_silent_rounds_following_an_answer(
    rounds: list[bool], threshold: int
) -> None:
    e = Election("10.0.0.20", ping_failures=threshold)
    e.on_peer_views([], 0.0)
    heard, silent, held = False, 0, False
    for t, answered in enumerate(rounds):
        d = e.on_peer_heartbeats([peer("10.0.0.11")] if answered else [], float(t))
        if answered:
            expected = Decision.RESUME_ARP if held else Decision.KEEP
            heard, silent, held = True, 0, False
        elif heard and not held:
            silent += 1
            held = silent >= threshold
            expected = Decision.HOLD_ARP if held else Decision.KEEP
            heard = not held
        else:
            expected = Decision.KEEP
        assert d is expected
        assert e.arp_held is held and e.role is Role.SCHEDULER


def test_a_node_whose_link_is_down_is_never_elected() -> None:
    e = following("10.0.0.99", "10.0.0.1")
    e.on_link_state(False, 0.5)
    lose_scheduler(e)
    assert not e.view().candidate
    assert e.on_peer_views([PeerView("10.0.0.2", True, False)], 1.0) is Decision.STAY_SERVER
