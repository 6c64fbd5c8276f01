"""A client connection's protocol logic, without I/O: strict HTTP/1.1 request framing,
keepalive, pipelining, limits, timeouts.

Events in: client_data, client_closed, client_writable, tick (and, for each exchange, the
back-end events of core_exchange). Calls out: ClientIO (write, close, pause, open a back end)
and the pure collaborators of ProxyContext. Every malformed or oversized request is answered
with a 4xx and the connection is closed, as HAProxy does, so that request smuggling through an
ambiguous message is impossible.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import httptools

from dlba.proxy import http_head
from dlba.proxy.core_exchange import Exchange
from dlba.proxy.core_io import (
    BODY,
    CHUNKED,
    CLOSED,
    CLOSING,
    HEAD,
    HEADER_TIMER,
    IDLE_TIMER,
    LINE,
    LINGER_TIMER,
    LINGERING,
    NO_TIMER,
    READING,
    TUNNEL,
    UPGRADING,
    ClientIO,
)
from dlba.proxy.http_head import BadRequest as Reject

if TYPE_CHECKING:
    from dlba.proxy.proxy_context import ProxyContext

events = logging.getLogger("dlba.event")

MAX_HEAD_BYTES = 64 * 1024
MAX_QUEUED = 16  # pipelined requests read ahead of the one being answered
LINGER_S = 2.0  # how long input is drained after an error answer (nginx: lingering_time)


class ClientSession:
    # One lives per open client connection, idle keepalive ones included: no more fields than
    # needed, and the queue a list (a deque allocates a 64-slot block at once).
    __slots__ = (
        "body_left", "ctx", "deadline", "fields_bytes", "forwarding", "head_bytes", "headers",
        "held_in", "http11", "io", "method", "parser", "parsing", "paused", "peer", "peer_ip",
        "queue", "redirect", "scheme", "state", "tail", "timer", "tunnel", "url", "watched",
        "writable",
    )

    def __init__(self, ctx: ProxyContext, io: ClientIO, scheme: bytes, peer_ip: str, peer: str,
                 redirect: bool = False) -> None:
        self.ctx = ctx
        self.io = io
        self.scheme = scheme
        self.peer_ip = peer_ip
        self.peer = peer
        self.redirect = redirect  # a plain listener that answers 308 to https://
        self.state = LINE
        # Its callbacks are bound methods of this object, a reference cycle client_closed breaks.
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
        self.queue: list[Exchange] = []
        self.parsing: Exchange | None = None
        self.tunnel: Exchange | None = None
        self.http11 = True
        self.head_bytes = 0
        self.fields_bytes = 0
        self.url = b""
        self.method = b""
        self.body_left = 0
        self.held_in = b""  # the start of a request line that the next read completes
        self.tail = b""  # the last bytes fed in HEAD/CHUNKED: a blank line may span two reads
        self.headers: list[tuple[bytes, bytes]] = []
        self.watched: list[tuple[bytes, bytes]] = []  # (lower-case name, value)
        self.forwarding = http_head.forwarding_lines(peer_ip, scheme)
        self.paused = False
        self.writable = True
        # A deadline, not timer handles: ticks check every connection a few times a second,
        # which costs less than creating and cancelling handles on every request.
        self.deadline = 0.0
        self.timer = NO_TIMER
        stats = ctx.stats
        stats.connections_open += 1
        stats.connections_total += 1
        if scheme == b"https":
            stats.tls_handshakes += 1
        self._arm(HEADER_TIMER, ctx.limits.header_timeout_s)

    @property
    def closing(self) -> bool:
        return self.state >= CLOSING

    @property
    def in_head(self) -> bool:
        """Within a request head: its line begun (held) or its header lines being read."""
        return self.state == HEAD or (self.state == LINE and len(self.held_in) > 0)

    # --- events from the client -------------------------------------------------------------
    def client_data(self, data: bytes) -> None:
        state = self.state
        if state == TUNNEL:
            if self.tunnel is not None:
                self.tunnel.tunnel_from_client(data)
            return
        if state >= CLOSING or self.parser is None:
            return
        if state == UPGRADING:
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

    def client_closed(self) -> None:
        self.state = CLOSED
        self.ctx.stats.connections_open -= 1
        self.timer = NO_TIMER
        queue, self.queue = self.queue, []
        for ex in queue:
            ex.client_gone()
        self.tunnel = None
        self.parsing = None
        # Break the cycle (the parser's callbacks): reference counting frees the session now.
        self.parser = None

    def client_writable(self, writable: bool) -> None:
        """The client's send buffer crossed its high (False) or low (True) water mark: the back
        end feeding it is paused or resumed."""
        self.writable = writable
        ex = self.queue[0] if self.queue else None
        if ex is not None and ex.conn is not None:
            if writable:
                ex.conn.resume_reading()
            else:
                ex.conn.pause_reading()

    def tick(self, now: float) -> None:
        if self.timer != NO_TIMER and now >= self.deadline:
            self._timeout()
        elif self.queue:
            self.queue[0].check_timeout(now)

    # --- the request stream, one message part at a time ---------------------------------------
    def _parse(self, data: bytes) -> None:
        """Give the parser (llhttp) one part of one message at a time: a request line read here
        first (llhttp knows a fixed list of methods and takes RTSP/1.0 for HTTP/1.0), the head
        up to its blank line, then the body (a length, or chunks up to a blank line). So the
        parser never sees the next request's line, and each one is checked here."""
        pos = 0
        n = len(data)
        while pos < n and self.state <= READING:
            state = self.state
            if state == LINE:
                pos = self._request_line(data, pos)
                continue
            if state == BODY:
                end = min(n, pos + self.body_left)
                self.body_left -= end - pos
                self._feed(data[pos:end] if pos or end < n else data, n - end)
                pos = end
                continue
            end = self._blank_line_end(data, pos)
            self._feed(data[pos:end] if pos or end < n else data, n - end)
            if self.state != state:
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
            if self.timer != HEADER_TIMER:
                self._arm(HEADER_TIMER, self.ctx.limits.header_timeout_s)
            return n
        if data[eol - 1] != 13:
            raise Reject(400, "request line without CRLF")
        method, target, http11 = http_head.parse_request_line(data, pos, eol - 1)
        self.method = method
        self.url = target
        self.http11 = http11
        self.state = HEAD
        blank = data.find(b"\r\n\r\n", eol - 1)
        end = n if blank < 0 else blank + 4
        if method in http_head.PARSER_METHODS:
            self._feed(data[pos:end] if pos or end < n else data, n - end)
        else:
            self._feed(b"GET " + target + (b" HTTP/1.1\r\n" if http11 else b" HTTP/1.0\r\n"), 1)
            if self.state == HEAD and end > eol + 1:
                self._feed(data[eol + 1 : end], n - end)
        if self.state == HEAD:
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
            if self.state <= READING:
                self.state = UPGRADING
            if after or int(e.args[0]) < len(piece):
                raise Reject(400, "data after an upgrade request, before its 101") from None

    # --- httptools callbacks ----------------------------------------------------------------
    def on_message_begin(self) -> None:
        self.head_bytes = 0
        self.fields_bytes = 0
        self.headers = []
        self.watched = []
        if self.timer != HEADER_TIMER:
            self._arm(HEADER_TIMER, self.ctx.limits.header_timeout_s)

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
        # client_data only sees heads still incomplete after a read; this counts whole ones.
        self.fields_bytes += len(name) + len(value) + 4
        if self.fields_bytes > MAX_HEAD_BYTES:
            raise Reject(431, "request head too large")

    def on_headers_complete(self) -> None:
        parser = self.parser
        if self.state >= CLOSING or parser is None:
            return
        self.timer = NO_TIMER
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
        self.state = CHUNKED if chunked else BODY if length else LINE
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
                host_value or self.io.local_host(), self.url, self.ctx.https_port,
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

    def on_body(self, body: bytes) -> None:
        if self.parsing is not None:
            self.parsing.feed_body(body)

    def on_message_complete(self) -> None:
        if self.state <= READING:
            self.state = LINE
        if self.parsing is not None:
            self.parsing.body_complete()
            self.parsing = None

    # --- called by exchanges ----------------------------------------------------------------
    def exchange_done(self, ex: Exchange) -> None:
        if self.queue and self.queue[0] is ex:
            del self.queue[0]
        if self.tunnel is ex:
            return
        if self.state >= CLOSING:
            self._linger()  # a bad request followed this response: its answer was the close
            return
        if not ex.client_keep_alive:
            self.close()
            return
        if self.queue:
            self.queue[0].start()
        elif self.parsing is None:
            self._arm(IDLE_TIMER, self.ctx.limits.keepalive_timeout_s)
        self.resume_reading()

    def start_tunnel(self, ex: Exchange) -> None:
        self.tunnel = ex
        if self.state < CLOSING:
            self.state = TUNNEL
        self.timer = NO_TIMER

    def reject(self, status: int, reason: str) -> None:
        """Answer a bad request and close, after the responses already owed (pipelining)."""
        events.info("event=bad_request peer=%s status=%d reason=%r", self.peer, status, reason)
        self.ctx.stats.bad_requests += 1
        if self.state >= CLOSING:
            return
        self.state = CLOSING
        queue = self.queue
        for ex in queue[1:]:
            ex.client_gone()
        if queue and queue[0].response_started:
            # The answer to an earlier request is streaming: the error cannot follow it cleanly.
            queue[0].client_keep_alive = False
            del queue[1:]
            return
        self.queue = []
        for ex in queue[:1]:
            ex.client_gone()
        self.io.write(http_head.error_response(
            status, reason, extra=self.ctx.hsts_for(self.scheme)))
        self._linger()

    def _linger(self) -> None:
        """Close after an error without losing the error: a client still sending would get a
        reset, and a reset makes its kernel drop the unread answer. So, like nginx's lingering
        close: shut our side, read and discard for a while, then close."""
        if self.state >= LINGERING:
            return
        if self.io.shut_write():
            self.state = LINGERING
            if self.paused:
                self.paused = False
                self.io.resume_reading()
            self._arm(LINGER_TIMER, LINGER_S)
        else:
            self.close()

    def pause_reading(self) -> None:
        if not self.paused and self.state < CLOSING:
            self.paused = True
            self.io.pause_reading()

    def resume_reading(self) -> None:
        if self.paused and self.state != CLOSED:
            self.paused = False
            self.io.resume_reading()

    def close(self) -> None:
        """Over TLS: close_notify, then the socket, without waiting for the client's, as nginx
        and HAProxy do."""
        self.state = CLOSED
        self.timer = NO_TIMER
        if self.parser is not None:  # not yet client_closed
            self.io.close()

    def abort(self) -> None:
        """A reset, even after close(): a truncated response must not look complete."""
        self.state = CLOSED
        if self.parser is not None:
            self.io.abort()

    # --- timers -----------------------------------------------------------------------------
    def _arm(self, timer: int, delay: float) -> None:
        self.timer = timer
        self.deadline = self.ctx.loop.time() + delay

    def _timeout(self) -> None:
        timer, self.timer = self.timer, NO_TIMER
        if timer == HEADER_TIMER and (self.in_head or self.head_bytes or not self.queue):
            if self.in_head:
                self.reject(408, "request header timeout")
            else:
                self.close()  # nothing sent: HAProxy closes silently too
        elif timer == IDLE_TIMER and not self.queue:
            self.close()
        elif timer == LINGER_TIMER:
            self.abort()
