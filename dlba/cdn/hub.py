"""The node's CDN offload hub (shell): it gathers what this node's proxy sampled, has one node
choose for the whole array, and hands the choice to the node's proxy; figures, choices and
counters are kept per virtual service (a path on two services is two objects).

One decider, the scheduler (the first [[nodes]] entry when the array has no VIP, so no
scheduler): every SHARE_S each node POSTs its figures to the decider's admin API
(`POST /cdn/report`) and the answer carries the array's choice, so every node holds the same
chosen set one period after the decider made it. A single decider rather than every node
choosing from everyone's figures: figures arrive at slightly different times at each node, and
objects near the cut would flap between nodes' choices (a page would differ by node); with one
decider they cannot. Worker processes report to their own node the same way
(dlba/cdn/worker_link.py). The figures are small (at most a few hundred objects a service), so
a report is one small JSON post: {"source", "services": {name: {"figures", "counters"}}},
answered {"choices": {name: choice}}.
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
from dlba.cdn.runtime import COUNTERS, EMPTY, CdnRuntime, service_settings
from dlba.cdn.settings import CdnConfig
from dlba.config import Config
from dlba.proxy.proxy_context import ProxyContext

events = logging.getLogger("dlba.event")

SHARE_S = 0.5  # how often figures go to the decider (and the choice comes back)
STALE_S = 5.0  # a source silent this long no longer counts
POST_TIMEOUT_S = 1.0
FIGURES_SENT = 512  # the heaviest objects a report carries


Report = tuple[float, dict[str, list[Figure]], dict[str, dict[str, int]]]


def figures_wire(figures: dict[str, list[Figure]], counters: dict[str, dict[str, int]] | None
                 = None) -> dict[str, object]:
    """A report's services: {service: {"figures": [...], "counters": {...}}}."""
    return {name: {"figures": [f.to_wire() for f in figs[:FIGURES_SENT]],
                   "counters": (counters or {}).get(name, {})}
            for name, figs in figures.items()}


def choices_from_wire(data: object) -> dict[str, Choice]:
    if not isinstance(data, dict):
        raise ValueError("not a map of choices")
    return {str(name): Choice.from_wire(c) for name, c in data.items()}


class CdnHub:
    def __init__(self, ctx: ProxyContext, name: str, token: str,
                 scheduler: Callable[[], str | None]) -> None:
        self.ctx = ctx
        self.name = name
        self.token = token
        self.scheduler = scheduler
        self.choices: dict[str, Choice] = {}  # per virtual service
        self.decided_at = 0.0
        self.deciding_since = 0.0  # monotonic time this node became the decider (0: it is not)
        # source ("node:n2", "worker:1234") -> (when, figures and counters per service)
        self.reports: dict[str, Report] = {}
        self.session: aiohttp.ClientSession | None = None
        self.task: asyncio.Task[None] | None = None
        self.unreachable = False

    @property
    def config(self) -> Config:
        return self.ctx.config

    def settings(self) -> dict[str, CdnConfig]:
        return service_settings(self.config)

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

    def _fresh(self, prefix: str) -> list[dict[str, list[Figure]]]:
        now = time.monotonic()
        return [f for src, (at, f, _) in self.reports.items()
                if src.startswith(prefix) and src != f"node:{self.name}" and now - at < STALE_S]

    def local_figures(self) -> dict[str, list[Figure]]:
        """This node's figures per service: its in-process proxy's, or its workers' reports."""
        parts = self._fresh("worker:")
        rt = self.ctx.cdn
        if isinstance(rt, CdnRuntime):
            parts.append(rt.figures())
        return {name: merge([p.get(name, []) for p in parts], FIGURES_SENT)
                for name, c in self.settings().items() if c.enabled}

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(SHARE_S)
            if not any(c.enabled for c in self.settings().values()):
                self._adopt({})
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
                choices = await self._post(decider, self.local_figures())
                if choices is not None:
                    self._adopt(choices)

    def decide(self) -> dict[str, Choice]:
        """The array's choice per service from every node's figures (this one's and the
        reports'), each with its own types and top."""
        parts = [self.local_figures(), *self._fresh("node:")]
        out = {}
        for name, cfg in self.settings().items():
            if cfg.enabled:
                current = self.choices.get(name, EMPTY).paths
                out[name] = Choice(tuple(choose(merge([p.get(name, []) for p in parts]),
                                                type_matcher(cfg.types), cfg.top, current)))
        return out

    def _adopt(self, choices: dict[str, Choice]) -> None:
        for name, choice in choices.items():
            if choice.version != self.choices.get(name, EMPTY).version:
                events.info("event=cdn_choice node=%s service=%s version=%s objects=%d",
                            self.name, name, choice.version, len(choice.objects))
                self.decided_at = time.time()
        self.choices = choices
        rt = self.ctx.cdn
        if isinstance(rt, CdnRuntime):
            rt.set_choices(choices)

    async def _post(self, decider: str, figures: dict[str, list[Figure]]
                    ) -> dict[str, Choice] | None:
        assert self.session is not None
        names = [n.name for n in self.config.nodes]
        if decider not in names:
            return None
        url = self.config.admin_url(names.index(decider)) + "/cdn/report"
        first = next(iter(self.settings()))
        body = {"source": f"node:{self.name}", "services": figures_wire(figures),
                # what a decider of the release before services reads (rolling upgrade)
                "figures": [f.to_wire() for f in figures.get(first, [])[:FIGURES_SENT]]}
        try:
            async with self.session.post(
                url, json=body, headers={"Authorization": f"Bearer {self.token}"},
                timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S),
            ) as r:
                data = await r.json() if r.status == 200 else None
            choices = None
            if isinstance(data, dict):
                choices = (choices_from_wire(data["choices"]) if "choices" in data
                           else {first: Choice.from_wire(data["choice"])})
        except (aiohttp.ClientError, TimeoutError, ValueError, KeyError):
            choices = None
        if (choices is None) != self.unreachable:  # once per outage, not once per period
            self.unreachable = choices is None
            log = events.warning if choices is None else events.info
            log("event=cdn_decider_%s node=%s decider=%s", "unreachable" if choices is None
                else "back", self.name, decider)
        return choices

    # --- admin API --------------------------------------------------------------------------
    async def _report(self, request: web.Request) -> web.Response:
        try:
            body = await request.json()
            source = str(body["source"])
            figures: dict[str, list[Figure]] = {}
            counters: dict[str, dict[str, int]] = {}
            first = next(iter(self.settings()))
            # A node or worker of the release before services sends its figures alone.
            services = body.get("services") or {first: body}
            for name, part in dict(services).items():
                figures[str(name)] = [Figure.from_wire(f)
                                      for f in part["figures"][:FIGURES_SENT]]
                counters[str(name)] = {str(k): int(v)
                                       for k, v in dict(part.get("counters") or {}).items()}
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            return web.json_response({"ok": False, "reason": str(e)}, status=400)
        self.reports[source] = (time.monotonic(), figures, counters)
        return web.json_response({"ok": True, "choices": {
            name: c.to_wire() for name, c in self.choices.items()},
            "choice": self.choices.get(first, EMPTY).to_wire()})  # for the previous release

    def counters(self) -> dict[str, dict[str, int]]:
        """This node's counters per service: its in-process proxy's, or its workers' latest
        reports (summed)."""
        names = list(self.settings())
        out = {name: dict.fromkeys(COUNTERS, 0) for name in names}
        parts = [c for src, (_, _, c) in self.reports.items() if src.startswith("worker:")]
        rt = self.ctx.cdn
        if isinstance(rt, CdnRuntime):
            parts.append(rt.counters())
        for part in parts:
            for name, c in part.items():
                into = out.get(name)
                if into is not None:
                    for k, v in c.items():
                        into[k] = into.get(k, 0) + v
        return out

    def status(self) -> dict[str, Any]:
        counters = self.counters()
        services: list[dict[str, Any]] = []
        for name, cfg in self.settings().items():
            base = cfg.base.rstrip("/")
            choice = self.choices.get(name, EMPTY) if cfg.enabled else EMPTY
            services.append({
                "service": name, "enabled": cfg.enabled, "base": base, "top": cfg.top,
                "types": list(cfg.types), "version": choice.version,
                "objects": [{"service": name, "path": f.path, "bytes": f.bytes,
                             "count": f.count, "error": f.error, "cdn_url": base + f.path}
                            for f in choice.objects],
                "counters": counters.get(name, {}),
            })
        total: dict[str, int] = {}
        for c in counters.values():
            for k, v in c.items():
                total[k] = total.get(k, 0) + v
        return {
            "node": self.name, "enabled": any(s["enabled"] for s in services),
            "decider": self.decider(), "sample": self.config.cdn.sample,
            "version": ",".join(f"{s['service']}={s['version']}" for s in services),
            "services": services,
            "objects": [o for s in services for o in s["objects"]],  # every service's
            "counters": total,
        }

    async def _get(self, _: web.Request) -> web.Response:
        return web.json_response(self.status())

    def metrics(self) -> Iterator[Metric]:
        counters = self.counters()
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
            m = CounterMetricFamily(f"dlba_cdn_{name}", doc, labels=["node", "service"])
            for service, c in counters.items():
                m.add_metric([node, service], c.get(key, 0))
            yield m
        passed = CounterMetricFamily("dlba_cdn_passed", "HTML pages passed through untouched, "
                                     "by reason", labels=["node", "service", "reason"])
        for service, c in counters.items():
            for k, v in sorted(c.items()):
                if k.startswith("passed_"):
                    passed.add_metric([node, service, k[7:]], v)
        yield passed
        g = GaugeMetricFamily("dlba_cdn_chosen_objects", "Objects chosen for the CDN",
                              labels=["node", "service"])
        for service in counters:
            g.add_metric([node, service], len(self.choices.get(service, EMPTY).objects))
        yield g
