"""The node's CDN offload hub (shell): it gathers what this node's proxy sampled, has one node
choose for the whole array, and hands the choice to the node's proxy.

One decider, the scheduler (the first [[nodes]] entry when the array has no VIP, so no
scheduler): every SHARE_S each node POSTs its figures to the decider's admin API
(`POST /cdn/report`) and the answer carries the array's choice, so every node holds the same
chosen set one period after the decider made it. A single decider rather than every node
choosing from everyone's figures: figures arrive at slightly different times at each node, and
objects near the cut would flap between nodes' choices (a page would differ by node); with one
decider they cannot. Worker processes report to their own node the same way
(dlba/cdn/worker_link.py). The figures are small (at most a few hundred objects), so a report
is one small JSON post.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from dlba.admin.metrics import NodeCollector
from dlba.cdn.chooser import Choice, choose, type_matcher
from dlba.cdn.popularity import Figure, merge
from dlba.cdn.runtime import COUNTERS, CdnRuntime
from dlba.config import Config
from dlba.proxy.proxy_context import ProxyContext

events = logging.getLogger("dlba.event")

SHARE_S = 0.5  # how often figures go to the decider (and the choice comes back)
STALE_S = 5.0  # a source silent this long no longer counts
POST_TIMEOUT_S = 1.0
FIGURES_SENT = 512  # the heaviest objects a report carries


class CdnHub:
    def __init__(self, ctx: ProxyContext, name: str, token: str,
                 scheduler: Callable[[], str | None]) -> None:
        self.ctx = ctx
        self.name = name
        self.token = token
        self.scheduler = scheduler
        self.choice = Choice()
        self.decided_at = 0.0
        self.deciding_since = 0.0  # monotonic time this node became the decider (0: it is not)
        # source ("node:n2", "worker:1234") -> (when, figures, counters)
        self.reports: dict[str, tuple[float, list[Figure], dict[str, int]]] = {}
        self.session: aiohttp.ClientSession | None = None
        self.task: asyncio.Task[None] | None = None
        self.unreachable = False

    @property
    def config(self) -> Config:
        return self.ctx.config

    def attach(self, app: web.Application, collector: NodeCollector) -> None:
        """Routes, metrics, and the sharing loop for the admin app's lifetime."""
        app.router.add_get("/cdn", self._get)
        app.router.add_post("/cdn/report", self._report)
        collector.extra.append(self.metrics)
        app.on_startup.append(self._start)
        app.on_cleanup.append(self._stop)

    async def _start(self, _: web.Application) -> None:
        self.session = aiohttp.ClientSession()
        self.task = asyncio.ensure_future(self._run())

    async def _stop(self, _: web.Application) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.session is not None:
            await self.session.close()

    # --- the loop ---------------------------------------------------------------------------
    def decider(self) -> str:
        return self.scheduler() or self.config.nodes[0].name

    def local_figures(self) -> list[Figure]:
        """This node's figures: its in-process proxy's, or its workers' reports."""
        now = time.monotonic()
        groups = [f for src, (at, f, _) in self.reports.items()
                  if src.startswith("worker:") and now - at < STALE_S]
        rt = self.ctx.cdn
        if isinstance(rt, CdnRuntime):
            groups.append(rt.figures())
        return merge(groups, FIGURES_SENT)

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SHARE_S)
            if not self.config.cdn.enabled:
                self._adopt(Choice())
                continue
            decider = self.decider()
            if decider == self.name:
                # A new decider first hears every node once (they report every period), so
                # its first choice is not made from its own figures alone.
                now = time.monotonic()
                self.deciding_since = self.deciding_since or now
                if now - self.deciding_since >= 2 * SHARE_S:
                    self._adopt(self.decide())
            else:
                self.deciding_since = 0.0
                choice = await self._post(decider, self.local_figures())
                if choice is not None:
                    self._adopt(choice)

    def decide(self) -> Choice:
        """The array's choice from every node's figures (this one's and the reports')."""
        now = time.monotonic()
        groups = [self.local_figures()] + [
            f for src, (at, f, _) in self.reports.items()
            if src.startswith("node:") and src != f"node:{self.name}" and now - at < STALE_S]
        cfg = self.config.cdn
        return Choice(tuple(choose(merge(groups), type_matcher(cfg.types), cfg.top,
                                   self.choice.paths)))

    def _adopt(self, choice: Choice) -> None:
        rt = self.ctx.cdn
        if choice.version != self.choice.version:
            events.info("event=cdn_choice node=%s version=%s objects=%d", self.name,
                        choice.version, len(choice.objects))
            self.decided_at = time.time()
        self.choice = choice
        if isinstance(rt, CdnRuntime):
            rt.set_choice(choice)

    async def _post(self, decider: str, figures: list[Figure]) -> Choice | None:
        assert self.session is not None
        names = [n.name for n in self.config.nodes]
        if decider not in names:
            return None
        url = self.config.admin_url(names.index(decider)) + "/cdn/report"
        body = {"source": f"node:{self.name}", "figures": [f.to_wire() for f in figures]}
        try:
            async with self.session.post(
                url, json=body, headers={"Authorization": f"Bearer {self.token}"},
                timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S),
            ) as r:
                data = await r.json() if r.status == 200 else None
            choice = Choice.from_wire(data["choice"]) if isinstance(data, dict) else None
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            choice = None
        if (choice is None) != self.unreachable:  # once per outage, not once per period
            self.unreachable = choice is None
            log = events.warning if choice is None else events.info
            log("event=cdn_decider_%s node=%s decider=%s", "unreachable" if choice is None
                else "back", self.name, decider)
        return choice

    # --- admin API --------------------------------------------------------------------------
    async def _report(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            source = str(body["source"])
            figures = [Figure.from_wire(f) for f in body["figures"][:FIGURES_SENT]]
            counters = {str(k): int(v) for k, v in dict(body.get("counters") or {}).items()}
        except (ValueError, KeyError, TypeError) as e:
            return web.json_response({"ok": False, "reason": str(e)}, status=400)
        self.reports[source] = (time.monotonic(), figures, counters)
        return web.json_response({"ok": True, "choice": self.choice.to_wire()})

    def counters(self) -> dict[str, int]:
        """This node's counters: its in-process proxy's, or its workers' latest reports."""
        out: dict[str, int] = dict.fromkeys(COUNTERS, 0)
        rt = self.ctx.cdn
        parts = [c for src, (_, _, c) in self.reports.items() if src.startswith("worker:")]
        if isinstance(rt, CdnRuntime):
            parts.append(rt.counters())
        for c in parts:
            for k, v in c.items():
                out[k] = out.get(k, 0) + v
        return out

    def status(self) -> dict[str, Any]:
        cfg = self.config.cdn
        base = cfg.base.rstrip("/")
        return {
            "node": self.name, "enabled": cfg.enabled, "decider": self.decider(),
            "version": self.choice.version, "base": base, "top": cfg.top,
            "sample": cfg.sample, "types": list(cfg.types),
            "objects": [{"path": f.path, "bytes": f.bytes, "count": f.count,
                         "error": f.error, "cdn_url": base + f.path}
                        for f in self.choice.objects],
            "counters": self.counters(),
        }

    async def _get(self, _: web.Request) -> web.Response:
        return web.json_response(self.status())

    def metrics(self) -> Iterator[Metric]:
        c = self.counters()
        node = self.name
        for key, name, doc in (
            ("rewritten", "rewritten", "HTML pages whose URLs were rewritten on the way out"),
            ("urls_rewritten", "urls_rewritten", "URLs rewritten to the CDN"),
            ("cache_hits", "cache_hits", "Pages answered from the rewritten-page cache"),
            ("cache_misses", "cache_misses", "Pages rewritten because no cached copy served"),
            ("revalidated", "cache_revalidated", "Stale cached pages the back end confirmed"),
            ("bytes_offloaded", "bytes_offloaded", "Bytes of objects clients fetch from the "
             "CDN instead of the array (estimated from the sampled sizes)"),
            ("sampled", "sampled", "Responses sampled for the popularity figures"),
        ):
            m = CounterMetricFamily(f"dlba_cdn_{name}", doc, labels=["node"])
            m.add_metric([node], c.get(key, 0))
            yield m
        passed = CounterMetricFamily("dlba_cdn_passed", "HTML pages passed through untouched, "
                                     "by reason", labels=["node", "reason"])
        for k, v in sorted(c.items()):
            if k.startswith("passed_"):
                passed.add_metric([node, k[7:]], v)
        yield passed
        g = GaugeMetricFamily("dlba_cdn_chosen_objects", "Objects chosen for the CDN",
                              labels=["node"])
        g.add_metric([node], len(self.choice.objects))
        yield g
