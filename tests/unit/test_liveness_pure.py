"""Pure parts of "liveness is the service": election inputs (own proxy health, a restarted
node joining), the proxy health verdict, the sweep's reading of /status, ARP answering."""

from __future__ import annotations

import ipaddress

from hypothesis import given
from hypothesis import strategies as st

from dlba.proxy.proxy_health import STALE_S, STARTUP_S, WorkerView, listeners_health, workers_health
from scheduler.failover.election import Decision, Election, PeerView, Role
from scheduler.status_sweep import proxy_serves
from scheduler.vip_owner import arp_frame, arp_reply

N1, N2, N3 = "198.18.0.11", "198.18.0.12", "198.18.0.13"


def scheduler_at(address: str) -> Election:
    e = Election(address)
    assert e.on_peer_views([], 0.0) is Decision.TAKE_OVER
    return e


def suspecting(address: str, scheduler: str) -> Election:
    e = Election(address)
    e.on_scheduler_seen(scheduler, 0.0)
    for i in range(e.threshold):
        e.on_ping_result(False, float(i))
    assert e.role is Role.SUSPECTING
    return e


def test_a_scheduler_whose_proxy_stays_down_stands_down_and_is_no_candidate() -> None:
    e = scheduler_at(N3)
    assert e.on_service_health(False, 1.0) is Decision.KEEP  # one bad check is no failure
    assert e.on_service_health(False, 1.1) is Decision.KEEP
    assert e.on_service_health(False, 1.2) is Decision.STAND_DOWN
    assert e.role is Role.STARTING and not e.view().candidate and not e.view().is_scheduler
    # peers elect n2; n3 follows it rather than taking the role back
    n2 = suspecting(N2, N3)
    assert n2.on_peer_views([e.view()], 2.0) is Decision.TAKE_OVER
    assert e.on_peer_views([n2.view()], 2.1) is Decision.STAY_SERVER
    assert (e.role, e.scheduler) == (Role.SERVER, N2)


def test_an_unfit_node_never_takes_over() -> None:
    e = suspecting(N3, N1)
    for i in range(e.threshold):
        e.on_service_health(False, 5.0 + i)
    assert e.on_peer_views([suspecting(N2, N1).view()], 9.0) is Decision.STAY_SERVER
    e.on_service_health(True, 10.0)
    assert e.on_peer_views([], 11.0) is Decision.TAKE_OVER


def test_a_restarted_node_joins_a_running_array_as_a_server() -> None:
    """n3 (highest IP) restarts while n1 and n2 are electing a successor of its old process:
    it is no candidate once it has seen their term, and follows the one they elect."""
    n1, n2 = suspecting(N1, N3), suspecting(N2, N3)
    n1.term = n2.term = 1
    n3 = Election(N3)  # fresh process: term 0
    assert n3.on_peer_views([n1.view(), n2.view()], 0.5) is Decision.STAY_SERVER
    assert not n3.view().candidate
    assert n2.on_peer_views([n1.view(), n3.view()], 0.6) is Decision.TAKE_OVER
    assert n3.on_peer_views([n1.view(), n2.view()], 0.7) is Decision.STAY_SERVER
    assert n3.role is Role.SERVER and n3.scheduler == N2


def test_a_joining_node_alone_may_still_take_the_role() -> None:
    n3 = Election(N3)
    gone = PeerView(N1, candidate=False, scheduler_alive=False, term=4)
    assert n3.on_peer_views([gone], 1.0) is Decision.TAKE_OVER  # nobody else would
    assert n3.term == 5


@given(st.lists(st.tuples(st.booleans(), st.floats(0, 100), st.none() | st.floats(0, 100)),
                max_size=6), st.floats(0, 100))
def test_workers_health_matches_its_rules(raw: list[tuple[bool, float, float | None]],
                                          now: float) -> None:
    workers = [WorkerView(r, s, last) for r, s, last in raw]
    stuck = any(w.running and ((w.last_report is None and now - w.spawned_at > STARTUP_S)
                               or (w.last_report is not None and now - w.last_report > STALE_S))
                for w in workers)
    assert workers_health(workers, now).healthy == (not stuck and any(w.running for w in workers))


def test_workers_health_examples() -> None:
    assert workers_health([WorkerView(True, 0.0, 9.9)], 10.0).healthy
    assert not workers_health([WorkerView(True, 0.0, 5.0)], 10.0).healthy  # stopped
    assert workers_health([WorkerView(False, 0.0, 5.0), WorkerView(True, 0, 9.9)], 10.0).healthy
    assert not workers_health([WorkerView(False, 0.0, 9.0)], 10.0).healthy  # none runs
    assert workers_health([WorkerView(True, 9.0, None)], 10.0).healthy  # still starting
    assert listeners_health([True, True]).healthy
    assert not listeners_health([True, False]).healthy and not listeners_health([]).healthy


def test_the_sweep_fails_a_node_whose_proxy_does_not_serve() -> None:
    assert proxy_serves({"node": "n1"})  # an older node says nothing
    assert proxy_serves({"proxy": {"healthy": True}})
    assert not proxy_serves({"proxy": {"healthy": False, "reason": "worker 0 silent"}})


VIP = "198.18.0.100"
OURS = bytes.fromhex("020000000003")
CLIENT = bytes.fromhex("020000000002")
VIPS = frozenset({ipaddress.IPv4Address(VIP).packed})


def test_arp_requests_for_the_vip_get_our_answer() -> None:
    req = arp_frame(1, CLIENT, "198.18.0.2", b"\0" * 6, VIP)
    reply = arp_reply(req, VIPS, OURS)
    assert reply == arp_frame(2, OURS, VIP, CLIENT, "198.18.0.2", dst=CLIENT)


def test_other_arp_frames_get_no_answer() -> None:
    assert arp_reply(arp_frame(1, CLIENT, "198.18.0.2", b"\0" * 6, "198.18.0.11"), VIPS,
                     OURS) is None  # another address
    assert arp_reply(arp_frame(1, CLIENT, VIP, b"\0" * 6, VIP), VIPS, OURS) is None  # gratuitous
    assert arp_reply(arp_frame(2, CLIENT, "198.18.0.2", OURS, VIP), VIPS, OURS) is None  # reply
    assert arp_reply(arp_frame(1, OURS, "198.18.0.13", b"\0" * 6, VIP), VIPS, OURS) is None
    assert arp_reply(b"\0" * 20, VIPS, OURS) is None


def test_link_running_reads_the_interface_flags() -> None:
    from scheduler.vip_owner import link_running

    assert link_running("lo") is True  # up and running in every namespace
    assert link_running("nosuchif0") is False
