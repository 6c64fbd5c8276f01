"""A client's connection to the node: strict HTTP/1.1 parsing, keepalive, pipelining, limits.

Every malformed or oversized request is answered with a 4xx and the connection is closed, as
HAProxy does, so that request smuggling through an ambiguous message is impossible.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, cast

import httptools

from dlba import http_head
from dlba.exchange import Exchange
from dlba.tls_transport import TLSTransport, tls_server

if TYPE_CHECKING:
    from dlba.proxy_context import ProxyContext

events = logging.getLogger("dlba.event")

MAX_HEAD_BYTES = 64 * 1024
MAX_QUEUED = 16  # pipelined requests read ahead of the one being answered
LINGER_S = 2.0  # how long input is drained after an error answer (nginx: lingering_time)


class Reject(Exception):
    def __init__(self, status: int, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class ClientConnection(asyncio.Protocol):
    # Slots: one of these lives per open client connection, idle keepalive ones included.
    __slots__ = (
        "closing", "ctx", "deadline", "fields_bytes", "forwarding", "head_bytes", "headers",
        "http11", "in_head", "parser", "parsing", "paused", "peer", "peer_ip", "queue",
        "scheme", "timer_kind", "transport", "tunnel", "tunnel_pending", "upgraded", "url",
        "watched", "writable",
    )

    def __init__(self, ctx: ProxyContext, scheme: bytes) -> None:
        self.ctx = ctx
        self.scheme = scheme
        self.transport: asyncio.Transport | None = None
        self.peer_ip = ""
        self.peer = ""
        # Made in connection_made: its callbacks are bound methods of this object, a reference
        # cycle that connection_lost breaks, and one a failed TLS handshake never makes.
        self.parser: httptools.HttpRequestParser | None = None
        self.queue: deque[Exchange] = deque()
        self.parsing: Exchange | None = None
        self.tunnel: Exchange | None = None
        self.tunnel_pending: list[bytes] = []
        self.upgraded = False
        self.http11 = True
        self.closing = False
        self.in_head = False
        self.head_bytes = 0
        self.fields_bytes = 0
        self.url = b""
        self.headers: list[tuple[bytes, bytes]] = []
        self.watched: list[tuple[bytes, bytes]] = []  # (lower-case name, value)
        self.forwarding = b""
        self.paused = False
        self.writable = True
        # Deadlines, not timer handles: ProxyContext.janitor checks every connection a few times
        # a second, which costs less than creating and cancelling handles on every request.
        self.deadline = 0.0
        self.timer_kind = ""

    # --- asyncio.Protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        self.parser = httptools.HttpRequestParser(self)
        peer = transport.get_extra_info("peername")
        if peer:
            self.peer_ip = str(peer[0])
            self.peer = f"{peer[0]}:{peer[1]}"
        self.forwarding = http_head.forwarding_lines(self.peer_ip, self.scheme)
        self.ctx.stats.connections_open += 1
        self.ctx.stats.connections_total += 1
        self.ctx.connections.add(self)
        if self.scheme == b"https":
            self.ctx.stats.tls_handshakes += 1
        self._arm("header", self.ctx.limits.header_timeout_s)

    def data_received(self, data: bytes) -> None:
        if self.tunnel is not None:
            self.tunnel.tunnel_from_client(data)
            return
        if self.upgraded:
            self.tunnel_pending.append(data)
            return
        if self.closing or self.parser is None:
            return
        try:
            self.parser.feed_data(data)
        except httptools.HttpParserUpgrade as e:
            self.upgraded = True
            rest = data[int(e.args[0]) :]
            if rest:
                self.tunnel_pending.append(rest)
            return
        except httptools.HttpParserCallbackError as e:
            cause = e.__context__
            if isinstance(cause, Reject):
                self.reject(cause.status, cause.reason)
            else:
                events.exception("event=internal_error peer=%s", self.peer, exc_info=cause)
                self.reject(500, "internal error")
            return
        except httptools.HttpParserError as e:
            self.reject(400, str(e) or type(e).__name__)
            return
        if self.in_head:
            self.head_bytes += len(data)
            if self.head_bytes > MAX_HEAD_BYTES:
                self.reject(431, "request head too large")

    def connection_lost(self, exc: Exception | None) -> None:
        self.closing = True
        self.ctx.stats.connections_open -= 1
        self.ctx.connections.discard(self)
        self._disarm()
        for ex in self.queue:
            ex.client_gone()
        self.queue.clear()
        self.tunnel = None
        # Break the cycles (parser callbacks, transport and protocol pointing at each other):
        # reference counting frees the connection now, the cycle collector never has to.
        self.parser = None
        self.transport = None

    def pause_writing(self) -> None:
        self.writable = False
        ex = self.queue[0] if self.queue else None
        if ex is not None and ex.conn is not None:
            ex.conn.pause_reading()

    def resume_writing(self) -> None:
        self.writable = True
        ex = self.queue[0] if self.queue else None
        if ex is not None and ex.conn is not None:
            ex.conn.resume_reading()

    # --- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.in_head = True
        self.head_bytes = 0
        self.fields_bytes = 0
        self.url = b""
        self.headers = []
        self.watched = []
        if self.timer_kind != "header":
            self._arm("header", self.ctx.limits.header_timeout_s)

    def on_url(self, url: bytes) -> None:
        self.url += url
        if len(self.url) > self.ctx.limits.max_header_line:
            raise Reject(414, "request target too long")

    def on_header(self, name: bytes, value: bytes) -> None:
        limits = self.ctx.limits
        if len(name) + len(value) + 2 > limits.max_header_line:
            raise Reject(431, f"header line longer than {limits.max_header_line} bytes")
        self.headers.append((name, value))
        low = name.lower()
        if low in http_head.WATCHED:
            self.watched.append((low, value))
        if len(self.headers) > limits.max_headers:
            raise Reject(431, f"more than {limits.max_headers} header fields")
        # data_received only sees heads still incomplete after a read; this counts whole ones.
        self.fields_bytes += len(name) + len(value) + 4
        if self.fields_bytes > MAX_HEAD_BYTES:
            raise Reject(431, "request head too large")

    def on_headers_complete(self) -> None:
        parser = self.parser
        self.in_head = False
        if self.closing or parser is None:
            return
        self._disarm()
        method = parser.get_method()
        self.http11 = parser.get_http_version() == "1.1"
        chunked = False
        host = 0
        plain = True  # nothing for request_head to drop, merge or re-frame
        cookies = []
        for low, value in self.watched:
            if low == b"host":
                host += 1
            elif low == b"cookie":
                cookies.append(value)
            elif low == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    raise Reject(400, "unsupported transfer-encoding")
                chunked = True
                plain = False
            elif low != b"content-length":
                plain = False
        if host > 1 or (host == 0 and self.http11):
            raise Reject(400, "exactly one Host header is required")
        absolute = self.url.startswith((b"http://", b"https://"))
        if not self.url.startswith(b"/") and method != b"OPTIONS" and not absolute:
            raise Reject(400, "bad request target")
        ex = Exchange(
            self, method, self.url, self.headers, parser.should_keep_alive(),
            parser.should_upgrade(), chunked,
            b"; ".join(cookies).decode("latin-1") if cookies else None, plain, host == 0,
        )
        self.parsing = ex
        self.queue.append(ex)
        if len(self.queue) == 1:
            ex.start()
        elif len(self.queue) >= MAX_QUEUED:
            self.pause_reading()

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.feed_body(body)

    def on_message_complete(self) -> None:
        if self.parsing is not None:
            self.parsing.body_complete()
            self.parsing = None

    # --- used by exchanges ------------------------------------------------------------------
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

    def exchange_done(self, ex: Exchange) -> None:
        if self.queue and self.queue[0] is ex:
            self.queue.popleft()
        if self.tunnel is ex:
            return
        if self.closing:
            self._linger()  # a bad request followed this response: its answer was the close
            return
        if not ex.client_keep_alive:
            self.close()
            return
        if self.queue:
            self.queue[0].start()
        elif self.parsing is None:
            self._arm("idle", self.ctx.limits.keepalive_timeout_s)
        self.resume_reading()

    def start_tunnel(self, ex: Exchange) -> None:
        self.tunnel = ex
        self._disarm()
        pending, self.tunnel_pending = self.tunnel_pending, []
        for data in pending:
            ex.tunnel_from_client(data)

    def reject(self, status: int, reason: str) -> None:
        """Answer a bad request and close, after the responses already owed (pipelining)."""
        events.info("event=bad_request peer=%s status=%d reason=%r", self.peer, status, reason)
        self.ctx.stats.bad_requests += 1
        if self.closing:
            return
        self.closing = True
        for ex in list(self.queue)[1:]:
            ex.client_gone()
        if self.queue and self.queue[0].response_started:
            # The answer to an earlier request is streaming: the error cannot follow it cleanly.
            self.queue[0].client_keep_alive = False
            return
        for ex in self.queue:
            ex.client_gone()
        self.queue.clear()
        self.write(http_head.error_response(status, reason))
        self._linger()

    def _linger(self) -> None:
        """Close after an error without losing the error: a client still sending would get a
        reset, and a reset makes its kernel drop the unread answer. So, like nginx's lingering
        close: shut our side, read and discard for a while, then close."""
        t = self.transport
        if t is None or t.is_closing():
            return
        if t.can_write_eof():  # TCP: FIN; TLS (tls_transport): close_notify
            t.write_eof()
            if self.paused:
                self.paused = False
                t.resume_reading()
            self._arm("linger", LINGER_S)
        else:
            self.close()

    def pause_reading(self) -> None:
        if not self.paused and self.transport is not None and not self.closing:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and self.transport is not None:
            self.paused = False
            self.transport.resume_reading()

    def close(self) -> None:
        """Over TLS (tls_transport): close_notify, then the socket, without waiting for the
        client's close_notify, as nginx and HAProxy do."""
        self.closing = True
        self._disarm()
        if self.transport is not None:
            self.transport.close()

    def abort(self) -> None:
        self.closing = True
        if self.transport is not None:
            self.transport.abort()

    # --- timers -----------------------------------------------------------------------------
    def _arm(self, kind: str, delay: float) -> None:
        self.timer_kind = kind
        self.deadline = self.ctx.loop.time() + delay

    def _disarm(self) -> None:
        self.timer_kind = ""

    def check_timeouts(self, now: float) -> None:
        if self.timer_kind and now >= self.deadline:
            self._timeout()
        elif self.queue:
            self.queue[0].check_timeout(now)

    def _timeout(self) -> None:
        kind, self.timer_kind = self.timer_kind, ""
        if kind == "header" and (self.in_head or self.head_bytes or not self.queue):
            if self.in_head:
                self.reject(408, "request header timeout")
            else:
                self.close()  # nothing sent: HAProxy closes silently too
        elif kind == "idle" and not self.queue:
            self.close()
        elif kind == "linger":
            self.abort()


def client_protocols(ctx: ProxyContext, tls: ssl.SSLContext | None,
                     handshake_timeout_s: float) -> Callable[[], asyncio.Protocol]:
    """One listener's protocol factory: HTTP, or HTTP inside TLS (dlba/tls_transport.py)."""
    if tls is None:
        return lambda: ClientConnection(ctx, b"http")
    return tls_server(tls, lambda: ClientConnection(ctx, b"https"), handshake_timeout_s)
