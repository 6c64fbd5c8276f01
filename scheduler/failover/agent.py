"""The node agent: Failover/Synch Daemon and Elect Scheduler of patent 003, Fig. 9.

Runs in every node of an array (config with a VIP). It decides whether this node is the
scheduler (the pure `Election` decides, this shell gathers its inputs), pings the scheduler,
keeps a synced copy of the client table, and takes over when the pings stop.

The ping is the service's, not the kernel's (heartbeat.py): a UDP heartbeat answered
by this process on the admin port's number, saying whether it holds the role and whether its
proxy serves. A scheduler whose processes died, or whose proxy does not serve, stops passing.

Sync is pushed: the scheduler sends every assignment change to its peers *before* writing it to
its data plane, so a new scheduler's copy always holds every bucket a live flow may use, and no
flow is reset by a takeover (issue 4, point 4; the alternative, GLB's "second chance", would
need the old owner to be alive, which it may not be).
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

from dlba.config import Config, parse_host_port
from dlba.proxy_health import ProxyHealth
from scheduler.client_table import ClientTable, SyncError
from scheduler.dataplane import DataPlane, make_dataplane, remove_leftovers
from scheduler.failover.election import Decision, Election, PeerView, Role
from scheduler.failover.heartbeat import heartbeat_key, scheduler_alive
from scheduler.failover.heartbeat_udp import Pinger, SelfState, serve_heartbeat
from scheduler.scheduler_role import SchedulerRole
from scheduler.vip_owner import arp_probe, interface_of, link_running, mac_text

events = logging.getLogger("dlba.event")


def _probe(address: str, vip: str) -> set[str]:
    ifname, _ = interface_of(address)
    return {mac_text(m) for m in arp_probe(ifname, address, vip)}


STARTUP_GRACE_S = 3.0  # wait this long for every peer at start, so the highest IP wins
ASK_TIMEOUT_S = 0.3  # a peer on the same switch answers in well under a millisecond
SCHEDULER_ASK_S = 0.5  # how often a scheduler checks that no other one exists
ARP_PROBE_S = 1.0  # how often a server checks who answers ARP for the VIP


def admin_port(config: Config, index: int) -> int:
    node = config.nodes[index]
    return (node.admin or parse_host_port(config.admin.listen, default_host=node.address)).port


def admin_base(config: Config, index: int) -> str:
    return f"http://{config.nodes[index].address}:{admin_port(config, index)}"


class NodeAgent:
    def __init__(self, config: Config, name: str, token: str, dataplane: str = "ebpf",
                 proxy_health: Callable[[], ProxyHealth] | None = None) -> None:
        self.config = config
        self.name = name
        self.token = token
        self.dataplane = dataplane
        self.names = [n.name for n in config.nodes]
        self.index = self.names.index(name)
        self.address = config.node(name).address
        self.by_address = {n.address: n.name for n in config.nodes}
        self.addresses = {n.name: n.address for n in config.nodes}
        self.peers_follow: str | None = None  # the scheduler every answering peer follows
        self.election = Election(self.address, ping_failures=config.cluster.ping_failures)
        self.table = ClientTable(config.cluster.buckets, [n.weight for n in config.nodes])
        self.role: SchedulerRole | None = None
        self.pinger: Pinger | None = None
        self.key = heartbeat_key(config.read_secret())
        self.proxy_health = proxy_health or (lambda: ProxyHealth(True))
        self.heartbeat: asyncio.DatagramTransport | None = None
        self.proxy_ok = True  # the last check, for the log's transitions
        self.session: aiohttp.ClientSession | None = None
        self.task: asyncio.Task[None] | None = None
        self.headers = {"Authorization": f"Bearer {token}"}
        self.failovers = 0
        self.lock = asyncio.Lock()
        self.mac = ""
        self.peer_macs: dict[str, str] = {}  # MAC -> address, from the peers' answers
        self.last_ask = 0.0
        self.last_probe = 0.0
        self.pull_task: asyncio.Task[None] | None = None
        self.prepared: tuple[str, bytes, DataPlane] | None = None
        self.front: str | None = None  # our front interface's name, for its link state
        self.link_ok = True  # the last check, for the log's transitions
        self.fence_task: asyncio.Task[None] | None = None

    # --- what the node's admin API shows ------------------------------------------------------
    def role_name(self) -> str:
        return "scheduler" if self.role is not None else "server"

    def scheduler_name(self) -> str | None:
        addr = self.election.scheduler
        return self.by_address.get(addr) if addr else None

    def table_version(self) -> int:
        return self.role.table.version if self.role is not None else self.table.version

    def peer_view(self) -> dict[str, Any]:
        v = self.election.view()
        return {
            "name": self.name, "address": v.address, "candidate": v.candidate,
            "scheduler_alive": v.scheduler_alive, "is_scheduler": v.is_scheduler,
            "term": v.term, "scheduler": self.scheduler_name(), "mac": self.mac,
            "table_version": self.table_version(), "epoch": self.current_table().epoch,
        }

    def current_table(self) -> ClientTable:
        return self.role.table if self.role is not None else self.table

    def reconfigure(self, config: Config) -> None:
        """A committed config: node weights, port rules, deny list, timers (members and the
        VIP were checked unchanged by the stage)."""
        self.config = config
        self.election.threshold = config.cluster.ping_failures
        if self.role is not None:
            self.role.reconfigure(config)

    def metrics(self) -> Iterator[Metric]:
        """The array's own families for /metrics: failovers, role, client table, data plane."""
        node = self.name
        c = CounterMetricFamily("dlba_failovers", "Takeovers of the scheduler role by this node",
                                labels=["node"])
        c.add_metric([node], self.failovers)
        yield c
        g = GaugeMetricFamily("dlba_scheduler", "1 while this node is the scheduler",
                              labels=["node"])
        g.add_metric([node], 1 if self.role is not None else 0)
        yield g
        g = GaugeMetricFamily("dlba_client_table_version", "Client table version seen here",
                              labels=["node"])
        g.add_metric([node], self.table_version())
        yield g
        role = self.role
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
            if i < len(self.names):
                c.add_metric([node, self.names[i]], n)
        yield c
        c = CounterMetricFamily("dlba_dataplane_drops", "Packets dropped by the data plane",
                                labels=["scheduler", "reason"])
        for reason, n in sorted(counters.drops.items()):
            c.add_metric([node, reason], n)
        yield c

    # --- life cycle ---------------------------------------------------------------------------
    async def clean_stale(self) -> None:
        """Remove what a dead process of this node left on `front` before this one serves."""
        vip = self.config.cluster.vip
        assert vip is not None
        try:
            ifname, _ = await asyncio.to_thread(interface_of, self.address)
            removed = await asyncio.to_thread(remove_leftovers, ifname, vip)
        except (OSError, LookupError) as e:
            events.warning("event=stale_check_failed node=%s reason=%r", self.name, str(e))
            return
        if removed:
            events.warning("event=stale_dataplane_removed node=%s removed=%s", self.name,
                           ",".join(removed))

    def self_state(self) -> SelfState:
        """What our heartbeat answer says, read when a ping arrives."""
        return SelfState(self.name, self.election.view().term,
                         self.election.role is Role.SCHEDULER and self.role is not None,
                         self.proxy_health().healthy)

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0))
        self.pinger = Pinger(self.key)
        self.heartbeat = await serve_heartbeat(
            self.address, admin_port(self.config, self.index), self.key, self.self_state)
        await self._prepare()
        self.task = asyncio.ensure_future(self._run())

    async def _prepare(self) -> None:
        """Load (verify) the data plane and find the front interface now, so that a takeover
        only has to attach it: the verifier's time is not added to the outage."""
        vip = self.config.cluster.vip
        assert vip is not None
        try:
            ifname, mac = await asyncio.to_thread(interface_of, self.address)
            self.front = ifname
            self.prepared = (ifname, mac, await asyncio.to_thread(
                make_dataplane, ifname, vip, self.config.cluster.buckets, self.dataplane))
        except (OSError, LookupError) as e:
            events.warning("event=dataplane_not_prepared node=%s reason=%r", self.name, str(e))

    async def stop(self) -> None:
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self.task
        if self.role is not None:
            await self.role.stop()
            self.role = None
        if self.prepared is not None:
            with contextlib.suppress(Exception):
                self.prepared[2].close()
            self.prepared = None
        if self.pinger is not None:
            self.pinger.close()
        if self.heartbeat is not None:
            self.heartbeat.close()
        if self.session is not None:
            await self.session.close()

    # --- the daemon ---------------------------------------------------------------------------
    async def _run(self) -> None:
        interval = self.config.cluster.ping_interval_s
        started = time.monotonic()
        while True:
            t0 = time.monotonic()
            try:
                await self._step(started)
            except Exception:  # one bad round must not end failover for good
                events.exception("event=agent_error node=%s", self.name)
            # A fixed period: a ping that timed out already waited its share of it.
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))

    async def _check_own_proxy(self, now: float) -> None:
        health = self.proxy_health()
        if health.healthy != self.proxy_ok:
            self.proxy_ok = health.healthy
            if health.healthy:
                events.warning("event=proxy_healthy node=%s", self.name)
            else:
                events.warning("event=proxy_unhealthy node=%s reason=%r", self.name,
                               health.reason)
        if self.election.on_service_health(health.healthy, now) is Decision.STAND_DOWN:
            await self._stand_down()

    async def _check_own_link(self, now: float) -> bool:
        """Our front link: down (admin or carrier), a scheduler stands down at once, and
        nothing else is worth doing this round."""
        up = self.front is None or link_running(self.front)
        if up != self.link_ok:
            self.link_ok = up
            events.warning("event=front_link_%s node=%s interface=%s", "up" if up else "down",
                           self.name, self.front)
        if self.election.on_link_state(up, now) is Decision.STAND_DOWN:
            await self._stand_down()
        return up

    async def _step(self, started: float) -> None:
        now = time.monotonic()
        if not await self._check_own_link(now):
            return
        await self._check_own_proxy(now)
        role = self.election.role
        if role is Role.SCHEDULER:
            # Two schedulers can only meet after a partition heals: ask, the older term yields.
            # A held ARP answerer that heard the network asks at once (see the fence rules).
            if now - self.last_ask < SCHEDULER_ASK_S and not self.election.confirm_wanted:
                return
            self.last_ask = now
            views = await self._ask_peers()
            await self._act(self.election.on_peer_views(views, now))
            return
        if role in (Role.STARTING, Role.SUSPECTING):
            views = await self._ask_peers()
            followed = self.peers_follow
            if role is Role.STARTING and followed and not any(v.is_scheduler for v in views):
                # A peer whose pings to its scheduler work vouches for it, even if that
                # scheduler's status channel does not answer us (a stuck daemon, a firewall).
                if self.election.on_scheduler_seen(followed, now) is Decision.STAY_SERVER:
                    events.warning("event=following node=%s scheduler=%s via=peers", self.name,
                                   self.by_address.get(followed, followed))
                    self._pull_soon()
                return
            if role is Role.STARTING and not any(v.is_scheduler for v in views):
                answered = len(views) == len(self.names) - 1
                if not answered and now - started < STARTUP_GRACE_S:
                    return
            previous = self.election.scheduler
            decision = self.election.on_peer_views(views, now)
            if decision is Decision.TAKE_OVER:
                await self._take_over(previous)
            elif self.election.role is Role.SERVER:
                await self._sync_from_scheduler()
            return
        scheduler = self.election.scheduler
        assert scheduler is not None
        assert self.pinger is not None
        target = self.by_address.get(scheduler, "")
        answer = None
        if target in self.names:
            answer = await self.pinger.ping(
                scheduler, admin_port(self.config, self.names.index(target)),
                self.config.cluster.ping_interval_s)
        ok = scheduler_alive(answer, target)
        if self.election.on_ping_result(ok, time.monotonic()) is Decision.ELECT:
            events.warning(
                "event=scheduler_unreachable node=%s scheduler=%s pings_failed=%d", self.name,
                self.by_address.get(scheduler, scheduler), self.election.failures,
            )
        elif ok and now - self.last_probe >= ARP_PROBE_S:
            self.last_probe = now
            await self._probe_vip_owner()

    async def _probe_vip_owner(self) -> None:
        """Who answers ARP for the VIP (the patent's way to learn the scheduler): a node that
        answers but is not the one we follow is a scheduler we did not know of."""
        vip = self.config.cluster.vip
        assert vip is not None
        try:
            macs = await asyncio.to_thread(_probe, self.address, vip)
        except OSError:
            return
        for mac in macs:
            addr = self.peer_macs.get(mac)
            if addr is not None and addr != self.election.scheduler:
                events.warning("event=vip_answered_by node=%s other=%s", self.name,
                               self.by_address.get(addr, addr))
                if self.election.on_scheduler_seen(addr, time.monotonic()) is not Decision.KEEP:
                    self._pull_soon()

    async def _ask_peers(self) -> list[PeerView]:
        async def ask(i: int) -> PeerView | None:
            assert self.session is not None
            try:
                async with self.session.get(
                    admin_base(self.config, i) + "/peer", headers=self.headers,
                    timeout=aiohttp.ClientTimeout(total=ASK_TIMEOUT_S),
                ) as r:
                    if r.status != 200:
                        return None
                    d = await r.json()
                    if d.get("mac"):
                        self.peer_macs[str(d["mac"])] = str(d["address"])
                    sched = self.addresses.get(str(d.get("scheduler")))
                    if d.get("scheduler_alive") and sched is not None:
                        followed.append(sched)
                    return PeerView(d["address"], bool(d["candidate"]),
                                    bool(d["scheduler_alive"]), bool(d["is_scheduler"]),
                                    int(d["term"]))
            except (TimeoutError, aiohttp.ClientError, KeyError, ValueError):
                return None

        # The scheduler we suspect does not answer pings: asking it would only add a timeout
        # to the outage (the patent's candidates ask the peers they can reach).
        skip = {self.index}
        if self.election.role is Role.SUSPECTING and self.election.scheduler in self.by_address:
            skip.add(self.names.index(self.by_address[self.election.scheduler]))
        followed: list[str] = []
        found = await asyncio.gather(*(ask(i) for i in range(len(self.names)) if i not in skip))
        self.peers_follow = followed[0] if followed and len(set(followed)) == 1 else None
        return [v for v in found if v is not None]

    async def _act(self, decision: Decision) -> None:
        """What a scheduler does with the fence's and the election's verdicts."""
        role = self.role
        if decision is Decision.STAND_DOWN and role is not None:
            await self._stand_down()
        elif decision is Decision.HOLD_ARP and role is not None and role.vip_owner is not None:
            events.warning("event=peers_silent node=%s action=hold_arp", self.name)
            role.vip_owner.hold(True)
        elif decision is Decision.RESUME_ARP and role is not None and role.vip_owner is not None:
            role.vip_owner.hold(False)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(role.vip_owner.announce, role.mac)

    def _on_peer_heartbeats(self, views: list[PeerView]) -> None:
        """The scheduler's round of heartbeats to its peers (from the role's own task)."""
        decision = self.election.on_peer_heartbeats(views, time.monotonic())
        if decision is Decision.KEEP:
            return
        previous = self.fence_task

        async def act() -> None:
            if previous is not None:  # in order: a resume never overtakes a stand-down
                with contextlib.suppress(Exception):
                    await previous
            await self._act(decision)

        # Not awaited here: standing down stops the very task that called us.
        self.fence_task = asyncio.ensure_future(act())

    def _on_arp_held(self) -> None:
        self.election.on_arp_request_held(time.monotonic())

    async def _take_over(self, previous: str | None) -> None:
        lost = self.by_address.get(previous or "")
        async with self.lock:
            self.failovers += 1
            events.warning(
                "event=take_over node=%s term=%d table_version=%d", self.name,
                self.election.term, self.table.version,
            )
            prepared, self.prepared = self.prepared, None
            role = SchedulerRole(
                self.config, self.name, self.token, dataplane=self.dataplane, synced=self.table,
                prepared=prepared,
                epoch=self.election.term, push=self._push_to_peers,
                failed=[self.names.index(lost)] if lost in self.names else [],
                macs={self.by_address[a]: m for m, a in self.peer_macs.items()
                      if a in self.by_address},
                heartbeat_key=self.key, on_heartbeats=self._on_peer_heartbeats,
                on_arp_held=self._on_arp_held,
            )
            self.role = role
            await role.start()

    async def _stand_down(self) -> None:
        async with self.lock:
            role, self.role = self.role, None
            if role is not None:
                self.table = role.table
                await role.stop()
            events.warning("event=stand_down node=%s scheduler=%s", self.name,
                           self.scheduler_name())
        self._pull_soon()
        await self._prepare()

    # --- table sync ---------------------------------------------------------------------------
    async def _push_to_peers(self, body: dict[str, Any]) -> None:
        """Send one change (or the whole table) to every peer before the kernel uses it."""
        assert self.session is not None

        async def push(i: int) -> None:
            assert self.session is not None
            with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError):
                async with self.session.post(
                    admin_base(self.config, i) + "/sync", json=body, headers=self.headers,
                    timeout=aiohttp.ClientTimeout(total=0.3),
                ) as r:
                    await r.read()

        # Only to live peers: a dead one would add its timeout to every change.
        table = self.role.table if self.role is not None else self.table
        await asyncio.gather(*(push(i) for i in range(len(self.names))
                               if i != self.index and table.is_live(i)))

    def apply_sync(self, body: dict[str, Any]) -> dict[str, Any]:
        """A pushed change from the scheduler (or a pulled snapshot); version mismatches ask for
        the whole table."""
        if self.role is not None:
            return {"ok": False, "reason": "this node is the scheduler"}
        epoch = int(body["epoch"])
        if epoch < self.election.term:
            # A scheduler of an older term that has not yet seen it was replaced.
            return {"ok": False, "reason": f"term {epoch} is older than {self.election.term}"}
        try:
            if body.get("assignments") is not None:
                self.table.apply_snapshot(int(body["version"]), body["assignments"], epoch=epoch)
            else:
                changes = [(int(b), None if n is None else int(n)) for b, n in body["changes"]]
                self.table.apply_delta(int(body["from_version"]), int(body["version"]), changes,
                                       epoch=epoch)
        except SyncError as e:
            self._pull_soon()  # we missed something: take the whole table
            return {"ok": False, "reason": str(e), "version": self.table.version,
                    "epoch": self.table.epoch}
        live = body.get("live")
        if isinstance(live, list) and len(live) == self.table.node_count:
            # Liveness travels too, so a takeover never rebalances onto a node known dead.
            now = time.monotonic()
            for i, up in enumerate(live):
                if up and not self.table.is_live(i):
                    self.table.node_joined(i, now)
                elif not up and self.table.is_live(i):
                    self.table.node_failed(i, now)
        if "panic" in body:  # after the liveness: a node's failure clears a pin to it
            pin = body["panic"]
            self.table.panic_scheduler = (
                pin if isinstance(pin, int) and 0 <= pin < self.table.node_count else None)
        return {"ok": True, "version": self.table.version}

    def _pull_soon(self) -> None:
        if self.pull_task is None or self.pull_task.done():
            self.pull_task = asyncio.ensure_future(self._sync_from_scheduler())

    async def _sync_from_scheduler(self) -> None:
        """Pull the whole table once when we start following a scheduler."""
        addr = self.election.scheduler
        if addr is None or addr not in self.by_address or self.session is None:
            return
        i = self.names.index(self.by_address[addr])
        with contextlib.suppress(aiohttp.ClientError, asyncio.TimeoutError, ValueError, KeyError):
            async with self.session.get(
                admin_base(self.config, i) + "/table", params={"indexes": "1"},
                headers=self.headers,
            ) as r:
                if r.status == 200:
                    d = await r.json()
                    self.apply_sync({"epoch": d["epoch"], "version": d["version"],
                                     "assignments": d["indexes"], "live": d.get("live"),
                                     "panic": d.get("panic")})

    # --- admin routes -------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        async def peer(_: web.Request) -> web.Response:
            return web.json_response(self.peer_view())

        async def sync(request: web.Request) -> web.Response:
            try:
                body = await request.json()
                return web.json_response(self.apply_sync(body))
            except (ValueError, KeyError, TypeError) as e:
                return web.json_response({"ok": False, "reason": str(e)}, status=400)

        def not_scheduler() -> web.Response:
            return web.json_response(
                {"error": "not the scheduler", "scheduler": self.scheduler_name()}, status=409
            )

        async def table(request: web.Request) -> web.Response:
            if self.role is None:
                return not_scheduler()
            d = self.role.table_json()
            if request.query.get("indexes"):
                t = self.role.table
                d["indexes"] = t.assignments()
                d["live"] = [t.is_live(i) for i in range(t.node_count)]
                d["panic"] = t.panic_scheduler
            return web.json_response(d)

        async def summary(_: web.Request) -> web.Response:
            if self.role is None:
                return not_scheduler()
            return web.json_response(self.role.summary_json())

        async def panic(request: web.Request) -> web.Response:
            if self.role is None:
                return not_scheduler()
            self.role.panic(request.method == "POST")
            events.warning("event=admin_action node=%s action=panic_%s peer=%s", self.name,
                           "on" if request.method == "POST" else "off", request.remote)
            await self.role.push_now()
            return web.json_response({"panic": request.method == "POST",
                                      "table_version": self.role.table.version})

        async def node_action(request: web.Request) -> web.Response:
            if self.role is None:
                return not_scheduler()
            name, action = request.match_info["name"], request.match_info["action"]
            if name not in self.names or action not in ("enable", "disable"):
                return web.json_response({"error": "unknown node or action"}, status=404)
            self.role.set_node_enabled(name, action == "enable")
            events.warning("event=admin_action node=%s action=node_%s target=%s peer=%s",
                           self.name, action, name, request.remote)
            return web.json_response(self.role.node_rows()[self.names.index(name)])

        app.router.add_post("/nodes/{name}/{action}", node_action)
        app.router.add_get("/peer", peer)
        app.router.add_post("/sync", sync)
        app.router.add_get("/table", table)
        app.router.add_get("/summary", summary)
        app.router.add_post("/panic", panic)
        app.router.add_delete("/panic", panic)
