"""Live membership (seed 002 point 5): which nodes the scheduler's tables hold after a push.

Every member has a table number ("slot") for the life of the array: the client table, the data
plane's maps and every synced copy are indexed by it, and the sync messages carry the slots'
names, so every copy agrees on them whatever order [[nodes]] lists the members in. A node the
config adds gets the next slot at the end. A node it removes (any of them) keeps its slot with
weight 0 while it still owns buckets: they leave it only as they fall idle, so no connection on
it is cut (it drains); then its slot is a tombstone: owns nothing, watched by no one, shown
nowhere, never given to another node (the same name added back takes it again). Tombstones at
the end of the slots are forgotten, since no number moves when they go. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import replace

from dlba.config import Config, HostPort, NodeConfig, parse_host_port


def next_members(config_nodes: Sequence[NodeConfig], members: Sequence[NodeConfig],
                 counts: Sequence[int]) -> list[NodeConfig]:
    """The members in slot order after a push (or a drain): each keeps its slot, with the
    config's entry when it names it, else weight 0; the config's new nodes are appended; a
    trailing removed member that owns no bucket goes (`counts`: buckets owned per slot)."""
    by_name = {n.name: n for n in config_nodes}
    out = [by_name.get(m.name, replace(m, weight=0)) for m in members]
    held = {m.name for m in members}
    out += [n for n in config_nodes if n.name not in held]
    while out and out[-1].name not in by_name and _owns_none(counts, len(out) - 1):
        out.pop()
    return out


def tombstones(config_nodes: Sequence[NodeConfig], members: Sequence[NodeConfig],
               counts: Sequence[int]) -> frozenset[int]:
    """Slots of removed members that own no bucket: never watched, shown or given buckets."""
    names = {n.name for n in config_nodes}
    return frozenset(i for i, m in enumerate(members)
                     if m.name not in names and _owns_none(counts, i))


def slot_members(slot_names: Sequence[str], config_nodes: Sequence[NodeConfig],
                 departed: Sequence[NodeConfig]) -> tuple[list[NodeConfig], frozenset[int]]:
    """A synced table's slots as members (a takeover): the config's entry, else the removed
    member this node remembers (weight 0), else a stand-in nobody can reach, returned apart
    (the new scheduler cannot watch it: its buckets move at once). A copy an older scheduler
    synced has no names: its slots are the config's order, then the members removed from its
    end (the only changes such a scheduler took live)."""
    by_name = {n.name: n for n in [*departed, *config_nodes]}
    if "" in slot_names:
        slot_names = [n.name for n in [*config_nodes, *departed]][:len(slot_names)]
    members: list[NodeConfig] = []
    unknown: set[int] = set()
    seen: set[str] = set()
    for i, name in enumerate(slot_names):
        node = by_name.get(name) if name not in seen else None  # twice: the first holds
        if node is None:
            unknown.add(i)
            node = NodeConfig(name if name and name not in seen else f"slot{i}", "0.0.0.0",
                              weight=0)
        seen.add(node.name)
        members.append(node)
    return members, frozenset(unknown)


def drained(config_nodes: Sequence[NodeConfig], members: Sequence[NodeConfig],
            gone: frozenset[int], counts: Sequence[int], in_kernel: Collection[int | None],
            ) -> tuple[list[NodeConfig], frozenset[int], list[int]] | None:
    """The members and tombstones after removed members drained, and the slots that left;
    None while nothing drained, or while the kernel's map (`in_kernel`: its owners) still
    names a leaving slot: a number must outlive every bucket the kernel gives it."""
    after = next_members(config_nodes, members, counts)
    after_gone = tombstones(config_nodes, after, counts)
    leaving = [i for i in range(len(members))
               if i >= len(after) or (i in after_gone and i not in gone)]
    if len(after) == len(members) and after_gone == gone:
        return None
    if any(i in in_kernel for i in leaving):
        return None
    return after, after_gone, leaving


def _owns_none(counts: Sequence[int], slot: int) -> bool:
    return slot >= len(counts) or counts[slot] == 0


def endpoint(config: Config, node: NodeConfig) -> HostPort:
    """Where a member's admin API (and heartbeat) is, for members the config no longer names:
    the same rule as Config.admin_endpoint."""
    port = (node.admin or parse_host_port(config.admin.listen, default_host=node.address)).port
    return HostPort(node.address, port)
