"""A node's listening sockets (proxy HTTP/HTTPS and admin), changeable while running.

A reload must not drop anything in flight. Closing an asyncio server only closes its listening
socket: accepted connections live on as transports of their own, so an old listener can be
closed the moment its replacement listens, and its requests still finish.

Certificates change without touching sockets at all: every TLS listener is created once with a
*front* context whose SNI callback moves each new handshake onto the *live* context (and that
one's own SNI choice). A reload replaces the live context; handshakes already done keep theirs.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Sequence
from typing import Literal

from aiohttp import web

from dlba.config import Config, HostPort, NodeConfig, parse_host_port
from dlba.proxy.proxy_context import ProxyContext
from dlba.proxy.sockets import listen_socket, open_proxy_listener, proxy_addresses, tls_context
from dlba.tls.tickets import TicketKeyRing, derived_keys, install_ticket_keys

events = logging.getLogger("dlba.event")
Kind = Literal["http", "https", "admin"]


def admin_address(config: Config, name: str) -> HostPort:
    node = config.node(name)
    addr = node.admin or parse_host_port(config.admin.listen, default_host=node.address)
    if config.admin.listen.startswith(":") and node.admin is None and not config.cluster.vip:
        # A standalone node on loopback: the admin API is not for the network.
        addr = HostPort("127.0.0.1", addr.port)
    return addr


async def open_admin_site(runner: web.AppRunner, addr: HostPort) -> web.SockSite:
    """The admin API's listener on `addr` (a socket from listen_socket, as the proxy's)."""
    site = web.SockSite(runner, listen_socket(addr))
    await site.start()
    return site


def _proxy_keys(node: NodeConfig) -> list[tuple[Kind, HostPort]]:
    return [("https" if tls else "http", a) for a, tls in proxy_addresses(node)]


class Listeners:
    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.servers: dict[tuple[Kind, HostPort], asyncio.AbstractServer] = {}
        self.admin_sites: dict[HostPort, web.SockSite] = {}
        self.admin_runner: web.AppRunner | None = None
        self.live_tls: ssl.SSLContext | None = None
        self.front_tls: ssl.SSLContext | None = None
        self.handshake_timeout = 10.0
        self.adopted = False
        self.ring: TicketKeyRing | None = None
        self.ring_at = 0.0

    @staticmethod
    def wanted(config: Config, name: str) -> list[tuple[Kind, HostPort]]:
        out: list[tuple[Kind, HostPort]] = _proxy_keys(config.node(name))
        out.append(("admin", admin_address(config, name)))
        return out

    def _ticket_ring(self) -> TicketKeyRing:
        """The array's ticket keys (derived from the cluster secret, as NodeRuntime does), so
        sessions resume across the switch and across nodes; re-derived every 30 s."""
        now = time.monotonic()
        if self.ring is None or now - self.ring_at > 30:
            keys = derived_keys(self.ctx.secret, time.time())
            if self.ring is None:
                self.ring = TicketKeyRing(keys)
            else:
                self.ring.replace(keys)
            self.ring_at = now
        return self.ring

    def _switch(self, sock: ssl.SSLObject | ssl.SSLSocket, server_name: str | None,
                _front: ssl.SSLContext) -> None:
        self._ticket_ring()
        live = self.live_tls
        if live is None:
            return
        sock.context = live
        if live.sni_callback is not None:
            live.sni_callback(sock, server_name, live)  # type: ignore[arg-type]

    def _front(self, config: Config) -> ssl.SSLContext | None:
        if self.front_tls is None:
            self.front_tls = tls_context(config)
            if self.front_tls is not None:
                self.front_tls.sni_callback = self._switch
                # Tickets are sealed with the keys of the context the handshake started on
                # (OpenSSL's session_ctx), which is this one.
                install_ticket_keys(self.front_tls, self._ticket_ring())
        return self.front_tls

    async def _open(self, kind: Kind, addr: HostPort, config: Config) -> None:
        if kind == "admin":
            assert self.admin_runner is not None
            self.admin_sites[addr] = await open_admin_site(self.admin_runner, addr)
            return
        tls = self._front(config) if kind == "https" else None
        self.servers[(kind, addr)] = await open_proxy_listener(
            self.ctx, addr, tls, self.handshake_timeout)

    async def _close(self, kind: Kind, addr: HostPort) -> None:
        if kind == "admin":
            await self.admin_sites.pop(addr).stop()
        else:
            # Listening socket only: accepted connections keep running to their end.
            self.servers.pop((kind, addr)).close()

    def _have(self) -> list[tuple[Kind, HostPort]]:
        have: list[tuple[Kind, HostPort]] = list(self.servers)
        return have + [("admin", a) for a in self.admin_sites]

    def adopt(self, config: Config, servers: Sequence[asyncio.AbstractServer],
              admin_runner: web.AppRunner | None) -> None:
        """Take over the listeners `NodeRuntime.start` opened (proxy servers in config order:
        `listen`, then `listen_tls`; the admin runner's one site). Worker processes own their
        own proxy listeners, so `servers` is empty then and only the admin site is adopted."""
        keys = _proxy_keys(config.node(self.ctx.node_name))
        self.servers = dict(zip(keys, servers, strict=False))
        self.admin_runner = admin_runner
        if admin_runner is not None:
            sites = [s for s in admin_runner.sites if isinstance(s, web.SockSite)]
            self.admin_sites = {admin_address(config, self.ctx.node_name): s for s in sites[:1]}
        self.handshake_timeout = config.proxy.header_timeout_s
        self.adopted = True

    async def reconcile(self, config: Config, ssl_ctx: ssl.SSLContext | None,
                        tls_changed: bool, proxy_listeners: bool = True) -> None:
        """Open what the new config adds, then close what it drops (in that order, so an
        address that moves is never without a listener). `proxy_listeners` False: worker
        processes own them, only the admin listener is ours."""
        name = self.ctx.node_name
        want = self.wanted(config, name)
        if not proxy_listeners:
            want = [(k, a) for k, a in want if k == "admin"]
        have = self._have()
        if tls_changed and self.front_tls is None:
            # Listeners opened at start-up hold a fixed context: reopen them once on the
            # switching front context (new socket first); later cert changes touch no socket.
            have = [(k, a) for k, a in have if k != "https"]
        self.live_tls = ssl_ctx
        self.handshake_timeout = config.proxy.header_timeout_s
        stale = {k: v for k, v in self.servers.items() if k not in have}
        for key in stale:
            del self.servers[key]
        opened: list[tuple[Kind, HostPort]] = []
        try:
            for kind, addr in want:
                if (kind, addr) not in have:
                    await self._open(kind, addr, config)
                    opened.append((kind, addr))
        except OSError:
            for kind, addr in opened:
                await self._close(kind, addr)
            self.servers.update(stale)
            raise
        for kind, addr in have:
            if (kind, addr) not in want:
                await self._close(kind, addr)
        for server in stale.values():
            server.close()
        if opened or len(have) != len(self._have()):
            events.info(
                "event=listeners_changed node=%s listening=%s", name,
                ",".join(f"{k}:{a}" for k, a in self._have()),
            )

    async def close(self) -> None:
        for kind, addr in self._have():
            if kind != "admin":
                await self._close(kind, addr)
        self.admin_sites.clear()  # the runner's cleanup stops its sites
