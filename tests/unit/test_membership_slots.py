"""Table numbers (slots) kept by name across pushes (scheduler/membership.py): a member leaves
from anywhere in [[nodes]] and drains in its slot, a new one takes the next slot, no slot ever
changes name while it owns a bucket, and the names travel with the sync messages."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from dlba.config import NodeConfig
from scheduler.client_table import ClientTable
from scheduler.failover.sync_messages import parse_sync
from scheduler.failover.table_sync import apply_message, message_for, snapshot_of
from scheduler.membership import next_members, slot_members, tombstones

NODES = {f"n{i}": NodeConfig(f"n{i}", f"10.0.0.{10 + i}", weight=100) for i in range(1, 9)}


def nodes(*names: str) -> list[NodeConfig]:
    return [NODES[n] for n in names]


def names(members: list[NodeConfig]) -> list[str]:
    return [m.name for m in members]


def test_a_middle_member_drains_in_its_slot_then_is_a_tombstone() -> None:
    old = nodes("n1", "n2", "n3", "n4")
    got = next_members(nodes("n1", "n3", "n4"), old, [4, 4, 4, 4])
    assert names(got) == ["n1", "n2", "n3", "n4"] and got[1].weight == 0
    assert tombstones(nodes("n1", "n3", "n4"), got, [4, 4, 4, 4]) == frozenset()
    drained = next_members(nodes("n1", "n3", "n4"), got, [6, 0, 5, 5])
    assert names(drained) == ["n1", "n2", "n3", "n4"]  # n3 and n4 keep their numbers
    assert tombstones(nodes("n1", "n3", "n4"), drained, [6, 0, 5, 5]) == {1}


def test_a_new_member_takes_the_next_slot_wherever_the_config_lists_it() -> None:
    old = nodes("n1", "n2", "n3")
    assert names(next_members(nodes("n5", "n1", "n3"), old, [5, 0, 5])) == [
        "n1", "n2", "n3", "n5"]


def test_a_member_added_back_takes_its_slot_again() -> None:
    got = next_members(nodes("n1", "n2", "n3"), nodes("n1", "n2", "n3"), [5, 0, 5])
    assert got[1].weight == 100 and names(got) == ["n1", "n2", "n3"]


def test_a_synced_tables_slots_as_members() -> None:
    members, unknown = slot_members(["n1", "n2", "n3", "n4"], nodes("n1", "n4"), nodes("n2"))
    assert names(members) == ["n1", "n2", "n3", "n4"] and unknown == {2}
    assert members[2].weight == 0


@given(st.lists(st.sets(st.sampled_from(sorted(NODES)), min_size=1), min_size=1, max_size=8),
       st.data())
def test_slots_never_renumber_a_member_that_owns_buckets(
        configs: list[set[str]], data: st.DataObject) -> None:
    members = nodes(*sorted(configs[0]))
    for config in configs[1:]:
        counts = data.draw(st.lists(st.integers(0, 2), min_size=len(members),
                                    max_size=len(members)))
        cfg = [NODES[n] for n in sorted(config, reverse=True)]  # any order in [[nodes]]
        new = next_members(cfg, members, counts)
        for i, m in enumerate(members):
            if i < len(new):
                assert new[i].name == m.name  # a slot keeps its name
            else:
                assert counts[i] == 0 and m.name not in config  # only drained tombstones go
        assert set(names(new)) >= config and len(set(names(new))) == len(new)
        assert all(m.weight == 0 for m in new if m.name not in config)
        gone = tombstones(cfg, new, counts + [0] * (len(new) - len(counts)))
        assert all(new[i].name not in config for i in gone)
        members = new


def test_slot_names_travel_with_the_sync_messages() -> None:
    leader = ClientTable(32, [100, 0, 100, 100], names=["n1", "n2", "n3", "n5"])
    leader.fill(0.0)
    follower = ClientTable(32, [100, 100, 100], names=["n1", "n2", "n3"])
    for msg in (snapshot_of(leader), message_for(leader, 0)):
        follower = ClientTable(32, [100, 100, 100], names=["n1", "n2", "n3"])
        answer, _ = apply_message(follower, parse_sync(msg.to_json()), term=0, now=0.0)
        assert answer["ok"], answer
        assert follower.names == ["n1", "n2", "n3", "n5"]
        assert follower.assignments() == leader.assignments()


def test_a_name_twice_in_a_stale_copy_is_one_member() -> None:
    members, unknown = slot_members(["n1", "n5", "n5"], nodes("n1", "n5"), [])
    assert names(members) == ["n1", "n5", "slot2"] and unknown == {2}


def test_a_copy_forgets_the_drained_slots_the_scheduler_forgot() -> None:
    leader = ClientTable(16, [100, 100], names=["n1", "n5"])
    leader.fill(0.0)
    follower = ClientTable(16, [100, 100, 0], names=["n1", "n4", "n5"])
    answer, _ = apply_message(follower, snapshot_of(leader), term=0, now=0.0)
    assert answer["ok"] and follower.names == ["n1", "n5"] and follower.node_count == 2


def adopt(table: ClientTable, members: list[NodeConfig], config: set[str], now: float) -> None:
    """What the scheduler role does with the members after a push or a drain (its shell)."""
    while table.node_count < len(members):
        table.add_node(members[table.node_count].weight, members[table.node_count].name)
    while table.node_count > len(members):
        table.drop_last_node()
    table.names[:] = names(members)
    cfg = [NODES[n] for n in config]
    gone = tombstones(cfg, members, table.counts())
    for i, m in enumerate(members):
        table.set_weight(i, m.weight)
        if i in gone and table.is_live(i):
            table.node_failed(i, now)
        elif i not in gone and not table.is_live(i):
            table.node_joined(i, now)  # its first sweep answer


@given(st.lists(st.sets(st.sampled_from(sorted(NODES)), min_size=1), min_size=2, max_size=6),
       st.data())
def test_pushes_and_drains_keep_every_bucket_on_a_member(
        configs: list[set[str]], data: st.DataObject) -> None:
    members = nodes(*sorted(configs[0]))
    table = ClientTable(64, [m.weight for m in members], names=names(members))
    table.fill(0.0)
    now = 0.0
    for config in configs[1:]:
        cfg = [NODES[n] for n in sorted(config, reverse=True)]
        before = table.assignments()
        members = next_members(cfg, members, table.counts())
        adopt(table, members, config, now)
        # a push moves no bucket of a member that stays, nor any busy one
        assert table.assignments() == before
        for _ in range(data.draw(st.integers(0, 3))):
            now += 10.0
            table.rebalance(now, idle_s=data.draw(st.sampled_from([1.0, 100.0])))
            members = next_members(cfg, members, table.counts())
            adopt(table, members, config, now)
        gone = tombstones(cfg, members, table.counts())
        for owner in table.assignments():
            assert owner is not None and owner < len(members) and owner not in gone
        assert table.names == names(members) and len(set(table.names)) == len(members)
