"""The status sweep shell against real admin-style HTTP servers on loopback."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp import web

from scheduler.server_status_table import ServerStatusTable
from scheduler.status_sweep import (
    NodeAnswered,
    NodeFailed,
    StatusSweep,
    SweepEvent,
    SweepFinished,
)
from scheduler.status_sweep_http import StatusFetcher, run_sweep
from tests.integration.loopback import free_port

TOKEN = "s3cret"


@dataclass(frozen=True)
class Node:
    name: str
    address: str
    weight: int = 100


def _doc(name: str) -> dict[str, Any]:
    return {
        "node": name,
        "nodes": [{"name": name, "avg_response_ms": 2.5, "hits": 10, "open_connections": 3}],
        "backends": [],
    }



async def test_sweep_fills_the_table_and_fails_a_silent_node() -> None:
    seen_auth: list[str | None] = []

    async def status(request: web.Request) -> web.Response:
        seen_auth.append(request.headers.get("Authorization"))
        if request.headers.get("Authorization") != f"Bearer {TOKEN}":
            return web.json_response({"error": "token"}, status=401)
        return web.json_response(_doc("n1"))

    app = web.Application()
    app.router.add_get("/status", status)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    dead_port = free_port()  # nothing listens: connection refused
    table = ServerStatusTable([Node("n1", "127.0.0.1"), Node("n2", "127.0.0.2")])
    sweep = StatusSweep(2, retries=2, retry_delay_s=0.01, sweep_delay_s=0.05)
    events: list[SweepEvent] = []
    stop = asyncio.Event()

    def on_event(e: SweepEvent) -> None:
        events.append(e)
        if isinstance(e, NodeFailed):
            stop.set()

    urls = [f"http://127.0.0.1:{port}/status", f"http://127.0.0.1:{dead_port}/status"]
    try:
        async with aiohttp.ClientSession() as session:
            fetch = StatusFetcher(session, urls, TOKEN, timeout_s=1.0)
            await asyncio.wait_for(
                run_sweep(sweep, table, fetch, stop=stop, on_event=on_event), timeout=10
            )
    finally:
        await runner.cleanup()
    assert events[:2] == [NodeAnswered(0), NodeFailed(1)]
    # n2 was the last node: its failure also ends the first sweep.
    assert len(events) == 3
    assert isinstance(events[2], SweepFinished) and events[2].number == 1
    assert table.last_sweep is not None
    assert seen_auth == [f"Bearer {TOKEN}"]
    assert table.rows[0].hits == 10 and table.rows[0].open_connections == 3
    assert not table.rows[0].failed
    assert table.rows[1].failed and table.rows[1].misses == 3
