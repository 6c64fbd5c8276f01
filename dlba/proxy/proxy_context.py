"""What every connection of one node shares: the status table, the selector, pools, counters.

Passed to each connection explicitly (never a global), so a test can run several nodes in one
process, and a reload can swap the parts a new config changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dlba.cdn.hook import RequestHook
from dlba.cdn.runtime import runtime_for
from dlba.config import Config, HostPort, parse_host_port
from dlba.proxy import http_head
from dlba.proxy.backend_pool import BackendPool
from dlba.proxy.node_stats import NodeStats
from dlba.scheduling import cookie_codec
from dlba.scheduling.cookie_injection import injected_set_cookies
from dlba.scheduling.selection import BackendSelector, Selection
from dlba.scheduling.web_server_status_table import WebServerStatusTable
from dlba.services.runtime import Route, Services

if TYPE_CHECKING:
    from dlba.proxy.client_connection import ClientConnection
    from dlba.proxy.core_exchange import Exchange
    from dlba.proxy.core_io import ClientIO

access = logging.getLogger("dlba.access")
events = logging.getLogger("dlba.event")

POOL_IDLE_TIMEOUT_S = 30.0  # below the usual back-end keepalive (nginx 75 s, aiohttp 75 s)
TIMEOUT_SWEEP_S = 0.25  # timeouts fire up to this late


class ProxyContext:
    def __init__(
        self, config: Config, node_name: str, loop: asyncio.AbstractEventLoop,
        table_class: type[WebServerStatusTable] = WebServerStatusTable,
    ) -> None:
        self.loop = loop
        self.node_name = node_name
        self.stats = NodeStats()
        self.secret = config.read_secret()
        limits = config.proxy
        self.table = table_class(
            config.backends, limits.fail_threshold, limits.retry_backoff_s,
            limits.retry_backoff_max_s,
        )
        self.selector = BackendSelector(
            self.table, config.persistence, config.scheduling, self.secret
        )
        self.pools: dict[int, BackendPool] = {}
        self.connections: set[ClientConnection] = set()
        self.cdn: RequestHook | None = None  # the CDN offload ([cdn] enabled), see dlba/cdn
        self.h2_connections: set[ClientIO] = set()  # h2_connection.H2ClientConnection
        self.config = config
        # Looked up when used: the Playbook's clock has no call_soon (and no queue to run).
        self.services = Services(self.table, self.selector, self.secret,
                                 lambda f: self.loop.call_soon(f))
        self.apply(config)

    def apply(self, config: Config) -> None:
        """Take a new config's back ends, limits and persistence settings without a restart."""
        self.config = config
        self.limits = config.proxy
        self.trusted = http_head.TrustedProxies.parse(config.proxy.trusted_proxies)
        self.persistence = config.persistence
        self.session_cookies = frozenset(config.persistence.session_cookies)
        self.cdn = runtime_for(config, self.cdn)
        tls = config.tls
        self.hsts = b"max-age=%d" % tls.hsts_max_age_s if tls.hsts else b""
        self.hsts_line = b"Strict-Transport-Security: " + self.hsts + b"\r\n" if tls.hsts else b""
        redirect = config.proxy.redirect_https
        self.redirect_listeners = bool(redirect)
        self.redirect_all = "*" in redirect
        self.redirect_addrs = frozenset(str(parse_host_port(a)) for a in redirect if a != "*")
        tls_ports = [a.port for n in config.nodes if n.name == self.node_name
                     for a in n.listen_tls]
        # Where a redirect sends the client: 443 (left out of the URL) when this node listens
        # there or has no TLS listener of its own, else its first TLS port.
        self.https_port = 443 if not tls_ports or 443 in tls_ports else tls_ports[0]
        self.table.reconfigure(config.backends)
        self.selector.reconfigure(config.persistence, config.scheduling)
        self.services.apply(config)
        # Read per request: a plain field here, not an attribute of the (interpreted) Services.
        self.trivial = self.services.trivial
        self.redirect_services = any(s.redirect_https for s in config.services)
        self.redirect_listeners = self.redirect_listeners or self.redirect_services
        self.cookie_values = {
            b.id: cookie_codec.encode(b.id, self.secret) for b in config.backends
        }
        wanted = {b.id: b for b in config.backends}
        for bid, pool in list(self.pools.items()):
            b = wanted.get(bid)
            if b is None or (b.address.host, b.address.port) != (pool.host, pool.port):
                pool.close()
                del self.pools[bid]
        for bid, b in wanted.items():
            if bid not in self.pools:
                self.pools[bid] = BackendPool(
                    bid, b.address.host, b.address.port, max_idle=config.proxy.pool_size,
                    idle_timeout_s=POOL_IDLE_TIMEOUT_S,
                    connect_timeout_s=config.proxy.connect_timeout_s,
                )

    def redirects(self, sockname: object) -> bool:
        """Whether the plain listener a connection came in on answers 308 to https:// (the
        listener as configured: its own address, or the wildcard it is bound to)."""
        if self.redirect_all:
            return True
        if not isinstance(sockname, tuple) or len(sockname) < 2:
            return False
        port = int(sockname[1])
        if self.redirect_services:
            service = self.services.router.service_for(str(sockname[0]), port)
            if (service is not None and service.redirect_https
                    and port not in service.tls_ports):
                return True
        return any(str(HostPort(host, port)) in self.redirect_addrs
                   for host in (str(sockname[0]), "0.0.0.0", "::"))

    def redirect_port(self, io: ClientIO) -> int:
        """The https:// port a redirect names: the TLS port of the connection's service."""
        if self.redirect_services:
            service = self.services.router.service_for(*io.local_address())
            if service is not None and service.tls_ports and not service.implicit:
                return 443 if 443 in service.tls_ports else service.tls_ports[0]
        return self.https_port

    def hsts_for(self, scheme: bytes) -> bytes:
        """The Strict-Transport-Security line for a node-made answer (TLS only)."""
        return self.hsts_line if scheme == b"https" else b""

    # --- hooks called by exchanges --------------------------------------------------------
    def schedule(self, ex: Exchange) -> Selection | None:
        """A back end for `ex`; Selection with id 0: it waits in its pool's queue."""
        if self.trivial:  # one implicit service, one pool, no classes, no maxconn
            return self.selector.select(
                ex.target.decode("latin-1"), ex.cookie_header, ex.excluded, self.loop.time())
        return self.services.schedule(ex, self.loop.time())

    def inject_cookies(
        self, headers: Sequence[tuple[bytes, bytes]], backend_id: int, https: bool = False,
        route: Route | None = None,
    ) -> list[tuple[bytes, bytes]]:
        # The length first: no lower-cased copy of every other field's name (per response).
        values = [v.decode("latin-1") for n, v in headers
                  if len(n) == 10 and n.lower() == b"set-cookie"]
        if not values:
            return []
        value = self.cookie_values.get(backend_id)
        if value is None:
            return []
        cookie = self.persistence.cookie if route is None else route.service.cookie
        lines = injected_set_cookies(values, self.session_cookies, cookie, value,
                                     secure=https, same_site=self.persistence.same_site)
        if lines:
            self.stats.cookie_injected += 1
            self.table.on_cookie_injected(backend_id)
        return [(b"Set-Cookie", line.encode("latin-1")) for line in lines]

    def backend_connect_failed(self, backend_id: int, exc: BaseException) -> None:
        row = self.table.get(backend_id)
        self.stats.backend(backend_id).errors += 1
        if self.table.on_connect_failure(backend_id, self.loop.time()):
            events.warning(
                "event=backend_down node=%s backend=%d address=%s reason=%r", self.node_name,
                backend_id, row.address if row else "?", str(exc) or type(exc).__name__,
            )
        else:
            events.info(
                "event=connect_failed node=%s backend=%d reason=%r", self.node_name, backend_id,
                str(exc) or type(exc).__name__,
            )

    def backend_connect_ok(self, backend_id: int) -> None:
        if self.table.on_connect_success(backend_id, self.loop.time()):
            row = self.table.get(backend_id)
            events.info(
                "event=backend_up node=%s backend=%d address=%s", self.node_name, backend_id,
                row.address if row else "?",
            )

    def request_done(self, ex: Exchange, elapsed: float, ok: bool) -> None:
        if ex.route is not None:
            self.services.done(ex)
        stats = self.stats
        stats.requests += 1
        stats.bytes_out += ex.bytes_out
        stats.latency.observe(elapsed)
        if ex.backend_id:
            b = stats.backend(ex.backend_id)
            b.requests += 1
            b.bytes_out += ex.bytes_out
            b.latency.observe(elapsed)
            if not ok or ex.status >= 500:
                b.errors += 1
        if access.isEnabledFor(logging.INFO):
            access.info(
                "client=%s node=%s backend=%s method=%s path=%s status=%d bytes=%d ms=%.2f "
                "by=%s", ex.client.peer, self.node_name, ex.backend_id or "-",
                ex.method.decode("latin-1"), ex.target.decode("latin-1")[:200], ex.status,
                ex.bytes_out, elapsed * 1000, ex.reason or "-",
            )

    async def janitor(self) -> None:
        """The connections' timeouts (header, keepalive idle, back end) a few times a second;
        pooled back-end connections idle longer than back ends keep them, every 5 s."""
        ticks = 0
        while True:
            await asyncio.sleep(TIMEOUT_SWEEP_S)
            now = self.loop.time()
            for conn in list(self.connections):
                conn.check_timeouts(now)
            for h2 in list(self.h2_connections):
                h2.check_timeouts(now)
            self.services.tick(now)
            ticks += 1
            if ticks % 20 == 0:
                for pool in self.pools.values():
                    pool.expire(now)

    def drain(self) -> None:
        """Stopping: HTTP/2 connections say GOAWAY and end once their streams are answered."""
        for conn in list(self.h2_connections):
            conn.drain()

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
