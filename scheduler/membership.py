"""Live membership (seed 002 point 5): which nodes the scheduler's tables hold after a push.

Node numbers index the client table, the data plane's maps and every synced copy, so members
join at the end of [[nodes]] and leave from its end (the config stage refuses anything else).
A new member enters not live, with its weight: the sweep and the heartbeats bring it in, then
it takes ownerless buckets and, as they fall idle, its share of the others' (the table's
rebalance). A removed member stays in the scheduler's tables with weight 0 while it still owns
buckets: they leave it only as they fall idle, so no connection on it is cut (it drains); the
last one that owns none is forgotten. Pure: no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from dlba.config import Config, HostPort, NodeConfig, parse_host_port


def next_members(config_nodes: Sequence[NodeConfig], members: Sequence[NodeConfig],
                 counts: Sequence[int]) -> list[NodeConfig]:
    """The config's nodes, then the removed members that still own buckets (weight 0), each
    at its old number: a removed member that owns none goes once no later one holds on."""
    leaving = [replace(m, weight=0) for m in members[len(config_nodes):]]
    base = len(config_nodes)
    while leaving and (base + len(leaving) - 1 >= len(counts)
                       or counts[base + len(leaving) - 1] == 0):
        leaving.pop()
    return [*config_nodes, *leaving]


def endpoint(config: Config, node: NodeConfig) -> HostPort:
    """Where a member's admin API (and heartbeat) is, for members the config no longer names:
    the same rule as Config.admin_endpoint."""
    port = (node.admin or parse_host_port(config.admin.listen, default_host=node.address)).port
    return HostPort(node.address, port)
