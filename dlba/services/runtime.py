"""The proxy's side of virtual services: each request's service, pool and class, the pool's
selector, and its slots and queue (the pure parts: routing, classes, tokens, pool_queue).

ProxyContext owns one `Services`; Exchange._schedule asks it for a back end. The answer is a
Selection, None (nothing can serve: 503, or already answered), or WAIT: the request waits in
its pool's queue, and `Services` starts it (Exchange.proceed) when a slot of its pool frees, or
answers 503 with Retry-After when its wait runs out or a higher class takes its place.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from dlba.config import Config, SchedulingConfig
from dlba.config.services import ServiceConfig
from dlba.scheduling.selection import BackendSelector, Selection, request_path
from dlba.scheduling.web_server_status_table import WebServerStatusTable
from dlba.services.classes import Classifier, ClientClass
from dlba.services.pool_queue import PoolQueue, Waiter
from dlba.services.routing import ServiceRouter, host_of
from dlba.services.tokens import token_key, verify_token

if TYPE_CHECKING:
    from dlba.proxy.core_exchange import Exchange

events = logging.getLogger("dlba.event")

WAIT = Selection(0, "policy")  # backend id 0: the request waits in its pool's queue
TOKEN_HEADER = b"x-dlba-class"
TOKEN_COOKIE = "DLBACLASS"
QUEUE_PER_SLOT = 8  # a pool's queue holds up to this many requests per back-end slot
QUEUE_MIN = 64


@dataclass(slots=True, eq=False)
class PoolRuntime:
    name: str
    selector: BackendSelector
    queue: PoolQueue[Exchange]
    retry_after: int = 1
    dispatching: bool = False
    saturated: bool = False  # requests wait (logged once when it starts and once when over)


@dataclass(slots=True, eq=False)
class Route:
    """What an exchange keeps of its scheduling: its service, pool, class, the slot it holds."""

    service: ServiceConfig
    pool: PoolRuntime
    cls: ClientClass
    hsts: bytes  # Strict-Transport-Security value of the service on TLS ("": none)
    slot: int = 0  # the back end whose slot it holds (0: none)


@dataclass(slots=True)
class ServiceCounters:
    requests: int = 0
    by_pool: dict[str, int] = field(default_factory=dict)


def _token_of(ex: Exchange) -> str | None:
    for name, value in ex.headers:
        if len(name) == 12 and name.lower() == TOKEN_HEADER:
            return value.decode("latin-1")
    cookie = ex.cookie_header
    if cookie and TOKEN_COOKIE in cookie:
        for part in cookie.split(";"):
            k, _, v = part.strip().partition("=")
            if k == TOKEN_COOKIE:
                return v
    return None


class Services:
    def __init__(self, table: WebServerStatusTable, default_selector: BackendSelector,
                 secret: bytes, call_soon: Callable[[Callable[[], None]], object]) -> None:
        self.table = table
        self.default_selector = default_selector
        self.key = token_key(secret)
        self.secret = secret
        self.call_soon = call_soon
        self.pools: dict[str, PoolRuntime] = {}
        self.holding: set[Exchange] = set()
        self.counters: dict[str, ServiceCounters] = {}
        self.router = ServiceRouter(())
        self.classifier = Classifier(())
        self.trivial = True
        self.hsts_max_age = 0

    def apply(self, config: Config) -> None:
        """A new config's services, pools and classes (queues and counters of pools that stay
        are kept: requests waiting in them keep their place)."""
        self.router = ServiceRouter(config.services)
        self.classifier = Classifier(config.classes)
        self.hsts_max_age = config.tls.hsts_max_age_s
        workers = max(1, config.proxy.workers)
        learned = self.default_selector.learned
        old = self.pools
        self.pools = {}
        for p in config.pools:
            members = [b for b in config.backends if b.pool == p.name]
            sched = SchedulingConfig(p.policy, p.url_hash_paths)
            rt = old.get(p.name)
            if rt is None:
                sel = self.default_selector if p.name == "default" else BackendSelector(
                    self.table, config.persistence, sched, self.secret, learned=learned)
                rt = PoolRuntime(p.name, sel, PoolQueue(p.name, p.queue_timeout_s))
            rt.selector.set_members(frozenset(b.id for b in members))
            rt.selector.reconfigure(config.persistence, sched)
            # maxconn is the node's: worker processes share it (each at least one slot).
            limits = {b.id: (math.ceil(b.maxconn / workers) if b.maxconn else 0)
                      for b in members}
            rt.queue.set_limits(limits)
            rt.queue.timeout_s = p.queue_timeout_s
            rt.queue.max_waiting = max(QUEUE_MIN, QUEUE_PER_SLOT * sum(limits.values()))
            rt.retry_after = max(1, math.ceil(p.queue_timeout_s))
            self.pools[p.name] = rt
        for name, rt in old.items():
            if name not in self.pools:
                for ex in list(rt.queue.items()):
                    ex.refuse(503, "pool removed", b"Retry-After: 1\r\n")
        # A Config made in code (tests) may have no services or pools at all.
        implicit = all(s.implicit for s in config.services)
        self.trivial = (implicit and len(self.pools) <= 1 and not config.classes
                        and not any(b.maxconn for b in config.backends))
        if self.trivial:
            self.default_selector.set_members(None)

    # --- the request path -------------------------------------------------------------------
    def schedule(self, ex: Exchange, now: float) -> Selection | None:
        route = ex.route
        if route is None:
            route = self._route(ex)
            if route is None:
                return None
        elif route.slot:
            self._release(ex, route)  # a retry: the failed attempt's slot is free again
        pool = route.pool
        cookie = route.service.cookie
        target = ex.target.decode("latin-1")
        sel = pool.selector.select(target, ex.cookie_header, ex.excluded, now, cookie)
        q = pool.queue
        if sel is None or not q.limited():
            return sel
        cls = route.cls
        bid = sel.backend_id
        pinned = sel.reason in ("cookie", "learned")
        if not pinned and not q.has_room(bid):
            alt = pool.selector.select(target, ex.cookie_header, ex.excluded | q.full(), now,
                                       cookie)
            if alt is not None:
                sel, bid = alt, alt.backend_id
        if q.has_room(bid) and not q.blocked(bid, cls):
            self._acquire(ex, route, bid)
            return sel
        shed = q.push(ex, cls, now, bid if pinned else 0)
        if not pool.saturated:
            pool.saturated = True
            events.info("event=pool_saturated pool=%s", pool.name)
        for item in shed:
            item.refuse(503, "pool full", b"Retry-After: %d\r\n" % pool.retry_after)
        return None if ex in shed else WAIT

    def _route(self, ex: Exchange) -> Route | None:
        ip, port = ex.client.io.local_address()
        service = self.router.service_for(ip, port)
        if service is None:
            return None
        token = None
        if self.classifier.token_classes:
            text = _token_of(ex)
            if text:
                token = verify_token(self.key, text, time.time())
        cls = self.classifier.classify(ip, ex.client.peer_ip, token)
        pool_name = service.route(host_of(ex.headers), request_path(ex.target.decode("latin-1")))
        pool = self.pools.get(pool_name) or self.pools.get("default")
        if pool is None:
            return None
        c = self.counters.get(service.name)
        if c is None:
            c = self.counters[service.name] = ServiceCounters()
        c.requests += 1
        c.by_pool[pool.name] = c.by_pool.get(pool.name, 0) + 1
        pool.queue.count(cls)
        if not cls.may_use(pool.name):
            ex.refuse(403, f"class {cls.name} may not use pool {pool.name}")
            return None
        hsts = b"max-age=%d" % self.hsts_max_age if service.hsts else b""
        route = ex.route = Route(service, pool, cls, hsts)
        return route

    def _acquire(self, ex: Exchange, route: Route, bid: int) -> None:
        route.pool.queue.acquire(bid)
        route.pool.queue.served(route.cls)
        route.slot = bid
        self.holding.add(ex)

    def _release(self, ex: Exchange, route: Route) -> None:
        bid, route.slot = route.slot, 0
        self.holding.discard(ex)
        pool = route.pool
        pool.queue.release(bid)
        if pool.queue.waiting and not pool.dispatching:
            pool.dispatching = True
            self.call_soon(lambda: self._dispatch(pool))

    def done(self, ex: Exchange) -> None:
        """The exchange ended: its slot is free."""
        route = ex.route
        if route is not None and route.slot:
            self._release(ex, route)

    def _dispatch(self, pool: PoolRuntime) -> None:
        """Free slots of the pool to its best waiters (called soon after a release, and on
        every tick)."""
        pool.dispatching = False
        q = pool.queue
        for bid in list(q.maxconn):
            row = self.table.get(bid)
            if row is None or not row.accepts_persistent:
                continue  # down: its waiters (pinned ones too) wait for another or time out
            new_ok = row.accepts_new

            def fits(w: Waiter[Exchange], bid: int = bid, new_ok: bool = new_ok) -> bool:
                return bid not in w.item.excluded and (new_ok or w.backend == bid)

            while q.waiting and q.has_room(bid):
                w = q.pop_for(bid, alive=lambda e: not e.finished, fits=fits)
                if w is None:
                    break
                ex = w.item
                route = ex.route
                assert route is not None
                self._acquire(ex, route, bid)
                ex.proceed(Selection(bid, "cookie" if w.backend else "policy"))
        self._recovered(pool)

    @staticmethod
    def _recovered(pool: PoolRuntime) -> None:
        if not pool.queue.waiting and pool.saturated:
            pool.saturated = False
            events.info("event=pool_recovered pool=%s shed_total=%d", pool.name,
                        pool.queue.counters.shed)

    def tick(self, now: float) -> None:
        """The janitor's sweep: waits that ran out, slots of exchanges cut without an end."""
        for ex in [e for e in self.holding if e.finished]:
            self.done(ex)
        for pool in self.pools.values():
            q = pool.queue
            for ex in q.expire(now):
                if not ex.finished:
                    ex.refuse(503, "queue timeout", b"Retry-After: %d\r\n" % pool.retry_after)
            if q.waiting:
                self._dispatch(pool)
            else:
                self._recovered(pool)

    # --- operator view ----------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        pools = {}
        for name, rt in self.pools.items():
            q = rt.queue
            c = q.counters
            pools[name] = {
                "backends": sorted(rt.selector.members or ()),
                "policy": rt.selector.scheduling.policy,
                "queue_depth": q.depth(), "queued": c.queued, "shed": c.shed,
                "timeouts": c.timeouts, "max_depth": c.max_depth,
                "slots_used": sum(q.used.values()),
                "slots": sum(q.maxconn.values()),
                "classes": {k: {"requests": v.requests, "queued": v.queued, "shed": v.shed,
                                "served": v.served, "waiting": q.depth_by_class().get(k, 0)}
                            for k, v in c.by_class.items()},
            }
        return {
            "services": [{"name": s.name, "vips": list(s.vips), "ports": list(s.ports),
                          "pool": s.pool, "routes": len(s.routes),
                          "requests": self.counters.get(s.name, ServiceCounters()).requests}
                         for s in self.router.services],
            "pools": pools,
            "classes": [{"name": c.name, "priority": c.priority, "weight": c.weight}
                        for c in self.classifier.classes],
        }


def merge_json(parts: list[dict[str, Any]]) -> dict[str, Any]:
    """The operator view of a node whose worker processes each report `Services.to_json()`:
    counters and depths summed, the lists (services, classes) from the first with their request
    counts summed."""
    if not parts:
        return {"services": [], "pools": {}, "classes": []}
    first = parts[0]
    services = [dict(s, requests=sum(
        next((x["requests"] for x in p["services"] if x["name"] == s["name"]), 0)
        for p in parts)) for s in first["services"]]
    pools: dict[str, Any] = {}
    for p in parts:
        for name, pool in p["pools"].items():
            into = pools.setdefault(name, {k: v for k, v in pool.items() if k != "classes"}
                                    | {"classes": {}} | {k: 0 for k in _SUMMED})
            for k in _SUMMED:
                into[k] = (max if k == "max_depth" else _add)(into[k], pool[k])
            for cname, c in pool["classes"].items():
                cc = into["classes"].setdefault(cname, dict.fromkeys(c, 0))
                for k, v in c.items():
                    cc[k] = cc.get(k, 0) + v
    return {"services": services, "pools": pools, "classes": first["classes"]}


_SUMMED = ("queue_depth", "queued", "shed", "timeouts", "max_depth", "slots_used", "slots")


def _add(a: int, b: int) -> int:
    return a + b
