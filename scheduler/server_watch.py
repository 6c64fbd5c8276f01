"""How the scheduler watches its servers: the status sweep's and the heartbeat's shells.

Two sources judge a server (server_heartbeats.py keeps them apart): the status sweep (HTTP
`GET /status`, one node at a time) and the failover heartbeat to every server each ping
interval. This module holds what the scheduler role runs for them: their fresh state over a
set of members, the one visit to every node before the first fill, and the heartbeat rounds.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Mapping, Sequence

from dlba.config import ClusterConfig, HostPort
from scheduler.client_table import ClientTable
from scheduler.failover.election import PeerView
from scheduler.failover.heartbeat_udp import Pinger
from scheduler.failover.server_heartbeats import NodeLiveness, ServerHeartbeats
from scheduler.server_status_table import ServerStatusTable
from scheduler.status_sweep import NodeFailed, NodeRecovered, StatusSweep, proxy_serves
from scheduler.status_sweep_http import StatusFetcher

OnHeartbeats = Callable[[list[PeerView]], None]
OnLiveness = Callable[[NodeFailed | NodeRecovered], None]


def watch_state(cluster: ClusterConfig, count: int, index: int, down: Sequence[int],
                ) -> tuple[StatusSweep, NodeLiveness, ServerHeartbeats]:
    """The sweep, the liveness and the heartbeats over `count` members, `down` failed at
    start (only their next sweep and heartbeat answers bring them in)."""
    sweep = StatusSweep(
        count, retries=cluster.sweep_retries, retry_delay_s=0.1,
        sweep_delay_s=cluster.sweep_interval_s, now=time.monotonic(),
        initially_failed=frozenset(down))
    heartbeats = ServerHeartbeats(count, index, threshold=cluster.ping_failures,
                                  initially_failed=down)
    return sweep, NodeLiveness(count, down), heartbeats


async def first_visit(fetch: StatusFetcher, status: ServerStatusTable, table: ClientTable,
                      index: int, now: float) -> None:
    """One visit to every node before the first fill, so buckets go to live nodes only."""
    answers = await asyncio.gather(*(fetch(i) for i in range(len(status.rows))))
    for i, doc in enumerate(answers):
        ok = False
        if doc is not None:
            with contextlib.suppress(ValueError):
                status.apply_status(i, doc, time.time())
                ok = proxy_serves(doc)
        live = ok or i == index
        if live and not table.is_live(i):
            table.node_joined(i, now)
        elif not live:
            status.mark_failed(i)
            if table.is_live(i):
                table.node_failed(i, now)


async def heartbeat_servers(
    key: bytes, heartbeats: ServerHeartbeats, targets: Mapping[int, HostPort],
    names: Sequence[str], interval_s: Callable[[], float], on_liveness: OnLiveness,
    on_heartbeats: OnHeartbeats | None,
) -> None:
    """Every ping interval, the heartbeat to every peer at once: a node whose processes
    died loses its buckets after `ping_failures` missed answers, not at the next sweep."""
    pinger = Pinger(key)
    peers = [i for i in heartbeats.peers() if i in targets]  # not a drained member's slot
    try:
        while True:
            interval = interval_s()  # a push may change it
            t0 = time.monotonic()
            answers = await asyncio.gather(*(
                pinger.ping(targets[i].host, targets[i].port, interval) for i in peers))
            mine = {i: a for i, a in zip(peers, answers, strict=True)
                    if a is not None and a.name == names[i]}
            for event in heartbeats.on_round(
                    {i: i in mine and mine[i].proxy_ok for i in peers}):
                on_liveness(event)
            if on_heartbeats is not None:
                on_heartbeats([
                    PeerView(targets[i].host, candidate=False, scheduler_alive=False,
                             is_scheduler=a.scheduler, term=a.term)
                    for i, a in mine.items()])
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))
    finally:
        pinger.close()
