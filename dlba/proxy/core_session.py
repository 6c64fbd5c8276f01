"""A client connection's protocol logic, without I/O: keepalive, pipelining, bad requests,
lingering, timeouts (the request framing and its limits: core_framing, its base class).

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
from dlba.proxy.core_framing import MAX_HEAD_BYTES, RequestFraming
from dlba.proxy.core_io import (
    CLOSE_TIMER,
    CLOSED,
    CLOSING,
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
from dlba.proxy.http1_exchange import H1Exchange
from dlba.proxy.http_head import BadRequest as Reject

if TYPE_CHECKING:
    from dlba.proxy.proxy_context import ProxyContext

events = logging.getLogger("dlba.event")

MAX_QUEUED = 16  # pipelined requests read ahead of the one being answered
LINGER_S = 2.0  # how long input is drained after an error answer (nginx: lingering_time)
# A response this long, with Connection: close, ends with a half-close and the client closes
# first. A node keeps no TIME_WAIT (a moved flow must meet a reset), so a socket it closed
# vanishes once its FIN is acknowledged; the client's next window update then draws a reset
# while its last megabytes are still unread, and a TLS client loses them (seen in the chaos
# soak). Short responses fit in the client's first windows and keep the cheaper direct close.
HALF_CLOSE_ABOVE = 65536
CLOSE_WAIT_S = 30.0  # a half-closed connection waits this long for the client, per progress


class ClientSession(RequestFraming):
    # One lives per open client connection, idle keepalive ones included: no more fields than
    # needed, and the queue a list (a deque allocates a 64-slot block at once).
    # (io, scheme, peer, peer_ip, forwarding, writable: ExchangeClient's, the exchange's view)
    __slots__ = ("parsing", "paused", "queue", "redirect", "tunnel", "unsent")

    def __init__(self, ctx: ProxyContext, io: ClientIO, scheme: bytes, peer_ip: str, peer: str,
                 redirect: bool = False) -> None:
        super().__init__(ctx)
        self.io = io
        self.scheme = scheme
        self.peer_ip = peer_ip
        self.peer = peer
        self.redirect = redirect  # a plain listener that answers 308 to https://
        self.queue: list[Exchange] = []
        self.parsing: Exchange | None = None
        self.tunnel: Exchange | None = None
        self.forwarding = http_head.forwarding_lines(peer_ip, scheme)
        self.paused = False
        self.writable = True
        self.unsent = 0  # while half-closed: the unacknowledged bytes at the last check
        stats = ctx.stats
        stats.connections_open += 1
        stats.connections_total += 1
        if scheme == b"https":
            stats.tls_handshakes += 1
        self._arm(HEADER_TIMER, ctx.limits.header_timeout_s)

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

    # --- a request head is complete (RequestFraming checked it) ------------------------------
    def _request(self, keep_alive: bool, upgrade: bool, chunked: bool, length: int,
                 cookie_header: str | None, plain: bool, host: bytes, no_host: bool) -> None:
        ex = H1Exchange(self, self.method, self.url, self.headers, keep_alive, upgrade, chunked,
                      cookie_header, plain, no_host)
        ex.http11 = self.http11
        if self.redirect:
            # Answered at once; a request body is read and dropped, then the connection closes.
            ex.client_keep_alive = keep_alive and not chunked and not length
            ex.local = http_head.https_redirect(
                host or self.io.local_host(), self.url, self.ctx.redirect_port(self.io),
                keep_alive=ex.client_keep_alive)
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
            if ex.bytes_out >= HALF_CLOSE_ABOVE:
                self._linger(CLOSE_TIMER, CLOSE_WAIT_S)
            else:
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

    def _linger(self, timer: int = LINGER_TIMER, wait_s: float = LINGER_S) -> None:
        """Close without losing the answer: a client still sending would get a reset, and a
        reset makes its kernel drop the unread answer. So, like nginx's lingering close: shut
        our side, read and discard until the client closes or the timer ends."""
        if self.state >= LINGERING:
            return
        if self.io.shut_write():
            self.state = LINGERING
            if self.paused:
                self.paused = False
                self.io.resume_reading()
            self.unsent = self.io.unsent()
            self._arm(timer, wait_s)
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
        elif timer == CLOSE_TIMER:
            # A slow reader still taking the response keeps its connection; a stalled one is
            # closed (not reset: what the kernel still holds may yet reach it).
            unsent, self.unsent = self.unsent, self.io.unsent()
            if 0 < self.unsent < unsent:
                self._arm(CLOSE_TIMER, CLOSE_WAIT_S)
            else:
                self.close()
