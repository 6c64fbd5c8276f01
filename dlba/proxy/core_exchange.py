"""One request and its response, without I/O: scheduled to a back end, streamed both ways,
re-routed on failure.

An exchange is made by its ClientSession when a request head is complete and starts when it
reaches the head of the session's queue (pipelined requests are answered in order). Its body
streams to the back end as it arrives and the response streams to the client as it is read,
with flow control both ways. The back-end shell reports the connection and the parsed response
to the exchange (backend_connected ... on_response_complete); the exchange answers through
ClientIO and BackendLink calls and the pure collaborators of ProxyContext (selector, status
table, counters, the access-log hook). How the response is framed for the client is its
subclasses' part: http1_exchange (HTTP/1.1 text), h2_stream (HTTP/2 frames).
"""

from __future__ import annotations

import logging
import time
from abc import abstractmethod
from collections.abc import Sequence
from typing import TYPE_CHECKING

from dlba.cdn.hook import ResponseFilter
from dlba.proxy import http_head
from dlba.proxy.core_io import (
    CONNECTING,
    DONE,
    QUEUED,
    RECEIVING,
    SENT,
    TUNNELLING,
    BackendLink,
    ExchangeClient,
    mypyc_attr,
)
from dlba.services.runtime import Route  # at run time: compiled code checks this field's type

if TYPE_CHECKING:
    from dlba.proxy.proxy_context import ProxyContext
    from dlba.scheduling.selection import Selection

events = logging.getLogger("dlba.event")

RETAIN_LIMIT = 64 * 1024  # request bodies up to this size can be replayed on another back end
MAX_ATTEMPTS = 4


# http1_exchange.H1Exchange and h2_stream.H2Exchange frame the response for their clients;
# interpreted subclasses (tests) are allowed too.
@mypyc_attr(allow_interpreted_subclasses=True)
class Exchange:
    __slots__ = ("attempts", "backend_id", "backend_keep_alive", "body_bytes", "body_done",
                 "bytes_out", "cdn", "chunked_in", "client", "client_keep_alive", "conn",
                 "cookie_header", "ctx", "ends_at_close", "excluded", "headers", "held", "http11",
                 "last_activity", "local", "method", "no_host", "pending", "plain", "reason",
                 "rechunk", "retained", "route", "stale_reset", "state", "status", "t0", "target",
                 "upgrade")

    def __init__(
        self, client: ExchangeClient, method: bytes, target: bytes,
        headers: list[tuple[bytes, bytes]], keep_alive: bool, upgrade: bool, chunked_in: bool,
        cookie_header: str | None = None, plain: bool = False, no_host: bool = False,
    ) -> None:
        self.client = client
        self.ctx: ProxyContext = client.ctx
        self.state = QUEUED
        self.method = method
        self.target = target
        self.headers = headers
        self.client_keep_alive = keep_alive
        self.upgrade = upgrade
        self.chunked_in = chunked_in
        self.cookie_header = cookie_header
        self.plain = plain and not upgrade
        self.no_host = no_host
        self.pending: list[bytes] | None = []  # body framed for the back end, before connect
        self.retained: list[bytes] | None = [] if method in http_head.IDEMPOTENT else None
        self.body_bytes = 0
        self.body_done = False
        self.conn: BackendLink | None = None
        self.backend_id = 0
        self.reason = ""
        self.excluded: set[int] = set()
        self.stale_reset = 0  # the back end whose reused connection reset before responding
        self.attempts = 0
        # Response bytes gathered while one read from the back end is parsed, sent with one
        # writev when it is done: the head and the first body bytes leave in one segment.
        self.held: list[bytes] = []
        self.status = 0
        self.bytes_out = 0
        # The response's framing: chunked to the client (its own framing dropped); complete when
        # the back end closes (a body without length, or any body to an HTTP/1.0 client).
        self.rechunk = False
        self.ends_at_close = False
        self.backend_keep_alive = False
        self.t0 = 0.0
        self.last_activity = 0.0
        self.http11 = True  # this request's version (a pipelined one may differ from the next)
        self.local: bytes | None = None  # an answer the node gives itself (redirect to HTTPS)
        self.cdn: ResponseFilter | None = None  # the CDN offload's view of the response
        self.route: Route | None = None  # its service, pool, class and slot (dlba/services)

    @property
    def finished(self) -> bool:
        return self.state == DONE

    @property
    def response_started(self) -> bool:
        return self.state == RECEIVING or self.state == TUNNELLING

    # --- request side -------------------------------------------------------------------------
    def start(self) -> None:
        self.t0 = time.perf_counter()  # uvloop's loop.time() only has millisecond resolution
        self.last_activity = self.ctx.loop.time()
        if self.local is None and self.ctx.cdn is not None:
            self.local = self.ctx.cdn.on_request(self)  # a fresh cached page, or sets self.cdn
        if self.local is not None:
            self._answer_locally(self.local)
            return
        self._schedule()

    def _schedule(self) -> None:
        ctx = self.ctx
        self.attempts += 1
        sel = ctx.schedule(self)
        if sel is None:
            if self.state != DONE:  # else already answered (a full pool, a class kept out)
                self._fail(503, "no back end available")
            return
        if sel.backend_id == 0:
            return  # waits for a slot in its pool's queue, which calls proceed
        self.proceed(sel)

    def proceed(self, sel: Selection) -> None:
        """Go to the selected back end (also how a request leaves its pool's queue)."""
        ctx = self.ctx
        if sel.bad_cookie and self.attempts == 1:
            ctx.stats.cookie_rejected += 1
        self.backend_id = sel.backend_id
        self.reason = sel.reason
        self.state = CONNECTING
        self.client.io.open_backend(self, sel.backend_id)

    def backend_connect_failed(self, exc: BaseException) -> None:
        if self.state != CONNECTING:
            return  # the client went first
        self.ctx.backend_connect_failed(self.backend_id, exc)
        self._reroute()

    def backend_connected(self, conn: BackendLink, fresh: bool) -> None:
        """`fresh`: a new connection (its back end counts as up again), not a pooled one."""
        if fresh:
            self.ctx.backend_connect_ok(self.backend_id)
        if self.state != CONNECTING:
            conn.release()
            return
        self._use(conn)

    def _reroute(self) -> None:
        self.excluded.add(self.backend_id)
        self.ctx.stats.reroutes += 1
        if self.attempts >= MAX_ATTEMPTS:
            self._fail(502, "back ends unreachable")
        else:
            self._schedule()

    def _use(self, conn: BackendLink) -> None:
        client = self.client
        self.conn = conn
        self.state = SENT
        conn.bind(self, self.method == b"HEAD")
        if not client.writable:
            # The client still has not taken the previous answer: no more from the back end
            # until it does (client_writable resumes the connection of the queue's head).
            conn.pause_reading()
        self.ctx.table.on_request_start(self.backend_id)
        headers = self.headers
        if self.no_host:
            # An HTTP/1.0 request may come without Host; what we send is HTTP/1.1, which must
            # have one: the back end's address, as nginx's default proxy_set_header does.
            headers = [*headers, (b"Host", conn.authority())]
        if self.plain:
            head = http_head.plain_request_head(
                self.method, self.target, headers, client.forwarding)
        else:
            head = http_head.request_head(
                self.method, self.target, headers, client_ip=client.peer_ip,
                scheme=client.scheme, trusted=self.ctx.trusted, chunked=self.chunked_in,
                upgrade=self.upgrade,
            )
        body = self.retained if self.retained is not None else self.pending
        self.pending = None
        conn.write(head + b"".join(body) if body else head)
        client.resume_reading()  # paused while the body waited for this connection

    def feed_body(self, data: bytes) -> None:
        self._forward(http_head.chunk(data) if self.chunked_in else data)

    def body_complete(self) -> None:
        self.body_done = True
        if self.chunked_in:
            self._forward(http_head.LAST_CHUNK)

    def _forward(self, framed: bytes) -> None:
        self.body_bytes += len(framed)
        if self.retained is not None:
            if self.body_bytes <= RETAIN_LIMIT:
                self.retained.append(framed)
            else:
                self.retained = None  # too big to replay: no retry after the first byte is sent
        if self.conn is not None:
            self.conn.write(framed)
            self.last_activity = self.ctx.loop.time()
        elif self.pending is not None:
            self.pending.append(framed)
            if self.body_bytes > RETAIN_LIMIT:
                self.client.pause_reading()

    def tunnel_from_client(self, data: bytes) -> None:
        if self.conn is not None:
            self.conn.write(data)

    # --- response side: events from the back-end shell -----------------------------------------
    def on_response_head(
        self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]], keep_alive: bool,
        chunked: bool, has_length: bool, seen: int = http_head.ANY_FIELD,
    ) -> None:
        """`seen`: http_head.response_facts' bits for these fields (what is worth a look)."""
        client = self.client
        ctx = self.ctx
        self.last_activity = ctx.loop.time()
        if status < 200 and status != 101:
            self._informational(status, reason, headers)
            return
        if self.cdn is not None:
            status, reason, headers, chunked, has_length = self.cdn.head(
                status, reason, headers, chunked, has_length)
            seen = http_head.ANY_FIELD
        self.status = status
        self.state = RECEIVING
        self.backend_keep_alive = keep_alive
        upgrade = status == 101 and self.upgrade
        no_body = self.method == b"HEAD" or status in (204, 304) or upgrade
        if no_body or (has_length and not chunked):
            pass
        elif self.http11:
            self.rechunk = True
        else:
            self.ends_at_close = True  # the client's only end of body: our close
            self.client_keep_alive = False
        if not has_length and not chunked and not no_body:
            self.ends_at_close = True  # the back end ends the body by closing
            self.backend_keep_alive = False
        if self.upgrade and not upgrade:
            self.client_keep_alive = False  # the client's parser already switched protocols
        # Session ids this back end issues are its own, on every node (learned sessions).
        if seen & (http_head.SETS_COOKIE | http_head.HAS_LOCATION):
            ctx.selector.learn(headers, self.backend_id, self.last_activity)
        https = client.scheme == b"https"
        route = self.route
        extra: Sequence[tuple[bytes, bytes]] = ()
        if status < 400 and seen & http_head.SETS_COOKIE:
            extra = ctx.inject_cookies(headers, self.backend_id, https, route)
        hsts = (ctx.hsts if route is None else route.hsts) if https else b""
        tokens = (http_head.connection_tokens(headers) if seen & http_head.NAMES_HOPS
                  else http_head.NO_TOKENS)
        self._respond(status, reason, headers, extra, upgrade, hsts, tokens)

    def on_response_body(self, data: bytes) -> None:
        if self.cdn is not None:
            data = self.cdn.body(data)
            if not data:
                return
        self.bytes_out += len(data)
        if self.rechunk:
            self.held += (b"%x\r\n" % len(data), data, b"\r\n")
        else:
            self.held.append(data)

    def on_response_complete(self) -> None:
        cdn, self.cdn = self.cdn, None
        if cdn is not None and (tail := cdn.finish()):
            self.on_response_body(tail)
        if self.rechunk:
            self.held.append(http_head.LAST_CHUNK)
        io = self.client.io
        io.cork()  # the last bytes and a close that follows them: one TCP segment
        try:
            self.flush()
            conn, self.conn = self.conn, None
            if conn is not None:
                if self.backend_keep_alive and self.body_done and self.state != TUNNELLING:
                    conn.release()
                else:
                    conn.abort()
            if not self.body_done:
                self.client_keep_alive = False  # the rest of the request body is not worth reading
            self._end(True)
        finally:
            io.uncork()

    def on_tunnel_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.client.io.write(data)

    def on_backend_writable(self, writable: bool) -> None:
        if writable:
            self.client.resume_reading()
        else:
            self.client.pause_reading()

    def on_backend_lost(self, exc: Exception | None, got_bytes: bool) -> None:
        state = self.state
        if state == DONE:
            return
        conn, self.conn = self.conn, None
        if state == TUNNELLING:
            self._end(True)
            self.client.close()
            return
        if state == RECEIVING:
            if self.ends_at_close:
                self.on_response_complete()
            else:
                self._end(False)
                self.client.abort()  # truncated: the client must not take it as complete
            return
        self.ctx.table.on_request_end(self.backend_id, 0.0, 0)
        if self.retained is not None and self.body_done and not got_bytes:
            # A reused keepalive connection the back end had closed is not the back end's fault;
            # a fresh connection that resets is, and so is a second reused one (a killed back
            # end leaves every pooled connection dead: four of them would use up the attempts).
            if conn is None or conn.reused == 0 or self.stale_reset == self.backend_id:
                self.excluded.add(self.backend_id)
            self.stale_reset = self.backend_id
            self.ctx.stats.reroutes += 1
            events.info(
                "event=retry backend=%d method=%s reason=%s", self.backend_id,
                self.method.decode(), "reset before response",
            )
            if self.attempts < MAX_ATTEMPTS:
                self._schedule()
                return
        self._fail(502, "back end closed the connection before responding")

    # --- the client side's framing: http1_exchange.H1Exchange, h2_stream.H2Exchange ----------
    @abstractmethod
    def _answer_locally(self, response: bytes) -> None:
        """A whole response the node made (a redirect, a cached page): no back end."""

    @abstractmethod
    def _informational(self, status: int, reason: bytes,
                       headers: list[tuple[bytes, bytes]]) -> None:
        """A 1xx response the back end sent before its final one."""

    @abstractmethod
    def _respond(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                 extra: Sequence[tuple[bytes, bytes]], upgrade: bool, hsts: bytes,
                 tokens: frozenset[bytes]) -> None:
        """The response head (`extra`: injected cookies; `tokens`: the names its Connection
        field lists)."""

    @abstractmethod
    def flush(self) -> None:
        """The end of one read from the back end: what it gave goes out."""

    @abstractmethod
    def _fail(self, status: int, message: str, extra: bytes = b"") -> None:
        """An error the node answers itself (`extra`: whole header lines, a Retry-After)."""

    # --- ending -------------------------------------------------------------------------------
    def check_timeout(self, now: float) -> None:
        """On a tick: no bytes from the back end for backend_timeout_s."""
        state = self.state
        if state in (QUEUED, TUNNELLING, DONE):
            return
        if now - self.last_activity < self.ctx.limits.backend_timeout_s:
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
        if state == RECEIVING:
            self._end(False)
            self.client.abort()
        else:
            self.ctx.table.on_request_end(self.backend_id, 0.0, 0)
            self._fail(504, "back end timed out")

    def refuse(self, status: int, message: str, extra: bytes = b"") -> None:
        """Answered by the node, not a back end: a full pool's 503 (extra: its Retry-After
        line), a class kept out of a pool (403)."""
        if self.state != DONE:
            self._fail(status, message, extra)

    def _end(self, ok: bool, counted: bool = True) -> None:
        if self.state == DONE:
            return
        self.state = DONE
        ctx = self.ctx
        elapsed = time.perf_counter() - self.t0
        if counted:
            ctx.table.on_request_end(self.backend_id, elapsed, self.bytes_out)
        ctx.request_done(self, elapsed, ok)
        self.client.exchange_done(self)

    def client_gone(self) -> None:
        """The client connection closed: nobody will read the rest of this response."""
        if self.state == DONE:
            return
        conn, self.conn = self.conn, None
        if conn is not None:
            conn.abort()
            self.ctx.table.on_request_end(self.backend_id, time.perf_counter() - self.t0, 0)
        self.state = DONE
