"""Learned session ids shared by every node of the array (shell of
dlba/scheduling/learned_sessions.py).

The node process holds the node's table (its selector's, or with worker processes the union of
what they learn, see dlba/proxy/worker_pool.py). Every SYNC_S the ids learned here go to every peer
node's admin API (``POST /sessions``, bearer token), one sender and one bounded queue per peer so
a dead peer slows nobody else; what peers send is merged and handed to the workers. A node that
starts pulls a snapshot from the first peer that answers (``GET /sessions``). Peers do not relay:
each node sends what it learned itself to all, so a batch crosses the network once per peer.

A standalone node (one [[nodes]] entry) has no peers and only keeps its own table.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Iterator
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.core import Metric

from dlba.admin.metrics import learned_session_metrics
from dlba.config import Config
from dlba.proxy.worker_pool import WorkerPool
from dlba.scheduling.learned_sessions import Learned, LearnedSessions, from_wire, to_wire

events = logging.getLogger("dlba.event")

SYNC_S = 0.1  # batching period: learned ids reach every node well within a second
BATCH = 1000  # records per POST (a record is at most ~300 bytes of JSON)
PEER_QUEUE = 50000  # records waiting for one peer; beyond it the oldest go (it pulls on start)
POST_TIMEOUT_S = 0.5
RETRY_S = 1.0  # a peer that failed is tried again after this
PULL_TIMEOUT_S = 5.0
PULL_ROUNDS = 5  # at start, rounds over the peers until one answers


class SessionSync:
    def __init__(self, config: Config, name: str, token: str, learned: LearnedSessions,
                 workers: WorkerPool | None, loop: asyncio.AbstractEventLoop) -> None:
        self.config = config
        self.name = name
        self.learned = learned
        self.workers = workers
        self.loop = loop
        self.headers = {"Authorization": f"Bearer {token}"}
        self.peers = [config.admin_url(i) for i, n in enumerate(config.nodes) if n.name != name]
        self.queues = {p: collections.deque[Learned](maxlen=PEER_QUEUE) for p in self.peers}
        self.wake = {p: asyncio.Event() for p in self.peers}
        self.session: aiohttp.ClientSession | None = None
        self.tasks: list[asyncio.Task[None]] = []
        self.sent = 0  # records delivered to peers
        self.received = 0  # records merged from peers

    # --- life cycle -------------------------------------------------------------------------
    def start(self) -> None:
        if self.peers:
            self.session = aiohttp.ClientSession()
            self.tasks.append(asyncio.ensure_future(self._pull()))
            self.tasks += [asyncio.ensure_future(self._send(p)) for p in self.peers]
        self.tasks.append(asyncio.ensure_future(self._collect()))

    async def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.session is not None:
            await self.session.close()

    # --- outgoing ---------------------------------------------------------------------------
    async def _collect(self) -> None:
        """Every SYNC_S: what this node learned goes into every peer's queue."""
        while True:
            await asyncio.sleep(SYNC_S)
            learned = self.learned
            learned.expire(self.loop.time())
            while learned.has_changes:
                batch = learned.take_changes(BATCH)
                for p in self.peers:
                    self.queues[p].extend(batch)
                    self.wake[p].set()

    async def _send(self, peer: str) -> None:
        queue, wake = self.queues[peer], self.wake[peer]
        failing = False
        while True:
            await wake.wait()
            wake.clear()
            while queue:
                batch = [queue.popleft() for _ in range(min(BATCH, len(queue)))]
                if await self._post(peer, batch):
                    self.sent += len(batch)
                    if failing:
                        failing = False
                        events.info("event=sessions_peer_back node=%s peer=%s", self.name, peer)
                    continue
                if not failing:  # once per outage, not once per batch
                    failing = True
                    events.warning("event=sessions_peer_unreachable node=%s peer=%s queued=%d",
                                   self.name, peer, len(queue) + len(batch))
                if len(queue) + len(batch) <= PEER_QUEUE:
                    queue.extendleft(reversed(batch))  # tried again, oldest first
                await asyncio.sleep(RETRY_S)

    async def _post(self, peer: str, batch: list[Learned]) -> bool:
        assert self.session is not None
        body = {"node": self.name, "items": to_wire(batch, self.loop.time())}
        try:
            async with self.session.post(
                peer + "/sessions", json=body, headers=self.headers,
                timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S),
            ) as r:
                await r.read()
                return r.status == 200
        except (aiohttp.ClientError, TimeoutError):
            return False

    # --- incoming ---------------------------------------------------------------------------
    def merge(self, items: object, limit: int) -> int:
        now = self.loop.time()
        changed = self.learned.merge(from_wire(items, now, limit), now)
        if changed and self.workers is not None:
            self.workers.send_sessions(changed)
        self.received += len(changed)
        return len(changed)

    async def _pull(self) -> None:
        """A node that starts takes what its peers know (the first that answers)."""
        assert self.session is not None
        for _ in range(PULL_ROUNDS):
            for peer in self.peers:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError):
                    async with self.session.get(
                        peer + "/sessions", headers=self.headers,
                        timeout=aiohttp.ClientTimeout(total=PULL_TIMEOUT_S),
                    ) as r:
                        if r.status == 200:
                            d = await r.json()
                            n = self.merge(d.get("items"), self.learned.max_entries)
                            events.info("event=sessions_pulled node=%s peer=%s count=%d",
                                        self.name, d.get("node"), n)
                            return
            await asyncio.sleep(RETRY_S)

    def routes(self, app: web.Application) -> None:
        async def receive(request: web.Request) -> web.Response:
            try:
                body = await request.json()
                n = self.merge(body["items"], BATCH)
            except (ValueError, KeyError, TypeError) as e:
                return web.json_response({"ok": False, "reason": str(e)}, status=400)
            return web.json_response({"ok": True, "merged": n})

        async def snapshot(_: web.Request) -> web.Response:
            now = self.loop.time()
            items = to_wire(self.learned.snapshot(self.learned.max_entries), now)
            return web.json_response({"node": self.name, "items": items})

        app.router.add_post("/sessions", receive)
        app.router.add_get("/sessions", snapshot)

    # --- operator view ----------------------------------------------------------------------
    def metrics(self) -> Iterator[Metric]:
        learned = self.learned
        if self.workers is not None:
            total, selections = self.workers.learned_counts()
        else:
            total, selections = learned.learned_total, learned.selections
        return learned_session_metrics(self.name, len(learned), total, selections)

    def status(self) -> dict[str, Any]:
        return {"entries": len(self.learned), "sent": self.sent, "received": self.received}
