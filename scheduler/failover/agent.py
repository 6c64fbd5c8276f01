"""The node agent: Failover/Synch Daemon and Elect Scheduler of patent 003, Fig. 9.

Runs in every node of an array (config with a VIP). It decides whether this node is the
scheduler (the pure `Election` decides, this shell gathers its inputs), pings the scheduler,
keeps a synced copy of the client table (table_sync.py), and takes over when the pings stop.

The ping is the service's, not the kernel's (heartbeat.py): a UDP heartbeat answered
by this process on the admin port's number, saying whether it holds the role and whether its
proxy serves. A scheduler whose processes died, or whose proxy does not serve, stops passing.
Asking the peers is peers.py; the admin routes and metrics families are routes.py.
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
from prometheus_client.core import Metric

from dlba.config import Config, NodeConfig
from dlba.proxy.proxy_health import ProxyHealth
from scheduler.client_table import ClientTable
from scheduler.failover import front
from scheduler.failover.election import Decision, Election, PeerView, Role
from scheduler.failover.fence import Fence
from scheduler.failover.heartbeat import heartbeat_key, scheduler_alive
from scheduler.failover.heartbeat_udp import Pinger, SelfState, serve_heartbeat
from scheduler.failover.peers import ask_peers, peer_json
from scheduler.failover.routes import add_routes, agent_metrics
from scheduler.failover.self_checks import SelfChecks
from scheduler.failover.sync_messages import SyncMessage
from scheduler.failover.table_sync import apply_message, pull_snapshot, push_message
from scheduler.scheduler_role import SchedulerRole

events = logging.getLogger("dlba.event")


STARTUP_GRACE_S = 3.0  # wait this long for every peer at start, so the highest IP wins
SCHEDULER_ASK_S = 0.5  # how often a scheduler checks that no other one exists
ARP_PROBE_S = 1.0  # how often a server checks who answers ARP for the VIP


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
        self.table = ClientTable(config.cluster.buckets, [n.weight for n in config.nodes],
                                 names=[n.name for n in config.nodes])
        self.role: SchedulerRole | None = None
        self.pinger: Pinger | None = None
        self.key = heartbeat_key(config.read_secret())
        self.checks = SelfChecks(name, proxy_health or (lambda: ProxyHealth(True)))
        self.heartbeat: asyncio.DatagramTransport | None = None
        self.session: aiohttp.ClientSession | None = None
        self.task: asyncio.Task[None] | None = None
        self.stopping = False  # a cancellation lost in a library still ends the loop
        self.headers = {"Authorization": f"Bearer {token}"}
        self.failovers = 0
        self.lock = asyncio.Lock()
        self.mac = ""
        self.peer_macs: dict[str, str] = {}  # MAC -> address, from the peers' answers
        self.last_ask = 0.0
        self.last_probe = 0.0
        self.pull_task: asyncio.Task[None] | None = None
        self.prepared: front.Prepared | None = None
        self.fence = Fence(name, lambda: self.role, self._stand_down)
        self.lo_vips: list[str] = []  # the VIP addresses this process put (or found) on lo
        self.departed: list[NodeConfig] = []  # members pushes removed
        self.outsider = False  # a peer's config does not name this node (see _elect)
        self.lo_task: asyncio.Future[None] | None = None

    # --- what the node's admin API shows ------------------------------------------------------
    def role_name(self) -> str:
        return "scheduler" if self.role is not None else "server"

    def scheduler_name(self) -> str | None:
        addr = self.election.scheduler
        return self.by_address.get(addr) if addr else None

    def table_version(self) -> int:
        return self.current_table().version

    def peer_view(self) -> dict[str, Any]:
        return peer_json(self.name, self.election.view(), self.scheduler_name(), self.mac,
                         self.table_version(), self.current_table().epoch, self.names)

    def current_table(self) -> ClientTable:
        return self.role.table if self.role is not None else self.table

    def reconfigure(self, config: Config) -> None:
        """A committed config: node weights, port rules, deny list, timers (members and the
        VIP were checked unchanged by the stage)."""
        # Members removed, remembered so that a takeover while they still drain keeps them
        # (scheduler/membership.py); a member added back takes its place again.
        kept = {n.name for n in config.nodes}
        self.departed = list({n.name: n for n in [*self.departed, *self.config.nodes]
                              if n.name not in kept}.values())
        self.config = config
        self.election.threshold = config.cluster.ping_failures
        # Table numbers are slots kept by name (membership.py): a new member takes the next.
        # `names`/`index` are positions in the config ([[nodes]] order), not table numbers.
        self.names = [n.name for n in config.nodes]
        self.index = self.names.index(self.name) if self.name in self.names else self.index
        self.by_address.update({n.address: n.name for n in config.nodes})
        self.addresses = {n.name: n.address for n in config.nodes}
        for n in config.nodes:
            if n.name not in self.table.names:
                self.table.add_node(n.weight, n.name)
        self.lo_task = asyncio.ensure_future(self.hold_vips_on_lo())
        if self.role is not None:
            self.role.reconfigure(config)

    async def hold_vips_on_lo(self) -> None:
        self.lo_vips = await front.hold_vips_on_lo(self.name, self.config.services,
                                                   self.lo_vips)

    def metrics(self) -> Iterator[Metric]:
        return agent_metrics(self)

    def routes(self, app: web.Application) -> None:
        add_routes(self, app)

    # --- life cycle ---------------------------------------------------------------------------
    async def clean_stale(self) -> None:
        """Remove what a dead process of this node left on `front` before this one serves."""
        vip = self.config.cluster.vip
        assert vip is not None
        await front.clean_stale(self.name, self.address, vip)

    def self_state(self) -> SelfState:
        """What our heartbeat answer says, read when a ping arrives."""
        return SelfState(self.name, self.election.view().term,
                         self.election.role is Role.SCHEDULER and self.role is not None,
                         self.checks.proxy_health().healthy)

    async def start(self) -> None:
        self.session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1.0))
        self.pinger = Pinger(self.key)
        await self.hold_vips_on_lo()
        self.heartbeat = await serve_heartbeat(
            self.address, self.config.admin_endpoint(self.index).port, self.key, self.self_state)
        await self._prepare()
        self.task = asyncio.ensure_future(self._run())

    async def _prepare(self) -> None:
        """The data plane loaded before it is needed (front.prepare_now)."""
        vip = self.config.cluster.vip
        assert vip is not None
        prepared = await front.prepare_now(self.name, self.address, vip,
                                           self.config.cluster.buckets, self.dataplane)
        if prepared is not None:
            self.prepared = prepared
            self.checks.front = prepared[0]

    async def stop(self) -> None:
        self.stopping = True
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
        while not self.stopping:
            t0 = time.monotonic()
            try:
                await self._step(started)
            except Exception:  # one bad round must not end failover for good
                events.exception("event=agent_error node=%s", self.name)
            # A fixed period: a ping that timed out already waited its share of it.
            await asyncio.sleep(max(0.0, interval - (time.monotonic() - t0)))

    async def _check_self(self, now: float) -> bool:
        """Our front link, then our proxy: a scheduler failing either stands down; with the
        link down nothing else is worth doing this round."""
        up, decision = self.checks.link(self.election, now)
        if decision is Decision.STAND_DOWN:
            await self._stand_down()
        if not up:
            return False
        if self.checks.proxy(self.election, now) is Decision.STAND_DOWN:
            await self._stand_down()
        return True

    async def _step(self, started: float) -> None:
        now = time.monotonic()
        if not await self._check_self(now):
            return
        role = self.election.role
        if role is Role.SCHEDULER:
            # Two schedulers can only meet after a partition heals: ask, the older term yields.
            # A held ARP answerer that heard the network asks at once (see the fence rules).
            if now - self.last_ask < SCHEDULER_ASK_S and not self.election.confirm_wanted:
                return
            self.last_ask = now
            views = await self._ask_peers()
            await self.fence.act(self.election.on_peer_views(views, now))
        elif role in (Role.STARTING, Role.SUSPECTING):
            await self._elect(role, started, now)
        else:
            await self._ping_scheduler(now)

    async def _elect(self, role: Role, started: float, now: float) -> None:
        """Starting, or the scheduler's pings failed: ask the peers, then follow or take over."""
        views = await self._ask_peers()
        followed = self.peers_follow
        if self.outsider:
            # A peer's config leaves us out (removed and draining, or not yet added): follow
            # the scheduler they name, never take over.
            seen = next((v.address for v in views if v.is_scheduler), followed)
            if seen and self.election.on_scheduler_seen(seen, now) is Decision.STAY_SERVER:
                events.info("event=following node=%s scheduler=%s via=peers", self.name,
                            self.by_address.get(seen, seen))
                self._pull_soon()
            return
        if role is Role.STARTING and followed and not any(v.is_scheduler for v in views):
            # A peer whose pings to its scheduler work vouches for it, even if that
            # scheduler's status channel does not answer us (a stuck daemon, a firewall).
            if self.election.on_scheduler_seen(followed, now) is Decision.STAY_SERVER:
                events.info("event=following node=%s scheduler=%s via=peers", self.name,
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

    async def _ping_scheduler(self, now: float) -> None:
        """A server: one heartbeat to the scheduler; now and then, who answers ARP for the VIP."""
        scheduler = self.election.scheduler
        assert scheduler is not None
        assert self.pinger is not None
        target = self.by_address.get(scheduler, "")
        answer = None
        if target in self.names:
            answer = await self.pinger.ping(
                scheduler, self.config.admin_endpoint(self.names.index(target)).port,
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
            macs = await asyncio.to_thread(front.vip_answerers, self.address, vip)
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
        assert self.session is not None
        # The scheduler we suspect does not answer pings: asking it would only add a timeout
        # to the outage (the patent's candidates ask the peers they can reach).
        skip = {self.index}
        if self.election.role is Role.SUSPECTING and self.election.scheduler in self.by_address:
            skip.add(self.names.index(self.by_address[self.election.scheduler]))
        found = await ask_peers(self.session, self.config,
                                [i for i in range(len(self.names)) if i not in skip],
                                self.headers, self.name)
        self.peer_macs.update(found.macs)
        self.peers_follow = found.follows
        if found.outsider != self.outsider:
            self.outsider = found.outsider
            events.warning("event=%s node=%s", "not_a_member" if found.outsider else "member",
                           self.name)
        return found.views

    def _on_peer_heartbeats(self, views: list[PeerView]) -> None:
        """The scheduler's round of heartbeats to its peers (from the role's own task)."""
        decision = self.election.on_peer_heartbeats(views, time.monotonic())
        if decision is not Decision.KEEP:
            self.fence.act_soon(decision)

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
                failed=[self.table.names.index(lost)] if lost in self.table.names else [],
                macs={self.by_address[a]: m for m, a in self.peer_macs.items()
                      if a in self.by_address},
                heartbeat_key=self.key, on_heartbeats=self._on_peer_heartbeats,
                on_arp_held=self._on_arp_held, departed=self.departed,
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
    async def _push_to_peers(self, msg: SyncMessage) -> bool:
        """Send one change (or the whole table) to every peer before the kernel uses it;
        False when a peer did not answer."""
        assert self.session is not None
        # Only to live peers: a dead one would add its timeout to every change.
        table = self.current_table()
        live = {n for i, n in enumerate(table.names) if table.is_live(i)}
        urls = [self.config.admin_url(i) for i, n in enumerate(self.names)
                if i != self.index and n in live]
        return await push_message(self.session, urls, msg, self.headers)

    def apply_sync(self, msg: SyncMessage) -> dict[str, Any]:
        """A pushed change from the scheduler (or a pulled snapshot); a follower that missed a
        change pulls the whole table."""
        if self.role is not None:
            return {"ok": False, "reason": "this node is the scheduler"}
        answer, missed = apply_message(self.table, msg, term=self.election.term,
                                       now=time.monotonic())
        if missed:
            self._pull_soon()
        return answer

    def _pull_soon(self) -> None:
        if self.pull_task is None or self.pull_task.done():
            self.pull_task = asyncio.ensure_future(self._sync_from_scheduler())

    async def _sync_from_scheduler(self) -> None:
        """Pull the whole table once when we start following a scheduler."""
        addr = self.election.scheduler
        if addr is None or addr not in self.by_address or self.session is None:
            return
        i = self.names.index(self.by_address[addr])
        snapshot = await pull_snapshot(self.session, self.config.admin_url(i), self.headers)
        if snapshot is not None:
            self.apply_sync(snapshot)
