"""The node agent's part of the admin API and of /metrics.

Every node answers `/peer` and `/sync`; the scheduler also answers `/table`, `/summary`,
`/panic` and `/nodes/{name}/{action}` (the others answer 409 naming the scheduler).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, Protocol

from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from scheduler.failover.sync_messages import SyncMessage, SyncMessageError, parse_sync
from scheduler.failover.table_sync import snapshot_of
from scheduler.scheduler_role import SchedulerRole

events = logging.getLogger("dlba.event")


class Agent(Protocol):
    """What the routes read of the node agent."""

    @property
    def name(self) -> str: ...
    @property
    def names(self) -> list[str]: ...
    @property
    def role(self) -> SchedulerRole | None: ...
    @property
    def failovers(self) -> int: ...
    def peer_view(self) -> dict[str, Any]: ...
    def scheduler_name(self) -> str | None: ...
    def table_version(self) -> int: ...
    def apply_sync(self, msg: SyncMessage) -> dict[str, Any]: ...


def add_routes(agent: Agent, app: web.Application) -> None:
    async def peer(_: web.Request) -> web.Response:
        return web.json_response(agent.peer_view())

    async def sync(request: web.Request) -> web.Response:
        try:
            msg = parse_sync(await request.json())
        except (ValueError, SyncMessageError) as e:
            return web.json_response({"ok": False, "reason": str(e)}, status=400)
        return web.json_response(agent.apply_sync(msg))

    app.router.add_get("/peer", peer)
    app.router.add_post("/sync", sync)
    _scheduler_routes(agent, app)


def _scheduler_routes(agent: Agent, app: web.Application) -> None:
    def not_scheduler() -> web.Response:
        return web.json_response(
            {"error": "not the scheduler", "scheduler": agent.scheduler_name()}, status=409
        )

    async def table(request: web.Request) -> web.Response:
        if (role := agent.role) is None:
            return not_scheduler()
        d = role.table_json()
        if request.query.get("indexes"):
            d.update(snapshot_of(role.table).to_table_json())
        return web.json_response(d)

    async def summary(_: web.Request) -> web.Response:
        if (role := agent.role) is None:
            return not_scheduler()
        return web.json_response(role.summary_json())

    async def panic(request: web.Request) -> web.Response:
        if (role := agent.role) is None:
            return not_scheduler()
        on = request.method == "POST"
        role.panic(on)
        events.info("event=admin_action node=%s action=panic_%s peer=%s", agent.name,
                       "on" if on else "off", request.remote)
        await role.push_now()
        return web.json_response({"panic": on, "table_version": role.table.version})

    async def node_action(request: web.Request) -> web.Response:
        if (role := agent.role) is None:
            return not_scheduler()
        name, action = request.match_info["name"], request.match_info["action"]
        if name not in agent.names or action not in ("enable", "disable"):
            return web.json_response({"error": "unknown node or action"}, status=404)
        role.set_node_enabled(name, action == "enable")
        events.info("event=admin_action node=%s action=node_%s target=%s peer=%s",
                       agent.name, action, name, request.remote)
        return web.json_response(role.status.rows[role.names.index(name)].to_json())

    app.router.add_post("/nodes/{name}/{action}", node_action)
    app.router.add_get("/table", table)
    app.router.add_get("/summary", summary)
    app.router.add_post("/panic", panic)
    app.router.add_delete("/panic", panic)


def agent_metrics(agent: Agent) -> Iterator[Metric]:
    """The array's own families for /metrics: failovers, role, client table, data plane."""
    node = agent.name
    c = CounterMetricFamily("dlba_failovers", "Takeovers of the scheduler role by this node",
                            labels=["node"])
    c.add_metric([node], agent.failovers)
    yield c
    g = GaugeMetricFamily("dlba_scheduler", "1 while this node is the scheduler", labels=["node"])
    g.add_metric([node], 1 if agent.role is not None else 0)
    yield g
    g = GaugeMetricFamily("dlba_client_table_version", "Client table version seen here",
                          labels=["node"])
    g.add_metric([node], agent.table_version())
    yield g
    role = agent.role
    if role is None:
        return
    c = CounterMetricFamily("dlba_client_table_moves", "Buckets that changed owner",
                            labels=["node"])
    c.add_metric([node], role.moves_total)
    yield c
    dp = role.dataplane
    if dp is None:
        return
    counters = dp.counters()
    c = CounterMetricFamily("dlba_dataplane_packets", "Packets forwarded per owner node",
                            labels=["scheduler", "node"])
    for i, n in sorted(counters.packets.items()):
        if i < len(role.names):
            c.add_metric([node, role.names[i]], n)
    yield c
    c = CounterMetricFamily("dlba_dataplane_drops", "Packets dropped by the data plane",
                            labels=["scheduler", "reason"])
    for reason, n in sorted(counters.drops.items()):
        c.add_metric([node, reason], n)
    yield c
