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
from typing import TYPE_CHECKING, Final, cast

import httptools

from dlba.proxy import http_head
from dlba.proxy.exchange import Exchange
from dlba.proxy.http_head import BadRequest as Reject
from dlba.tls.transport import TLSTransport, tls_server

if TYPE_CHECKING:
    from dlba.proxy.proxy_context import ProxyContext

events = logging.getLogger("dlba.event")

MAX_HEAD_BYTES = 64 * 1024
MAX_QUEUED = 16  # pipelined requests read ahead of the one being answered
LINGER_S = 2.0  # how long input is drained after an error answer (nginx: lingering_time)
# What the next bytes of the client's stream are (see ClientConnection._parse).
LINE: Final = 0  # a request line (or the empty lines allowed before one)
HEAD: Final = 1  # header lines, up to the blank line
LENGTH: Final = 2  # a body of body_left more bytes
CHUNKED: Final = 3  # a chunked body, which ends with a blank line


class ClientConnection(asyncio.Protocol):
    # Slots: one of these lives per open client connection, idle keepalive ones included.
    __slots__ = (
        "body_left", "closing", "ctx", "deadline", "fields_bytes", "forwarding", "head_bytes",
        "headers", "held_in", "http11", "in_head", "method", "parser", "parsing", "paused",
        "peer", "peer_ip", "phase", "queue", "redirect", "scheme", "tail", "timer_kind",
        "transport", "tunnel", "tunnel_pending", "upgraded", "url", "watched", "writable",
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
        self.method = b""
        self.phase = LINE
        self.body_left = 0
        self.held_in = b""  # the start of a request line that the next read completes
        self.tail = b""  # the last bytes fed in HEAD/CHUNKED: a blank line may span two reads
        self.redirect = False  # a plain listener that answers 308 to https:// (ProxyContext)
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
        if self.scheme == b"http" and self.ctx.redirect_listeners:
            self.redirect = self.ctx.redirects(transport.get_extra_info("sockname"))
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
        if self.closing or self.parser is None:
            return
        if self.upgraded:
            # Bytes after an Upgrade request's head, before the back end's 101: a back end that
            # refuses the upgrade would read them as a request of its own (smuggling).
            self.reject(400, "data after an upgrade request, before its 101")
            return
        if self.held_in:
            data = self.held_in + data
            self.held_in = b""
        try:
            self._parse(data)
        except Reject as bad:  # its own name: compiled code types `e` by its first use
            self.reject(bad.status, bad.reason)
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

    # --- the request stream, one message part at a time ---------------------------------------
    def _parse(self, data: bytes) -> None:
        """Give the parser (llhttp) one part of one message at a time: a request line read here
        first (llhttp knows a fixed list of methods and takes RTSP/1.0 for HTTP/1.0), the head
        up to its blank line, then the body (a length, or chunks up to a blank line). So the
        parser never sees the next request's line, and each one is checked here."""
        pos = 0
        n = len(data)
        while pos < n and not self.closing and not self.upgraded:
            phase = self.phase
            if phase == LINE:
                pos = self._request_line(data, pos)
                continue
            if phase == LENGTH:
                end = min(n, pos + self.body_left)
                self.body_left -= end - pos
                self._feed(data[pos:end] if pos or end < n else data, n - end)
                pos = end
                continue
            end = self._blank_line_end(data, pos)
            self._feed(data[pos:end] if pos or end < n else data, n - end)
            if self.phase != phase:
                self.tail = b""
            elif end - pos >= 3:  # a blank line may still begin in these bytes
                self.tail = data[end - 3 : end]
            else:
                self.tail = (self.tail + data[pos:end])[-3:]
            pos = end

    def _request_line(self, data: bytes, pos: int) -> int:
        """Check the request line at data[pos:] and feed it with what follows of its head;
        where the unread bytes start (len(data) when the line is incomplete: held)."""
        n = len(data)
        while pos < n and (data[pos] == 13 or data[pos] == 10):
            pos += 1  # empty lines before a request line are ignored (RFC 9112 §2.2)
        if pos == n:
            return n
        eol = data.find(b"\n", pos)
        limit = self.ctx.limits.max_header_line
        if eol < 0 or eol - pos > limit:
            if n - pos > limit:
                raise Reject(414, "request line too long")
            sp = data.find(b" ", pos)
            if data[pos : n if sp < 0 else sp].translate(None, http_head.TCHAR):
                raise Reject(400, "method is not a token")  # binary, TLS on the plain port
            self.held_in = data[pos:]
            self.in_head = True
            if self.timer_kind != "header":
                self._arm("header", self.ctx.limits.header_timeout_s)
            return n
        if data[eol - 1] != 13:
            raise Reject(400, "request line without CRLF")
        method, target, http11 = http_head.parse_request_line(data, pos, eol - 1)
        self.method = method
        self.url = target
        self.http11 = http11
        self.phase = HEAD
        blank = data.find(b"\r\n\r\n", eol - 1)
        end = n if blank < 0 else blank + 4
        if method in http_head.PARSER_METHODS:
            self._feed(data[pos:end] if pos or end < n else data, n - end)
        else:
            self._feed(b"GET " + target + (b" HTTP/1.1\r\n" if http11 else b" HTTP/1.0\r\n"), 1)
            if self.phase == HEAD and end > eol + 1:
                self._feed(data[eol + 1 : end], n - end)
        if self.phase == HEAD:
            self.tail = data[max(pos, end - 3) : end]
        return end

    def _blank_line_end(self, data: bytes, pos: int) -> int:
        """Where the first CRLF CRLF at or after pos ends (it may have begun in the bytes fed
        before, self.tail), or len(data)."""
        tail = self.tail
        if tail:
            i = (tail + data[pos : pos + 3]).find(b"\r\n\r\n")
            if i >= 0:
                return pos + i + 4 - len(tail)
        i = data.find(b"\r\n\r\n", pos)
        return len(data) if i < 0 else i + 4

    def _feed(self, piece: bytes, after: int) -> None:
        """`after`: bytes of this read that follow the piece."""
        if self.parser is None:
            return
        try:
            self.parser.feed_data(piece)
        except httptools.HttpParserUpgrade as e:
            self.upgraded = True
            if after or int(e.args[0]) < len(piece):
                raise Reject(400, "data after an upgrade request, before its 101") from None

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
        self.headers = []
        self.watched = []
        if self.timer_kind != "header":
            self._arm("header", self.ctx.limits.header_timeout_s)

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
        method = self.method
        chunked = False
        host = 0
        host_value = b""
        length = 0
        plain = True  # nothing for request_head to drop, merge or re-frame
        cookies = []
        for low, value in self.watched:
            if low == b"host":
                host += 1
                host_value = value
            elif low == b"cookie":
                cookies.append(value)
            elif low == b"transfer-encoding":
                if value.strip().lower() != b"chunked":
                    raise Reject(400, "unsupported transfer-encoding")
                chunked = True
                plain = False
            elif low == b"content-length":
                length = int(value)  # llhttp allows digits only, and one value
            else:
                plain = False
        if host > 1 or (host == 0 and self.http11):
            raise Reject(400, "exactly one Host header is required")
        if not http_head.valid_host(host_value):
            raise Reject(400, "bad byte in Host")
        if method == b"CONNECT":
            raise Reject(400, "CONNECT is for forward proxies")
        if not self.url.startswith(b"/"):
            authority = self._origin_form(method)
            if authority:
                host_value = authority
                host = 1
        self.phase = CHUNKED if chunked else LENGTH if length else LINE
        self.body_left = length
        keep_alive = parser.should_keep_alive()
        ex = Exchange(
            self, method, self.url, self.headers, keep_alive, parser.should_upgrade(), chunked,
            b"; ".join(cookies).decode("latin-1") if cookies else None, plain, host == 0,
        )
        ex.http11 = self.http11
        if self.redirect:
            # Answered at once; a request body is read and dropped, then the connection closes.
            ex.client_keep_alive = keep_alive and not chunked and not length
            ex.local = http_head.https_redirect(
                host_value or self._local_host(), self.url, self.ctx.https_port,
                keep_alive=ex.client_keep_alive)
        self.parsing = ex
        self.queue.append(ex)
        if len(self.queue) == 1:
            ex.start()
        elif len(self.queue) >= MAX_QUEUED:
            self.pause_reading()

    def _origin_form(self, method: bytes) -> bytes:
        """An absolute-form target (`http://host/path`) becomes origin-form, its authority the
        Host (RFC 9112 §3.2.2), which is returned; `*` is only for OPTIONS (b""); anything
        else is refused."""
        absolute = http_head.absolute_target(self.url)
        if absolute is None:
            if self.url == b"*" and method == b"OPTIONS":
                return b""
            raise Reject(400, "bad request target")
        authority, self.url = absolute
        headers = [(n, authority if len(n) == 4 and n.lower() == b"host" else v)
                   for n, v in self.headers]
        if not any(len(n) == 4 and n.lower() == b"host" for n, _ in headers):
            headers.append((b"Host", authority))
        self.headers = headers
        return authority

    def _local_host(self) -> bytes:
        """The address the client dialled, for a redirect of a request without a Host."""
        sock = self.transport.get_extra_info("sockname") if self.transport else None
        if not sock:
            return b"localhost"
        ip = str(sock[0])
        return f"[{ip}]".encode() if ":" in ip else ip.encode()

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.feed_body(body)

    def on_message_complete(self) -> None:
        self.phase = LINE
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
        self.write(http_head.error_response(status, reason, extra=self.ctx.hsts_for(self.scheme)))
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
    """One listener's protocol factory: HTTP, or HTTP inside TLS (dlba/tls/transport.py)."""
    if tls is None:
        return lambda: ClientConnection(ctx, b"http")
    return tls_server(tls, lambda: ClientConnection(ctx, b"https"), handshake_timeout_s)
