"""The I/O shell of the status sweep: ``GET /status`` on each node's admin API, one at a time.

All decisions live in ``status_sweep.StatusSweep`` and ``server_status_table``; this module only
fetches, sleeps and forwards events.  A wrong answer (bad JSON, another node's name, a field of
the wrong type) counts as a miss, like no answer: a node that cannot describe itself cannot be
scheduled with confidence.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

import aiohttp

from scheduler.server_status_table import ServerStatusTable, StatusError
from scheduler.status_sweep import (
    NodeFailed,
    StatusSweep,
    SweepEvent,
    SweepFinished,
    Visit,
    proxy_serves,
)

log = logging.getLogger(__name__)

Fetch = Callable[[int], Awaitable[Mapping[str, Any] | None]]


def admin_status_url(address: str, port: int = 9000) -> str:
    return f"http://{address}:{port}/status"


class StatusFetcher:
    """Fetch one node's ``/status`` with the admin token; None on any failure."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        urls: Sequence[str | None],
        token: str,
        *,
        timeout_s: float = 1.0,
    ) -> None:
        self._session = session
        self._urls = list(urls)
        self._headers = {"Authorization": f"Bearer {token}"}
        self._timeout = aiohttp.ClientTimeout(total=timeout_s)

    async def __call__(self, node: int) -> Mapping[str, Any] | None:
        url = self._urls[node]
        if url is None:  # a member no one watches any more (a drained one's slot)
            return None
        try:
            # A fresh connection per visit, closed after the answer, as the patent's sweep does:
            # a pooled connection to a dead node would hide its death behind the pool.
            async with self._session.get(
                url,
                headers={**self._headers, "Connection": "close"},
                timeout=self._timeout,
            ) as resp:
                if resp.status != 200:
                    log.debug("status %s: HTTP %s", url, resp.status)
                    return None
                doc = await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, json.JSONDecodeError, ValueError) as exc:
            log.debug("status %s: %s", url, exc)
            return None
        return doc if isinstance(doc, Mapping) else None


async def run_sweep(
    sweep: StatusSweep,
    table: ServerStatusTable,
    fetch: Fetch,
    *,
    stop: asyncio.Event,
    on_event: Callable[[SweepEvent], None] | None = None,
    clock: Callable[[], float] = time.monotonic,
    wall: Callable[[], float] = time.time,
) -> None:
    """Drive ``sweep`` until ``stop`` is set, keeping ``table`` current.

    ``clock`` paces the sweep (monotonic, so a wall-clock jump cannot stall it); ``wall`` stamps
    what operators read (last seen, last sweep).
    """
    while not stop.is_set():
        action = sweep.next_action(clock())
        if not isinstance(action, Visit):
            delay = max(0.0, action.until - clock())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await stop.wait()
            continue
        doc = await fetch(action.node)
        ok = False
        if doc is not None:
            try:
                table.apply_status(action.node, doc, wall())
                ok = proxy_serves(doc)
            except StatusError as exc:
                log.warning("node %s: bad /status: %s", table.rows[action.node].name, exc)
        if not ok:
            table.record_miss(action.node)
        for event in sweep.on_result(action.node, ok, clock()):
            if isinstance(event, NodeFailed):
                table.mark_failed(event.node)
                log.warning(
                    "node %s failed after %d tries", table.rows[event.node].name, action.attempt
                )
            elif isinstance(event, SweepFinished):
                table.sweep_finished(wall())
            if on_event is not None:
                on_event(event)
