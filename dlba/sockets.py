"""Listening sockets and the TLS server context of a node: shared by the node process and its
worker processes, so it imports nothing heavy (a worker never loads aiohttp or pyroute2)."""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
import sys
import time

from dlba import tls
from dlba.config import Config, HostPort
from dlba.tls_tickets import TicketKeyRing, derived_keys, install_ticket_keys

DEFER_ACCEPT_S = 1


def tls_context(config: Config) -> ssl.SSLContext | None:
    if config.tls.cert is None or config.tls.key is None:
        return None
    sni = {name: (s.cert, s.key) for s in config.tls.sni for name in s.names}
    return tls.server_context(config.tls.cert, config.tls.key, sni)


def listen_socket(addr: HostPort) -> socket.socket:
    """A listening socket shared by worker processes of the node (SO_REUSEPORT)."""
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
    sock.bind((addr.host, addr.port))
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

