"""The scheduler role (patent 003, Fig. 9): client table + status sweep + data plane + VIP.

Held by exactly one node of the array. It owns the pure tables (client table, DLBA server status
table) and drives the I/O shells around them: the data plane that forwards by the table, the
sweep that fills the status table from every node's admin API, and the VIP's ARP answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import aiohttp

from dlba.config import Config, NodeConfig
from scheduler.client_table import ClientTable
from scheduler.dataplane import DataPlane, counters_json, make_dataplane, port_rules, vip_map
from scheduler.failover.server_heartbeats import HEARTBEAT, SWEEP
from scheduler.failover.sync_messages import SyncMessage
from scheduler.failover.table_sync import message_for, snapshot_of
from scheduler.membership import drained, endpoint, next_members, slot_members, tombstones
from scheduler.move_guard import busy_moves, with_kept
from scheduler.server_status_table import ServerStatusTable
from scheduler.server_watch import OnHeartbeats, first_visit, heartbeat_servers, watch_state
from scheduler.status_sweep import NodeAnswered, NodeFailed, NodeRecovered, SweepEvent
from scheduler.status_sweep_http import StatusFetcher, run_sweep
from scheduler.vip_owner import VipOwner, interface_of, mac_text

events = logging.getLogger("dlba.event")
MAINTENANCE_S = 1.0
Push = Callable[[SyncMessage], Awaitable[bool]]  # False: a peer did not answer


class SchedulerRole:
    def __init__(
        self, config: Config, self_name: str, token: str, *, dataplane: str = "ebpf",
        synced: ClientTable | None = None, epoch: int = 1, push: Push | None = None,
        failed: list[int] | None = None, macs: dict[str, str] | None = None,
        prepared: tuple[str, bytes, DataPlane] | None = None,
        heartbeat_key: bytes | None = None, on_heartbeats: OnHeartbeats | None = None,
        on_arp_held: Callable[[], None] | None = None,
        departed: Sequence[NodeConfig] = (),
    ) -> None:
        assert config.cluster.vip is not None
        self.config = config
        self.vip = config.cluster.vip
        # Members in slot order (membership.py): the config's nodes at first, then kept by name.
        self.members = list(config.nodes)
        self.names = [n.name for n in config.nodes]
        self.gone: frozenset[int] = frozenset()  # tombstones: removed members that drained
        self.token = token
        self.prefer = dataplane
        self.epoch = epoch
        self.self_name = self_name
        self.ifname = ""
        self.mac = b""
        # The MACs a takeover already knows (from the peers), so forwarding starts at once.
        self.status = ServerStatusTable(config.nodes, macs=macs)
        size = config.cluster.buckets
        # A takeover starts from the synced table and the one node known dead (the old
        # scheduler); waiting for a first sweep would add its timeouts to the outage.
        self.takeover = synced is not None and synced.version > 0
        self.known_failed = list(failed or [])
        # Panic mode pins the scheduler box (patent 003): it travels with the synced table, and
        # a takeover keeps it, pinned to the new box, until an operator clears it.
        self.panic_kept = synced is not None and synced.panic_scheduler is not None
        self.table = synced or ClientTable(size, self.status.table_weights(), live=[
            n.name == self_name for n in config.nodes], names=self.names)
        # A synced copy's slots by name: removed members that still drain (`departed`: the
        # agent remembers who they were) stay with weight 0; unknown ones are cut at start().
        known, unknown = slot_members(self.table.names, config.nodes, departed)
        self.members = next_members(config.nodes, known, self.table.counts())
        self.unknown = frozenset(i for i in unknown if i < len(self.members))
        self._adopt_members()
        self.status = ServerStatusTable(self.members, macs=macs)
        for i, m in enumerate(self.members):  # a removed member's is 0 (next_members)
            self.table.set_weight(i, m.weight)
        self.index = self.names.index(self_name)
        # Until start() knows who is live: the lost scheduler (a takeover's) is failed.
        self.sweep, self.liveness, self.heartbeats = watch_state(
            config.cluster, len(self.names), self.index, self.known_failed)
        self.dataplane: DataPlane | None = None
        self.prepared = prepared
        self.vip_owner: VipOwner | None = None
        self._old_vips = vip_map(config)
        self.stop_event = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []
        self.monitors: list[asyncio.Task[None]] = []
        self.session: aiohttp.ClientSession | None = None
        self.push = push
        self.push_lock = asyncio.Lock()
        self.pending_push: asyncio.Future[None] | None = None
        self.pushed_version = -1
        self.pushed_panic: int | None = None
        self.peers_version = -1  # the table's version the peers were last sent
        self.unsynced = False  # a peer did not answer the last push
        self.pushed_macs: dict[int, str] = {}
        self.pushed_assignment: list[int | None] = []
        self.snapshot_ns = 0  # when the last-access times the last rebalance used were read
        self.moves_total = 0  # buckets that changed owner in the kernel's table
        self.started_at = time.time()
        # The heartbeat to every server (None: the sweep alone judges), and the fence's input.
        self.heartbeat_key = heartbeat_key
        self.on_heartbeats = on_heartbeats
        self.on_arp_held = on_arp_held

    # --- life cycle ---------------------------------------------------------------------------
    async def start(self) -> None:
        prepared, self.prepared = self.prepared, None
        if prepared is not None:
            self.ifname, self.mac, dp = prepared
        else:
            # pyroute2's synchronous API runs its own event loop: it runs in a thread here.
            address = self.config.node(self.self_name).address
            self.ifname, self.mac = await asyncio.to_thread(interface_of, address)
            dp = make_dataplane(self.ifname, self.vip, self.config.cluster.buckets, self.prefer)
        self.status.set_mac(self.index, mac_text(self.mac))
        vips = vip_map(self.config)
        self.vip_owner = VipOwner(self.ifname, self.vip, self.on_arp_held, list(vips))
        now = time.monotonic()
        self.session = aiohttp.ClientSession()
        fetch = self._fetcher()
        for i in self.unknown:  # members nobody here knows: cut (tombstones from now on)
            self.table.node_failed(i, now)
        self.gone = tombstones(self.config.nodes, self.members, self.table.counts())
        if self.takeover:
            for i in self.known_failed:
                self.status.mark_failed(i)
                if self.table.is_live(i):
                    self.table.node_failed(i, now)
        else:
            await first_visit(fetch, self.status, self.table, self.index, now)
        # Nodes already failed (first visit, synced table, the lost scheduler): their next
        # sweep answer and heartbeat answers bring them back, nothing else.
        self._new_monitors()
        self.table.begin_term(self.epoch, now, takeover=self.takeover)
        if self.panic_kept:
            self.table.panic_scheduler = self.index
            self.status.panic()
            events.warning("event=panic_kept node=%s", self.self_name)
        dp.install()
        self.dataplane = dp
        dp.set_self(self.index, self.mac)
        dp.set_port_rules(*port_rules(self.config, self.names))
        dp.set_deny(list(self.config.cluster.deny))
        dp.set_vips(vips)
        await self.push_now()
        self.vip_owner.take(self.mac, asyncio.get_running_loop())
        await asyncio.to_thread(self.vip_owner.announce, self.mac)
        self.tasks = [asyncio.ensure_future(self._maintenance())]
        self._monitor(fetch)
        events.info(
            "event=scheduler_started node=%s vip=%s dataplane=%s buckets=%d vips=%d live=%s",
            self.names[self.index], self.vip, type(dp).__name__, self.table.size, len(vips),
            ",".join(n for i, n in enumerate(self.names) if self.table.is_live(i)),
        )

    def _fetcher(self) -> StatusFetcher:
        assert self.session is not None
        return StatusFetcher(self.session, [
            None if i in self.gone else f"http://{e.host}:{e.port}/status"
            for i, e in enumerate(endpoint(self.config, m) for m in self.members)],
            self.token, timeout_s=1.0)

    def _monitor(self, fetch: StatusFetcher) -> None:
        """(Re)start the sweep and the heartbeats over the current members."""
        for t in self.monitors:
            t.cancel()
        self.monitors = [asyncio.ensure_future(run_sweep(
            self.sweep, self.status, fetch, stop=self.stop_event, on_event=self._on_sweep))]
        if self.heartbeat_key is not None:
            targets = {i: endpoint(self.config, self.members[i])
                       for i in self.heartbeats.peers() if i not in self.gone}
            self.monitors.append(asyncio.ensure_future(heartbeat_servers(
                self.heartbeat_key, self.heartbeats, targets, self.names,
                lambda: self.config.cluster.ping_interval_s,
                lambda event: self._on_liveness(HEARTBEAT, event), self.on_heartbeats)))
        self.tasks += self.monitors

    def _new_monitors(self) -> list[int]:
        """Sweep, liveness and heartbeats over the members; those not live in the client table
        start failed (only their next sweep and heartbeat answers bring them in)."""
        n = len(self.members)
        down = [i for i in range(n) if i != self.index
                and (i in self.gone or not self.table.is_live(i))]
        self.sweep, self.liveness, self.heartbeats = watch_state(
            self.config.cluster, n, self.index, down)
        return down

    def _set_members(self, members: list[NodeConfig]) -> None:
        """New members (a push added or removed some, or a removed one drained): the tables
        that count nodes are rebuilt around the client table, which keeps every assignment."""
        old = {r.name: r for r in self.status.rows}
        self.members = members
        self.status = ServerStatusTable(
            members, macs={n: r.mac for n, r in old.items() if r.mac},
            enabled={n: r.enabled for n, r in old.items()})
        self._adopt_members()
        for i in self.gone:  # a drained member: nothing may be given to it again
            if self.table.is_live(i):
                self.table.node_failed(i, time.monotonic())
        for i in self._new_monitors():
            self.status.mark_failed(i)
        if self.table.panic_scheduler is not None:
            self.status.panic()
        if self.session is not None:
            self._monitor(self._fetcher())
        kept = {n.name for n in self.config.nodes}
        events.info("event=members_changed members=%s leaving=%s", ",".join(self.names), ",".join(
            n for i, n in enumerate(self.names) if n not in kept and i not in self.gone) or "-")

    def _adopt_members(self) -> None:
        """The table fitted to `members` (slot order): joins appended not live (the sweep
        brings them in), forgotten trailing slots (they own nothing) dropped; their names and
        tombstones."""
        while self.table.node_count < len(self.members):
            m = self.members[self.table.node_count]
            self.table.add_node(m.weight, m.name)
        while self.table.node_count > len(self.members):
            self.table.drop_last_node()
        self.names = [m.name for m in self.members]
        self.table.names[:] = self.names
        self.gone = tombstones(self.config.nodes, self.members, self.table.counts())

    async def stop(self) -> None:
        """Stand down: stop answering ARP first, then remove the data plane."""
        if self.vip_owner is not None:
            self.vip_owner.release()
        self.stop_event.set()
        for t in self.tasks:
            t.cancel()
        for t in self.tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        if self.dataplane is not None:
            self.dataplane.close()
            self.dataplane = None
        if self.session is not None:
            await self.session.close()

    # --- keeping the peers and the kernel in step with the tables ----------------------------
    async def push_now(self) -> None:
        """Peers first, then the kernel: a bucket is never used before every live peer has it,
        so a takeover finds every flow's owner in its synced table."""
        async with self.push_lock:
            panic = self.table.panic_scheduler
            if self.push is not None and (self.table.version != self.peers_version
                                          or panic != self.pushed_panic or self.unsynced):
                # A peer that missed a change gets the whole table at the next maintenance
                # (within a second), not only when a later change shows it the gap.
                msg = (snapshot_of(self.table) if self.unsynced
                       else message_for(self.table, self.peers_version))
                self.peers_version = self.table.version
                was, self.unsynced = self.unsynced, not await self.push(msg)
                if self.unsynced and not was:
                    events.info("event=sync_unanswered version=%d", self.table.version)
                self.pushed_panic = panic
            self._push()

    def _push_soon(self) -> None:
        task = asyncio.ensure_future(self.push_now())
        task.add_done_callback(_log_failure)
        self.pending_push = task

    def _push(self) -> None:
        dp = self.dataplane
        if dp is None:
            return
        macs = {r.number: r.mac for r in self.status.rows if r.mac}
        macs_changed = macs != self.pushed_macs
        if macs_changed:
            dp.set_nodes({i: bytes.fromhex(m.replace(":", "")) for i, m in macs.items()})
            self.pushed_macs = macs
        if self.push is not None and self.table.version != self.peers_version:
            # Changed while the peers were being told: they hear of it first, then the kernel.
            self._push_soon()
        elif self.table.version != self.pushed_version or macs_changed:
            # A bucket whose owner has no known MAC yet has no owner the kernel can use.
            assignment = [o if o in macs else None for o in self.table.assignments()]
            version = self.table.version  # what the peers were told
            if self.pushed_assignment and self.table.panic_scheduler is None:
                assignment = self._keep_busy(dp, assignment)
            dp.set_assignments(assignment)
            if self.pushed_assignment:
                self.moves_total += sum(
                    a != b for a, b in zip(assignment, self.pushed_assignment, strict=True)
                )
            self.pushed_assignment = assignment
            self.pushed_version = version  # a kept move is a later version: the peers' next
        self.status.set_ip_groups(self.table.counts())

    def _keep_busy(self, dp: DataPlane, assignment: list[int | None]) -> list[int | None]:
        """Moves of buckets that carried traffic since the rebalance's snapshot are undone
        before the kernel sees them (scheduler/move_guard.py); the peers get the undo next."""
        if assignment == self.pushed_assignment:
            return assignment
        table = self.table
        busy = busy_moves(self.pushed_assignment, assignment,
                          lambda o: o < table.node_count and table.is_live(o),
                          dp.last_access_ns(), self.snapshot_ns)
        if not busy or not self.table.keep(busy, time.monotonic()):
            return assignment
        events.info("event=rebalance_kept buckets=%d version=%d", len(busy), self.table.version)
        self._push_soon()
        return with_kept(assignment, busy)

    def _on_sweep(self, event: SweepEvent) -> None:
        if isinstance(event, NodeFailed | NodeRecovered):
            self._on_liveness(SWEEP, event)
        elif isinstance(event, NodeAnswered) and self.liveness.failed(event.node):
            self.status.mark_failed(event.node)  # its status answers, its heartbeat does not
        self._push_soon()

    def _on_liveness(self, source: str, event: NodeFailed | NodeRecovered) -> None:
        change = self.liveness.on_event(source, event)
        if change is None or change.node == self.index:
            return
        now = time.monotonic()
        name = self.names[change.node]
        if isinstance(change, NodeFailed):
            self.status.mark_failed(change.node)
            moved = self.table.node_failed(change.node, now)
            events.warning("event=node_failed node=%s buckets_moved=%d by=%s", name, moved,
                           source)
        else:
            self.table.node_joined(change.node, now)
            events.info("event=node_joined node=%s by=%s", name, source)
        self._push_soon()

    async def _maintenance(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_S)
            try:
                await self._maintain()
            except Exception:  # a bug of ours: logged, and the next round tries again
                events.exception("event=internal_error where=maintenance")

    async def _maintain(self) -> None:
        """Idle buckets rebalanced, peers then kernel told; then members that drained leave.
        In that order: the kernel write may keep a busy bucket on a draining member (the move
        guard), and a member's number must outlive every bucket the kernel gives it."""
        idle_s = self.config.cluster.bucket_idle_s  # a push may change it
        dp = self.dataplane
        if dp is None:
            return
        self.snapshot_ns = time.monotonic_ns()
        self.table.load_last_access([ns / 1e9 for ns in dp.last_access_ns()])
        if self.table.panic_scheduler is None:
            moved = self.table.rebalance(time.monotonic(), idle_s)
            if moved:
                events.info("event=rebalance buckets_moved=%d version=%d", moved,
                            self.table.version)
        await self.push_now()
        done = drained(self.config.nodes, self.members, self.gone, self.table.counts(),
                       set(self.pushed_assignment))
        if done is not None:
            events.info("event=node_drained nodes=%s",
                        ",".join(self.names[i] for i in done[2]))
            self._set_members(done[0])
            await self.push_now()

    # --- what the admin API shows -------------------------------------------------------------
    def table_json(self) -> dict[str, Any]:
        return {
            "version": self.table.version, "epoch": self.table.epoch, "size": self.table.size,
            "assignments": [None if o is None else self.names[o]
                            for o in self.table.assignments()],
        }

    def node_rows(self) -> list[dict[str, Any]]:
        """The members' rows; a tombstone is no member any more."""
        return [r.to_json() for i, r in enumerate(self.status.rows) if i not in self.gone]

    def summary_json(self) -> dict[str, Any]:
        dp = self.dataplane
        return {
            "scheduler": self.names[self.index],
            "table_version": self.table.version,
            "last_sweep": self.status.last_sweep,
            "sweeps": self.sweep.sweeps,
            "nodes": self.node_rows(),
            "backends": [r.to_json() for r in self.status.summary()],
            "dataplane": None if dp is None else counters_json(dp, self.names),
            "panic": self.table.panic_scheduler is not None,
        }

    def reconfigure(self, config: Config) -> None:
        """Weights move buckets only as they fall idle; port rules, the deny list and the VIPs
        reach the data plane at once (a removed VIP is dropped from the kernel's map and no
        longer answered by ARP; a new one is announced)."""
        self.config = config
        members = next_members(config.nodes, self.members, self.table.counts())
        if ([m.name for m in members] != self.names
                or tombstones(config.nodes, members, self.table.counts()) != self.gone):
            self._set_members(members)
        for i, n in enumerate(members):
            self.status.rows[i].config_weight = n.weight
            self.status.set_weight(i, n.weight)
            self.table.set_weight(i, self.status.table_weights()[i])
        self.sweep.sweep_delay_s = config.cluster.sweep_interval_s
        dp = self.dataplane
        vips = vip_map(config)
        owner = self.vip_owner
        if dp is not None:
            dp.set_port_rules(*port_rules(config, self.names))
            dp.set_deny(list(config.cluster.deny))
            if owner is not None:
                # New VIPs reach the kernel's map before ARP draws their traffic here;
                # removed ones stop being answered before the map drops them.
                dp.set_vips({**vips, **{v: dp_ports for v, dp_ports in self._old_vips.items()
                                        if v not in vips}})
                new = owner.set_vips(list(vips))
                dp.set_vips(vips)
                if new and owner.answering:
                    self.tasks.append(asyncio.ensure_future(asyncio.to_thread(
                        owner.announce, self.mac, 3, new)))
        self._old_vips = vips
        events.info("event=scheduler_reconfigured node=%s weights=%s ports=%d deny=%d",
                       self.names[self.index], ",".join(str(n.weight) for n in config.nodes),
                       len(config.ports), len(config.cluster.deny))

    def set_node_enabled(self, name: str, enabled: bool) -> None:
        """A disabled node takes no new buckets; its buckets leave it as they fall idle, so no
        live connection is cut (the operator's drain of a whole node)."""
        i = self.names.index(name)
        self.status.set_enabled(i, enabled)
        self.table.set_weight(i, self.status.table_weights()[i])
        events.info("event=node_%s node=%s", "enabled" if enabled else "disabled", name)

    def panic(self, on: bool) -> None:
        now = time.monotonic()
        if on:
            self.status.panic()
            moved = self.table.panic(now, self.index)
            events.warning("event=panic_on buckets_moved=%d", moved)
        else:
            self.table.clear_panic()
            events.info("event=panic_off")


def _log_failure(task: asyncio.Future[None]) -> None:
    """A push that failed on a bug of ours: one line, not asyncio's "never retrieved"."""
    if not task.cancelled() and (exc := task.exception()) is not None:
        events.error("event=internal_error where=push error=%r", exc)
