"""A client's connection to the node: the asyncio shell of the proxy core.

The protocol logic (HTTP/1.1 framing, keepalive, pipelining, limits, timeouts) is
proxy.core_session.ClientSession, which does no I/O. This shell turns the transport's callbacks
into its events and carries out its calls (ClientIO) on the transport, plain TCP or
tls.transport.TLSTransport.
"""

from __future__ import annotations

import array
import asyncio
import fcntl
import ssl
import termios
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, cast

from dlba.proxy.core_exchange import Exchange
from dlba.proxy.core_io import ClientIO
from dlba.proxy.core_session import ClientSession
from dlba.proxy.h2_connection import H2ClientConnection
from dlba.tls.transport import TLSTransport, tls_server

if TYPE_CHECKING:
    from dlba.proxy.proxy_context import ProxyContext


class ClientConnection(ClientIO):
    # Slots: one of these lives per open client connection, idle keepalive ones included.
    __slots__ = ("ctx", "scheme", "session", "transport")

    def __init__(self, ctx: ProxyContext, scheme: bytes) -> None:
        self.ctx = ctx
        self.scheme = scheme
        self.transport: asyncio.Transport | None = None
        # Made in connection_made (a failed TLS handshake never makes one); dropped in
        # connection_lost, which breaks the cycle between the two.
        self.session: ClientSession | None = None

    @property
    def peer(self) -> str:
        return self.session.peer if self.session is not None else ""

    @property
    def queue(self) -> list[Exchange]:
        return self.session.queue if self.session is not None else []

    # --- asyncio protocol: transport callbacks become the session's events -------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        ctx = self.ctx
        if self.scheme == b"https" and isinstance(transport, TLSTransport) and \
                transport.sslobj.selected_alpn_protocol() == "h2":
            # ALPN chose HTTP/2 (offered when [proxy] http2): its own shell takes the transport.
            h2 = H2ClientConnection(ctx)
            transport.app = cast(asyncio.Protocol, h2)
            h2.connection_made(transport)
            return
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        peer_ip = str(peer[0]) if peer else ""
        redirect = self.scheme == b"http" and ctx.redirect_listeners and \
            ctx.redirects(transport.get_extra_info("sockname"))
        self.session = ClientSession(ctx, self, self.scheme, peer_ip,
                                     f"{peer[0]}:{peer[1]}" if peer else "", redirect)
        ctx.connections.add(self)

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self.session.client_data(data)

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.connections.discard(self)
        session, self.session = self.session, None
        if session is not None:
            session.client_closed()
        self.transport = None

    def pause_writing(self) -> None:
        if self.session is not None:
            self.session.client_writable(False)

    def resume_writing(self) -> None:
        if self.session is not None:
            self.session.client_writable(True)

    def check_timeouts(self, now: float) -> None:
        """ProxyContext.janitor's sweep: the session's tick."""
        if self.session is not None:
            self.session.tick(now)

    # --- ClientIO: the session's calls -----------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.transport is not None:
            self.transport.write(data)

    def writelines(self, pieces: list[bytes]) -> None:
        if self.transport is not None:
            self.transport.writelines(pieces)

    def cork(self) -> None:
        """Hold TLS records until `uncork` (TLSTransport.cork); plain TCP is sent at once."""
        if isinstance(self.transport, TLSTransport):
            self.transport.cork()

    def uncork(self) -> None:
        if isinstance(self.transport, TLSTransport):
            self.transport.uncork()

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        """Over TLS (tls.transport): close_notify, then the socket."""
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    def shut_write(self) -> bool:
        t = self.transport
        if t is None or t.is_closing() or not t.can_write_eof():
            return False
        t.write_eof()  # TCP: FIN; TLS (tls.transport): close_notify
        return True

    def unsent(self) -> int:
        """The transport's buffer plus what the kernel holds unacknowledged (SIOCOUTQ)."""
        t = self.transport
        if t is None:
            return 0
        queued = t.get_write_buffer_size()
        sock = t.get_extra_info("socket")
        if sock is not None:
            out = array.array("i", [0])
            try:
                fcntl.ioctl(sock.fileno(), termios.TIOCOUTQ, out)  # SIOCOUTQ on a socket
            except OSError:
                return queued
            queued += out[0]
        return queued

    def local_host(self) -> bytes:
        sock = self.transport.get_extra_info("sockname") if self.transport else None
        if not sock:
            return b"localhost"
        ip = str(sock[0])
        return f"[{ip}]".encode() if ":" in ip else ip.encode()

    def local_address(self) -> tuple[str, int]:
        sock = self.transport.get_extra_info("sockname") if self.transport else None
        return (str(sock[0]), int(sock[1])) if sock else ("", 0)

    def open_backend(self, ex: Exchange, backend_id: int) -> None:
        pool = self.ctx.pools[backend_id]
        conn = pool.take_idle()
        if conn is not None:
            ex.backend_connected(conn, False)
        else:
            pool.connect_for(ex)


def client_protocols(ctx: ProxyContext, tls: ssl.SSLContext | None,
                     handshake_timeout_s: float) -> Callable[[], asyncio.Protocol]:
    """One listener's protocol factory: HTTP, or HTTP inside TLS (dlba/tls/transport.py).
    ClientConnection is an asyncio protocol by its methods, not by its base class."""
    make = cast(Callable[[], Any], lambda: ClientConnection(ctx, b"http"))
    if tls is None:
        return cast(Callable[[], asyncio.Protocol], make)
    return tls_server(tls, lambda: cast(asyncio.Protocol, ClientConnection(ctx, b"https")),
                      handshake_timeout_s)
