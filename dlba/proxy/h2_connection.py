"""A client's HTTP/2 connection to the node: the asyncio shell of h2_session.H2Session.

client_connection.ClientConnection hands its TLS transport over to one of these when ALPN
chose h2 (the handshake is done by then, so the choice is known before the first byte).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, cast

from dlba.proxy.core_io import ClientIO
from dlba.proxy.h2_session import H2Session

if TYPE_CHECKING:
    from dlba.proxy.core_exchange import Exchange
    from dlba.proxy.proxy_context import ProxyContext


class H2ClientConnection(ClientIO):
    __slots__ = ("ctx", "out", "session", "transport")

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.transport: asyncio.Transport | None = None
        self.session: H2Session | None = None
        # Frames written in this turn of the event loop, sent together at its end: the
        # responses of many streams (many back-end reads) in one TLS write and one syscall.
        self.out: list[bytes] | None = None

    # --- asyncio protocol ------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)
        peer = transport.get_extra_info("peername")
        self.ctx.h2_connections.add(self)
        self.session = H2Session(self.ctx, self, str(peer[0]) if peer else "",
                                 f"{peer[0]}:{peer[1]}" if peer else "", self.kick)

    def data_received(self, data: bytes) -> None:
        if self.session is not None:
            self.session.client_data(data)

    def eof_received(self) -> bool | None:
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.ctx.h2_connections.discard(self)
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
        if self.session is not None:
            self.session.tick(now)

    def drain(self) -> None:
        if self.session is not None:
            self.session.drain()

    # --- ClientIO ----------------------------------------------------------------------------
    def write(self, data: bytes) -> None:
        if self.out is None:
            self.out = [data]
            self.ctx.loop.call_soon(self._send)
        else:
            self.out.append(data)

    def kick(self) -> None:
        """The session has frames to make: at the end of this turn, with every other. A lone
        stream has nothing to share its write with: then now (saves a loop callback)."""
        if self.out is None:
            self.out = []
            session = self.session
            if session is not None and len(session.streams) <= 1:
                self._send()
            else:
                self.ctx.loop.call_soon(self._send)

    def _send(self) -> None:
        session = self.session
        if session is not None and session.dirty:
            session.flush_now()  # its writes gather in self.out
        out, self.out = self.out, None
        t = self.transport
        # Not after a failed send (the peer went): each write would log a warning.
        if out and t is not None and not t.is_closing():
            t.write(out[0] if len(out) == 1 else b"".join(out))

    def writelines(self, pieces: list[bytes]) -> None:
        self.write(b"".join(pieces))

    def pause_reading(self) -> None:
        if self.transport is not None:
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None:
            self.transport.resume_reading()

    def close(self) -> None:
        self._send()  # what is written goes first (a GOAWAY, the last frames)
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.out = None
        if self.transport is not None:
            self.transport.abort()

    def shut_write(self) -> bool:
        return False

    def local_host(self) -> bytes:
        ip = self.local_address()[0]
        return (f"[{ip}]" if ":" in ip else ip).encode() if ip else b"localhost"

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
