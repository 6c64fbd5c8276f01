"""The follower's sync rule and the scheduler's messages, without sockets: whatever the leader
does to its table, a follower that applies every message (through JSON) holds the same table."""

from __future__ import annotations

import json

from hypothesis import given
from hypothesis import strategies as st

from scheduler.client_table import ClientTable
from scheduler.failover.election import PeerView
from scheduler.failover.peers import parse_peer, peer_json, summarize
from scheduler.failover.sync_messages import SyncDelta, SyncSnapshot, parse_sync
from scheduler.failover.table_sync import apply_message, message_for, snapshot_of

NODES = 4
ops = st.lists(st.tuples(st.sampled_from(["fail", "join", "rebalance", "panic", "clear"]),
                         st.integers(0, NODES - 1)), max_size=12)


def over_the_wire(msg: SyncDelta | SyncSnapshot) -> SyncDelta | SyncSnapshot:
    return parse_sync(json.loads(json.dumps(msg.to_json())))


def leader() -> ClientTable:
    t = ClientTable(32, [1] * NODES)
    t.begin_term(1, 0.0, takeover=False)
    return t


def same(a: ClientTable, b: ClientTable) -> bool:
    return (a.assignments(), a.version, a.epoch, a.panic_scheduler) == (
        b.assignments(), b.version, b.epoch, b.panic_scheduler) and all(
        a.is_live(i) == b.is_live(i) for i in range(NODES))


def step(t: ClientTable, op: str, node: int, now: float) -> None:
    if op == "fail" and t.is_live(node):
        t.node_failed(node, now)
    elif op == "join" and not t.is_live(node):
        t.node_joined(node, now)
    elif op == "rebalance":
        t.rebalance(now, 0.0)
    elif op == "panic":
        t.panic(now, node)
    elif op == "clear":
        t.clear_panic()


@given(ops)
def test_a_follower_that_applies_every_message_holds_the_leaders_table(
        script: list[tuple[str, int]]) -> None:
    lead, follower, pushed = leader(), ClientTable(32, [1] * NODES), -1
    for k, (op, node) in enumerate(script, start=1):
        step(lead, op, node, float(k))
        msg = over_the_wire(message_for(lead, pushed))
        answer, missed = apply_message(follower, msg, term=1, now=float(k))
        assert answer["ok"] and not missed
        pushed = lead.version
        assert same(lead, follower)


def test_a_gap_asks_for_the_whole_table_and_the_snapshot_closes_it() -> None:
    lead, follower = leader(), ClientTable(32, [1] * NODES)
    apply_message(follower, snapshot_of(lead), term=1, now=0.0)
    v = lead.version
    lead.node_failed(1, 1.0)
    lead.node_failed(2, 2.0)
    late = message_for(lead, lead.version - 1)  # the first change never arrived
    assert isinstance(late, SyncDelta) and late.from_version > v
    answer, missed = apply_message(follower, late, term=1, now=2.0)
    assert missed and not answer["ok"] and answer["version"] == v
    assert apply_message(follower, snapshot_of(lead), term=1, now=2.0) == (
        {"ok": True, "version": lead.version}, False)
    assert same(lead, follower)


def test_an_older_term_is_refused_and_changes_nothing() -> None:
    lead, follower = leader(), ClientTable(32, [1] * NODES)
    before = follower.assignments()
    answer, missed = apply_message(follower, snapshot_of(lead), term=2, now=0.0)
    assert answer == {"ok": False, "reason": "term 1 is older than 2"} and not missed
    assert follower.assignments() == before


def test_a_panic_pin_outside_the_array_is_no_pin() -> None:
    lead, follower = leader(), ClientTable(32, [1] * NODES)
    snap = snapshot_of(lead)
    pinned = SyncSnapshot(snap.epoch, snap.version, snap.assignments, snap.live, NODES)
    apply_message(follower, pinned, term=1, now=0.0)
    assert follower.panic_scheduler is None


def test_peer_answer_round_trips_and_the_round_agrees_on_one_scheduler() -> None:
    view = PeerView("198.18.0.12", candidate=False, scheduler_alive=True, term=3)
    doc = json.loads(json.dumps(peer_json("n2", view, "n1", "02:00:00:00:00:02", 7, 3)))
    answer = parse_peer(doc)
    assert (answer.view, answer.mac, answer.follows) == (view, "02:00:00:00:00:02", "n1")
    addresses = {"n1": "198.18.0.11", "n2": "198.18.0.12", "n3": "198.18.0.13"}
    other = parse_peer({**doc, "address": "198.18.0.13", "mac": ""})
    r = summarize([answer, None, other], addresses)
    assert r.views == [answer.view, other.view] and r.follows == "198.18.0.11"
    assert r.macs == {"02:00:00:00:00:02": "198.18.0.12"}
    split = parse_peer({**doc, "scheduler": "n3"})
    assert summarize([answer, split], addresses).follows is None
    lost = parse_peer({**doc, "scheduler_alive": False})
    assert lost.follows is None
