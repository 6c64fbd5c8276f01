"""The node's admin HTTP API (contract in DESIGN.md): status, metrics, back-end actions.

Every route but /healthz needs the admin token as a bearer header. The scheduler role adds its
own routes (/table, /summary, /panic) through `extra_routes`, so this module knows nothing of it.
"""

from __future__ import annotations

import hmac
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from aiohttp import web

from dlba.admin.metrics import NodeCollector, ServiceCollector, render
from dlba.proxy.proxy_context import ProxyContext
from dlba.proxy.worker_pool import WorkerPool
from dlba.services.runtime import merge_json

events = logging.getLogger("dlba.event")
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
ACTIONS = ("enable", "disable", "drain")


class NodeView(Protocol):
    """What the admin API reads from the running node."""

    name: str
    address: str
    ctx: ProxyContext
    collector: NodeCollector
    config_version: int
    workers: WorkerPool | None

    def role(self) -> str: ...
    def scheduler_name(self) -> str | None: ...
    def table_version(self) -> int: ...
    def node_rows(self) -> list[dict[str, Any]]: ...


def own_node_row(view: NodeView) -> dict[str, Any]:
    """This node's row of the DLBA server status table (Fig. 5), from its own counters."""
    ctx = view.ctx
    s = ctx.stats
    cfg = ctx.config.node(view.name)
    avg = (s.latency.total / s.latency.count * 1000) if s.latency.count else 0.0
    return {
        "name": view.name, "address": view.address, "mac": "", "ip_groups": 0,
        "avg_response_ms": round(avg, 3), "hits": s.requests,
        "open_connections": s.connections_open, "failed": False, "enabled": True,
        "weight": cfg.weight,
    }


def status_json(view: NodeView) -> dict[str, Any]:
    workers = getattr(view, "workers", None)  # test doubles of a view may have none
    return {
        "node": view.name,
        "role": view.role(),
        "scheduler": view.scheduler_name(),
        "config_version": view.config_version,
        "table_version": view.table_version(),
        "time": time.time(),
        "nodes": view.node_rows(),
        "backends": view.ctx.table.to_json(),
        "workers": workers.workers_json() if workers is not None else [],
        "proxy": _proxy_json(view),
        "learned_sessions": _learned_sessions(view),
        "services": _services_json(view),
    }


def _services_json(view: NodeView) -> dict[str, Any]:
    """Services, pools (queue depth, shed count, per-class requests) and classes."""
    services = getattr(view.ctx, "services", None)  # test doubles of a view may have none
    if services is None:
        return {"services": [], "pools": {}, "classes": []}
    workers = getattr(view, "workers", None)
    reports = getattr(workers, "reports", None) or {}
    parts = [r["services"] for r in reports.values() if isinstance(r, dict) and "services" in r]
    # Worker processes serve and count: their reports, summed; else this process's own.
    return merge_json(parts) if parts else services.to_json()


def _learned_sessions(view: NodeView) -> int:
    """Session ids whose issuing back end this node knows (dlba/scheduling/learned_sessions.py)."""
    selector = getattr(view.ctx, "selector", None)  # test doubles of a view may have none
    return len(selector.learned) if selector is not None else 0


def _proxy_json(view: NodeView) -> dict[str, Any]:
    """The scheduler's sweep fails a node whose proxy does not serve, even if this answers."""
    health = getattr(view, "proxy_health", None)  # test doubles of a view may have none
    if health is None:
        return {"healthy": True, "reason": ""}
    h = health()
    return {"healthy": h.healthy, "reason": h.reason}


def bearer_ok(request: web.Request, token: str) -> bool:
    given = request.headers.get("Authorization", "")
    if given.startswith("Bearer "):
        return hmac.compare_digest(given[7:].strip().encode(), token.encode())
    cookie = request.cookies.get("dlba_admin", "")
    return bool(cookie) and hmac.compare_digest(cookie.encode(), token.encode())


def make_admin_app(
    view: NodeView, token: str,
    extra_routes: Callable[[web.Application], None] | None = None,
) -> web.Application:
    @web.middleware
    async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path == "/healthz" or bearer_ok(request, token):
            return await handler(request)
        return web.json_response(
            {"error": "admin token required (Authorization: Bearer ...)"}, status=401,
            headers={"WWW-Authenticate": 'Bearer realm="dlba"'},
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True, "node": view.name, "role": view.role()})

    async def fresh_counters() -> None:
        """The workers' periodic reports lag behind traffic: ask them now (bounded wait)."""
        workers = getattr(view, "workers", None)  # test doubles of a view may have none
        if workers is not None:
            await workers.refresh()

    async def status(_: web.Request) -> web.Response:
        await fresh_counters()
        return web.json_response(status_json(view))

    async def metrics(_: web.Request) -> web.Response:
        await fresh_counters()
        return web.Response(
            body=render(view.collector) + render(ServiceCollector(
                view.name, lambda: _services_json(view))),
            headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"},
        )

    async def backend_action(request: web.Request) -> web.Response:
        action = request.match_info["action"]
        try:
            bid = int(request.match_info["id"])
        except ValueError:
            return web.json_response({"error": "back-end id must be an integer"}, status=400)
        if action not in ACTIONS:
            return web.json_response({"error": f"action must be one of {ACTIONS}"}, status=404)
        row = view.ctx.table.get(bid)
        if row is None:
            return web.json_response({"error": f"no back end {bid}"}, status=404)
        view.ctx.table.set_admin(bid, action)  # type: ignore[arg-type]
        events.info(
            "event=admin_action node=%s action=%s backend=%d peer=%s", view.name, action, bid,
            request.remote,
        )
        return web.json_response(row.to_json())

    app = web.Application(middlewares=[auth])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/status", status)
    app.router.add_get("/metrics", metrics)
    app.router.add_post("/backends/{id}/{action}", backend_action)
    if extra_routes is not None:
        extra_routes(app)
    return app
