"""scheduler/membership.py and the config stage's rule: any member joins or leaves live, each
keeps its table number (slot) by name; a removed member stays (weight 0) while it owns buckets,
then its slot is a tombstone (forgotten when nothing follows it)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dlba.config import NodeConfig
from scheduler.client_table import ClientTable
from scheduler.membership import next_members

NODES = [NodeConfig(f"n{i}", f"10.0.0.{10 + i}", weight=100) for i in range(1, 6)]


def names(members: list[NodeConfig]) -> list[str]:
    return [m.name for m in members]


def test_a_new_member_is_appended() -> None:
    assert names(next_members(NODES[:4], NODES[:3], [5, 5, 5])) == ["n1", "n2", "n3", "n4"]


def test_a_removed_member_stays_with_weight_zero_while_it_owns_buckets() -> None:
    got = next_members(NODES[:3], NODES[:4], [5, 5, 5, 2])
    assert names(got) == ["n1", "n2", "n3", "n4"] and got[3].weight == 0
    assert names(next_members(NODES[:3], got, [6, 6, 7, 0])) == ["n1", "n2", "n3"]


def test_a_drained_member_waits_for_a_later_one_holding_on() -> None:
    got = next_members(NODES[:2], NODES[:4], [5, 5, 0, 3])
    assert names(got) == ["n1", "n2", "n3", "n4"]
    assert names(next_members(NODES[:2], got, [8, 8, 0, 0])) == ["n1", "n2"]


@given(st.integers(1, 5), st.integers(1, 5), st.lists(st.integers(0, 3), min_size=5,
                                                       max_size=5))
def test_members_never_renumber_and_buckets_always_have_a_member(
        old: int, new: int, counts: list[int]) -> None:
    members = next_members(NODES[:new], NODES[:old], counts[:old])
    assert names(members)[:new] == names(NODES[:new])  # the config's nodes keep their numbers
    assert all(m.weight == 0 for m in members[new:])
    for i in range(len(members), old):  # a member forgotten owned nothing
        assert counts[i] == 0


def test_drained_member_leaves_the_client_table() -> None:
    table = ClientTable(16, [100, 100, 100])
    table.fill(0.0)
    table.set_weight(2, 0)
    assert table.rebalance(100.0, idle_s=1.0) > 0  # every bucket idle: they leave n3
    assert table.counts()[2] == 0
    table.drop_last_node()
    assert table.node_count == 2 and all(o in (0, 1) for o in table.assignments())


def test_stage_accepts_any_member_joining_or_leaving(tmp_path: object) -> None:
    from pathlib import Path

    from dlba.config import parse_config
    from dlba.config.reload import _live_change_problems
    from tests.unit.test_config import FILES, config_text

    folder = Path(str(tmp_path))
    (folder / "certs").mkdir()
    for name in FILES:
        (folder / "certs" / name).write_text("00ff\n")

    def cfg(*order: int, moved: int = 0):  # type: ignore[no-untyped-def]
        nodes = "".join(f'[[nodes]]\nname = "n{i}"\n'
                        f'address = "10.0.0.{10 + i + 50 * (i == moved)}"\n'
                        for i in order)
        return parse_config(config_text(nodes=nodes), folder / "dlba.toml")

    base = cfg(1, 2, 3)
    for good in (cfg(1, 2, 3, 4), cfg(1, 2), cfg(1, 3), cfg(2, 1, 3), cfg(1, 2, 4),
                 cfg(4, 1, 3)):
        assert _live_change_problems(good, base, []) == []
    (problem,) = _live_change_problems(cfg(1, 2, 3, moved=2), base, [])
    assert problem.key == "nodes" and "address of n2" in problem.reason


def test_a_node_some_peer_leaves_out_is_an_outsider() -> None:
    import json

    from scheduler.failover.election import PeerView
    from scheduler.failover.peers import PeerAnswer, parse_peer, peer_json, summarize

    def answer(name: str, members: list[str]) -> PeerAnswer:
        view = PeerView(f"10.0.0.{name[1:]}", False, True, False, 1)
        return parse_peer(json.loads(json.dumps(
            peer_json(name, view, "n3", "", 1, 1, members))))

    three, four = ["n1", "n2", "n3"], ["n1", "n2", "n3", "n4"]
    addresses = {n: f"10.0.0.{n[1:]}" for n in four}
    assert summarize([answer("n1", three), answer("n2", three)], addresses, "n4").outsider
    assert not summarize([answer("n1", four), answer("n2", four)], addresses, "n4").outsider
    old = {"address": "10.0.0.1", "candidate": False, "scheduler_alive": True,
           "is_scheduler": False, "term": 1}  # an older node says nothing of its members
    assert not summarize([parse_peer(old)], addresses, "n4").outsider


def test_a_drained_member_leaves_only_once_the_kernel_names_it_nowhere() -> None:
    from scheduler.membership import drained

    members = [*NODES[:3], NODES[3]]  # n4 removed by the config, still a member
    assert drained(NODES[:3], members, frozenset(), [5, 5, 5, 1], {0, 1, 2, 3}) is None
    assert drained(NODES[:3], members, frozenset(), [6, 5, 5, 0], {0, 1, 2, 3}) is None
    got = drained(NODES[:3], members, frozenset(), [6, 5, 5, 0], {0, 1, 2, None})
    assert got is not None and names(got[0]) == ["n1", "n2", "n3"] and got[2] == [3]
    # a middle member: a tombstone, once the kernel gives it nothing
    middle = [NODES[0], replace_weight(NODES[1]), NODES[2]]
    cfg = [NODES[0], NODES[2]]
    assert drained(cfg, middle, frozenset(), [8, 0, 8], {0, 1, 2}) is None
    got = drained(cfg, middle, frozenset(), [8, 0, 8], {0, 2})
    assert got is not None and got[1] == {1} and got[2] == [1]
    assert drained(cfg, got[0], got[1], [8, 0, 8], {0, 2}) is None  # nothing more to do


def replace_weight(node: NodeConfig) -> NodeConfig:
    from dataclasses import replace

    return replace(node, weight=0)
