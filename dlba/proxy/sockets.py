"""Listening sockets and the TLS server context of a node: shared by the node process and its
worker processes, so it imports nothing heavy (a worker never loads aiohttp or pyroute2).

Every listener of the node is opened here: `open_proxy_listener` (the node, each worker
process, a config reload) and `listen_socket` under the admin API's site too."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import sys
import time
from typing import TYPE_CHECKING

from dlba.config import Config, HostPort, NodeConfig
from dlba.proxy import nghttp2_engine
from dlba.proxy.client_connection import client_protocols
from dlba.tls.context import server_context
from dlba.tls.tickets import TicketKeyRing, derived_keys, install_ticket_keys

if TYPE_CHECKING:
    from dlba.proxy.proxy_context import ProxyContext

DEFER_ACCEPT_S = 1


def tls_context(config: Config) -> ssl.SSLContext | None:
    if config.tls.cert is None or config.tls.key is None:
        return None
    sni = {name: (s.cert, s.key) for s in config.tls.sni for name in s.names}
    # [[services.certs]] join the same SNI choice ([tls] sni entries win a name both give).
    for svc in config.services:
        for c in svc.certs:
            for name in c.names:
                sni.setdefault(name, (c.cert, c.key))
    # HTTP/2 runs on libnghttp2 (proxy/nghttp2_engine): without it ALPN offers HTTP/1.1 only.
    http2 = config.proxy.http2 and nghttp2_engine.available()
    return server_context(config.tls.cert, config.tls.key, sni, http2=http2)


def proxy_addresses(node: NodeConfig) -> list[tuple[HostPort, bool]]:
    """The node's proxy listeners in config order, `listen` then `listen_tls` (TLS: True)."""
    return [(a, False) for a in node.listen] + [(a, True) for a in node.listen_tls]


async def open_proxy_listener(ctx: ProxyContext, addr: HostPort, tls: ssl.SSLContext | None,
                              header_timeout_s: float) -> asyncio.AbstractServer:
    """A proxy listener on `addr` (TLS with `tls`), serving client connections of `ctx`."""
    loop = asyncio.get_running_loop()
    return await loop.create_server(client_protocols(ctx, tls, header_timeout_s),
                                    sock=listen_socket(addr))


def bound_socket(addr: HostPort) -> socket.socket:
    """A socket bound to `addr` with the options of every listener of the node (also what a
    config reload probes before it commits)."""
    family = socket.AF_INET6 if ":" in addr.host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    # The VIP may be bound before the address is configured on this host (failover).
    sock.setsockopt(socket.SOL_IP, 15, 1)  # IP_FREEBIND
    # The client speaks first in HTTP and TLS: the kernel wakes us only when its first bytes
    # are in, so accept and the first read happen in one wake-up (nginx's `deferred`,
    # HAProxy's `defer-accept`); a connect that never sends is never handed to us.
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, DEFER_ACCEPT_S)
    try:
        sock.bind((addr.host, addr.port))
    except OSError:
        sock.close()
        raise
    return sock


def listen_socket(addr: HostPort) -> socket.socket:
    """A listening socket shared by worker processes of the node (SO_REUSEPORT)."""
    sock = bound_socket(addr)
    sock.listen(4096)
    sock.setblocking(False)
    return sock


def shared_ticket_keys(ctx: ssl.SSLContext | None, secret: bytes) -> TicketKeyRing:
    """Session tickets every process of every node can decrypt (keys derived from the cluster
    secret, see tls_tickets.derived_keys); falls back to OpenSSL's per-process key, logged."""
    ring = TicketKeyRing(derived_keys(secret, time.time()))
    if ctx is not None:
        install_ticket_keys(ctx, ring)
    return ring


async def rotate_ticket_keys(ring: TicketKeyRing, secret: bytes) -> None:
    while True:
        await asyncio.sleep(30)
        ring.replace(derived_keys(secret, time.time()))


def setup_logging(level: str = "INFO") -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO), stream=sys.stderr,
        format="%(asctime)s %(levelname)s %(name)s %(message)s",
    )

