"""`dlba node`: one member of the array — the proxy listeners, the admin API, back-end checks."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import os
import signal
import sys
from typing import Any

from aiohttp import web
from gunicorn import systemd

import dlba
from dlba.admin.api import make_admin_app, own_node_row
from dlba.admin.dashboard import register_dashboard
from dlba.admin.metrics import NodeCollector
from dlba.cdn.hub import CdnHub
from dlba.cluster.session_sync import SessionSync
from dlba.config import Config, ConfigError, ConfigErrors
from dlba.config.node_files import load_node_config
from dlba.config.reload import ConfigReloader
from dlba.proxy.arbiter import NodeArbiter, NodeHooks, hand_over_pid_file, inherited_sockets
from dlba.proxy.gunicorn_app import EventLog
from dlba.proxy.listeners import admin_address, open_admin_site
from dlba.proxy.proxy_context import ProxyContext
from dlba.proxy.proxy_health import ProxyHealth, listeners_health
from dlba.proxy.sockets import (
    open_proxy_listener,
    proxy_addresses,
    rotate_ticket_keys,
    setup_logging,
    shared_ticket_keys,
    tls_context,
)
from dlba.proxy.worker_pool import BroadcastingTable, WorkerPool
from dlba.scheduling.backend_checks import BackendChecks
from dlba.scheduling.web_server_status_table import WebServerStatusTable
from scheduler.failover.agent import NodeAgent
from scheduler.vip_owner import interface_of, mac_text

events = logging.getLogger("dlba.event")
ADMIN_FD = "admin"  # the admin listener's name among the sockets a new master inherits


class NodeRuntime:
    """A running node; also the admin API's view of it."""

    def __init__(self, config: Config, name: str, dataplane: str = "ebpf") -> None:
        self.config = config
        self.name = name
        self.address = config.node(name).address
        self.mac = ""
        self.config_version = 1
        self.loop = asyncio.get_running_loop()
        # With worker processes this process only supervises: its table broadcasts state
        # changes to them and shows their summed counters.
        self.workers: WorkerPool | None = None
        table_class = BroadcastingTable if config.proxy.workers > 1 else WebServerStatusTable
        self.ctx = ProxyContext(config, name, self.loop, table_class)
        self.collector = NodeCollector(name, self.ctx.stats, lambda: self.ctx.table)
        self.checks = BackendChecks(self.ctx)
        self.servers: list[asyncio.AbstractServer] = []
        self.admin_runner: web.AppRunner | None = None
        self.stopped = asyncio.Event()
        self._janitor: asyncio.Task[None] | None = None
        self.background: list[asyncio.Future[None]] = []
        self.agent: NodeAgent | None = None
        self.arbiter: NodeArbiter | None = None
        self.control = False  # the control plane runs (a new master's waits for promotion)
        # Sockets an old master handed down (USR2); empty on a plain start.
        self.inherited = inherited_sockets()
        self.sessions: SessionSync | None = None
        if config.cluster.vip:
            self.agent = NodeAgent(config, name, config.read_admin_token(), dataplane,
                                   proxy_health=self.proxy_health)
            self.collector.extra.append(self.agent.metrics)
        # Staged/committed config pushes and the config bus (dlba/config/reload.py).
        self.reloader = ConfigReloader(self)

    # --- NodeView ---------------------------------------------------------------------------
    def role(self) -> str:
        return self.agent.role_name() if self.agent is not None else "standalone"

    def scheduler_name(self) -> str | None:
        return self.agent.scheduler_name() if self.agent is not None else None

    def table_version(self) -> int:
        return self.agent.table_version() if self.agent is not None else 0

    def node_rows(self) -> list[dict[str, Any]]:
        row = own_node_row(self)
        row["mac"] = self.mac
        return [row]

    def proxy_health(self) -> ProxyHealth:
        """Whether this node's proxy serves: a node whose proxy does not is a failed node."""
        if self.workers is not None:
            return self.workers.health()
        return listeners_health([s.is_serving() for s in self.servers])

    # --- life cycle -------------------------------------------------------------------------
    async def start(self) -> None:
        """The proxy, then the control plane (admin API, agent, checks, config bus). A master
        started by an old one's USR2 serves with its workers at once but takes the control
        plane only when the old master is gone (`promote`): two masters never fight for the
        admin port, the scheduler role or the heartbeat."""
        await self.start_proxy()
        if self.arbiter is not None and self.arbiter.master_pid:
            events.info("event=control_plane_deferred node=%s old_master=%d", self.name,
                        self.arbiter.master_pid)
            return
        await self.start_control()

    async def start_proxy(self) -> None:
        cfg = self.config
        node = cfg.node(self.name)
        if cfg.proxy.workers > 1:
            assert isinstance(self.ctx.table, BroadcastingTable)
            self.workers = WorkerPool(cfg, self.name, self.ctx.stats, self.ctx.table,
                                      cfg.proxy.workers)
            self.workers.learned = self.ctx.selector.learned
            self.arbiter = NodeArbiter(self.workers, NodeHooks(
                self.reload_file, self.stopped.set, self.promote, self.admin_fds),
                self.inherited)
            self.arbiter.start()
        else:
            ssl_ctx = tls_context(cfg)
            ring = shared_ticket_keys(ssl_ctx, self.ctx.secret)
            self.background.append(
                asyncio.ensure_future(rotate_ticket_keys(ring, self.ctx.secret)))
            for addr, tls in proxy_addresses(node):
                self.servers.append(await open_proxy_listener(
                    self.ctx, addr, ssl_ctx if tls else None, cfg.proxy.header_timeout_s))

    def reload_soon(self) -> None:
        """SIGHUP without workers: the config file again, in this process."""
        async def reload() -> None:
            await self.reload_file()

        self.background.append(asyncio.ensure_future(reload()))

    def promote(self) -> None:
        """The old master is gone: this one takes the control plane."""
        self.background.append(asyncio.ensure_future(self.start_control()))

    def admin_fds(self) -> dict[str, int]:
        """The admin listener's socket, for a new master to inherit (USR2)."""
        if self.admin_runner is None:
            return {}
        socks = [getattr(s, "_sock", None) for s in self.admin_runner.sites
                 if isinstance(s, web.SockSite)]
        return {ADMIN_FD: socks[0].fileno()} if socks and socks[0] is not None else {}

    async def reload_file(self) -> bool:
        """SIGHUP: the config file again, through the same stage and commit as a push; a bad
        file is refused with every problem logged, and the running config stays."""
        path = self.config.path
        if not self.control:
            events.warning("event=config_reload_refused node=%s reason=%r", self.name,
                           "a new master reloads once its old master is gone")
            return False
        try:
            text = await asyncio.to_thread(path.read_text)
            await self.reloader.stage_and_commit(text, self.config_version + 1)
        except OSError as e:
            events.error("event=config_reload_refused node=%s file=%s reason=%r", self.name,
                         path, str(e))
            return False
        except ConfigErrors as e:
            for line in e.lines():
                events.error("event=config_reload_refused node=%s problem=%r", self.name, line)
            return False
        events.info("event=config_reloaded node=%s file=%s version=%d", self.name, path,
                    self.config_version)
        return True

    async def start_control(self) -> None:
        cfg = self.config
        node = cfg.node(self.name)
        if self.agent is not None:
            # Before serving: whatever a dead process of this node left on `front` (its tc
            # program, the VIP) would re-forward the frames the live scheduler sends us.
            await self.agent.clean_stale()
        if cfg.cluster.vip:
            # pyroute2's synchronous API runs its own event loop: keep it off ours.
            with contextlib.suppress(LookupError, OSError):
                _, mac = await asyncio.to_thread(interface_of, self.address)
                self.mac = mac_text(mac)
            if self.agent is not None:
                self.agent.mac = self.mac
        admin_addr = admin_address(cfg, self.name)
        token = cfg.read_admin_token()
        app = make_admin_app(self, token, self.reloader.with_routes(
            self.agent.routes if self.agent is not None else None))
        register_dashboard(app, self, token)
        # Learned session ids, shared with the peers (dlba/cluster/session_sync.py).
        self.sessions = SessionSync(cfg, self.name, token, self.ctx.selector.learned,
                                    self.workers, self.loop)
        self.sessions.routes(app)
        CdnHub(self.ctx, self.name, token, self.scheduler_name).attach(app, self.collector)
        self.collector.extra.append(self.sessions.metrics)
        self.admin_runner = web.AppRunner(app, access_log=None)
        await self.admin_runner.setup()
        inherited_admin = self.inherited.pop(ADMIN_FD, None)
        if inherited_admin is not None and inherited_admin.getsockname()[1] != admin_addr.port:
            inherited_admin.close()  # the config file moved the admin listener meanwhile
            inherited_admin = None
        if inherited_admin is not None:
            await web.SockSite(self.admin_runner, inherited_admin).start()
        else:
            await open_admin_site(self.admin_runner, admin_addr)
        self.checks.start()
        self.reloader.start()
        self.sessions.start()
        if self.agent is not None:
            await self.agent.start()
        self._janitor = asyncio.ensure_future(self.ctx.janitor())
        self.control = True
        # Type=notify units: ready now; after an upgrade, the new master says so too.
        systemd.sd_notify(f"READY=1\nMAINPID={os.getpid()}", EventLog())
        events.info(
            "event=node_started node=%s http=%s https=%s admin=%s backends=%d workers=%d "
            "pid=%d native=%s", self.name, ",".join(map(str, node.listen)) or "-",
            ",".join(map(str, node.listen_tls)) or "-", admin_addr, len(cfg.backends),
            cfg.proxy.workers if cfg.proxy.workers > 1 else 0, os.getpid(),
            "yes" if dlba.NATIVE else f"no ({dlba.NATIVE_PROBLEM})",
        )

    async def stop(self) -> None:
        """The control plane first (a new master may be waiting for it), then the workers:
        they stop accepting and finish what they serve."""
        if self.arbiter is not None and self.arbiter.reexec_pid:
            # An upgrade: systemd follows the new master before this one exits.
            systemd.sd_notify(f"MAINPID={self.arbiter.reexec_pid}", EventLog())
            # Under `dlba up` the state folder's pid file names this process: its supervisor
            # and outside checks follow the new master instead of restarting the node.
            pid_file = self.config.path.parent / "pids" / f"{self.name}.pid"
            if hand_over_pid_file(pid_file, os.getpid(), self.arbiter.reexec_pid):
                events.info("event=pid_file_handed_over node=%s file=%s pid=%d", self.name,
                            pid_file, self.arbiter.reexec_pid)
        if self.control:
            await self.reloader.stop()
            if self.sessions is not None:
                await self.sessions.stop()
            if self.agent is not None:
                await self.agent.stop()
            self.checks.stop()
        if self._janitor is not None:
            self._janitor.cancel()
        for t in self.background:
            t.cancel()
        for s in self.servers:
            s.close()
        if self.admin_runner is not None:
            await self.admin_runner.cleanup()
        if self.arbiter is not None:
            # A new master (USR2) has the sockets and takes over at once: our workers finish
            # on their own instead of holding it up.
            await self.arbiter.stop_async(wait=not self.arbiter.reexec_pid)
        self.ctx.close()
        self.stopped.set()


async def run_node(config: Config, name: str, dataplane: str = "ebpf") -> None:
    node = NodeRuntime(config, name, dataplane)
    loop = asyncio.get_running_loop()
    # Linux only, like the whole array. With workers, gunicorn's arbiter takes HUP, USR2,
    # TTIN and TTOU (dlba/proxy/arbiter.py); QUIT, TERM and INT stop the node gracefully.
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGQUIT):
        loop.add_signal_handler(sig, node.stopped.set)
    if config.proxy.workers <= 1:
        loop.add_signal_handler(signal.SIGHUP, node.reload_soon)
    await node.start()
    await node.stopped.wait()
    await node.stop()
    if node.arbiter is not None and node.arbiter.reexec_pid:
        # An upgrade: the new master takes the control plane when this process is gone, so
        # skip the interpreter's teardown (its garbage collection alone takes 0.5-2 s).
        logging.shutdown()
        os._exit(0)


def node_parser() -> argparse.ArgumentParser:
    """`dlba node`'s arguments (also what the systemd unit's test parses its command with)."""
    p = argparse.ArgumentParser(prog="dlba node", description="run one DLBA node")
    p.add_argument("--config", required=True, help="the array's config file (TOML)")
    p.add_argument("--name", required=True,
                   help="this node's name: its [[nodes]] entry in the config")
    p.add_argument("--log-level", default="INFO",
                   help="DEBUG, INFO, WARNING or ERROR (default INFO)")
    p.add_argument(
        "--dataplane", choices=("ebpf", "afpacket"), default="ebpf",
        help="scheduler data plane when this node holds the role (default: ebpf, falling "
        "back to afpacket when BPF cannot load)",
    )
    p.add_argument("--check", action="store_true",
                   help="check this machine can run the node (config, ARP sysctls, "
                        "capabilities, BPF, kernel) and exit: 0 ready, 2 naming what is missing")
    return p


def node_main(argv: list[str]) -> int:
    args = node_parser().parse_args(argv)
    if args.check:
        from dlba.node_check import node_check_main

        return node_check_main(args.config, args.name, args.dataplane)
    setup_logging(args.log_level)
    try:
        config = load_node_config(args.config, args.name)
    except ConfigError as e:
        for line in e.lines():  # every problem, one line each
            print(f"dlba: config error: {line}", file=sys.stderr)
        return 2
    try:
        import uvloop

        uvloop.run(run_node(config, args.name, args.dataplane))
    except OSError as e:
        print(f"dlba: cannot start node {args.name}: {e}", file=sys.stderr)
        return 1
    return 0
