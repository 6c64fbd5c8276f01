"""A client's HTTP/2 connection, without I/O: libnghttp2's state machine (nghttp2_engine),
each stream an exchange of the proxy core scheduled on its own, and the limits that keep one
connection from costing more than its requests are worth.

Events in: client_data, client_closed, client_writable, tick, drain (graceful stop). Calls out:
ClientIO (write, close, open a back end). Limits, as nginx and HAProxy set them:
* streams: 100 at once (SETTINGS_MAX_CONCURRENT_STREAMS; nghttp2 refuses more with
  RST_STREAM), header list 64 KiB (a larger one is answered 431 without a back end), HPACK
  table 4 KiB (nghttp2 refuses a larger one), a header block in a few CONTINUATION frames
  (nghttp2 ends the connection beyond 8);
* rapid reset (CVE-2023-44487): a stream reset in the same read as its HEADERS is never
  scheduled (no back-end connection), and more than RESET_LIMIT client resets in a window of
  FLOOD_WINDOW_S close the connection with GOAWAY ENHANCE_YOUR_CALM;
* SETTINGS, PING, PRIORITY, unknown and empty DATA frames (each one costs us work or an
  answer, and does nothing for a request): CONTROL_LIMIT a window; WINDOW_UPDATE frames:
  WINDOW_UPDATE_LIMIT a window more than the DATA frames we sent in it;
* timers: preface and first request within header_timeout_s, idle (no stream) for
  keepalive_timeout_s, a response stuck behind a zero window for backend_timeout_s.
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from dlba.proxy import h2_headers, http_head
from dlba.proxy import nghttp2_engine as ng
from dlba.proxy.core_framing import MAX_HEAD_BYTES
from dlba.proxy.h2_stream import H2Exchange, H2Stream
from dlba.proxy.http_head import BadRequest

if TYPE_CHECKING:
    from dlba.proxy.core_io import ClientIO
    from dlba.proxy.proxy_context import ProxyContext

events = logging.getLogger("dlba.event")

MAX_STREAMS = 100
CONNECTION_WINDOW = 4 << 20  # request body bytes in flight on one connection, all streams
FLOOD_WINDOW_S = 10.0
RESET_LIMIT = 200  # client resets a window (a browser cancels a few on each navigation)
CONTROL_LIMIT = 200  # SETTINGS, PING, PRIORITY, unknown and empty DATA frames a window
WINDOW_UPDATE_LIMIT = 1000  # beyond the DATA frames sent in the window
FLOODS = {ng.FLOOD_RESETS: "rapid reset", ng.FLOOD_CONTROL: "control frame flood",
          ng.FLOOD_UPDATES: "window update flood"}


class H2Session:
    __slots__ = ("blocked", "closed", "ctx", "deadline", "dirty", "engine", "forwarding",
                 "goaway_sent", "io", "kick", "our_goaway", "peer", "peer_ip", "streams",
                 "window_start", "writable")

    def __init__(self, ctx: ProxyContext, io: ClientIO, peer_ip: str, peer: str,
                 kick: Callable[[], None] | None = None) -> None:
        self.ctx = ctx
        self.io = io
        # With `kick` (the shell's: flush_now at the end of this event-loop turn), the frames
        # of every stream answered in one turn are made in one pass; without it, at once.
        self.kick = kick
        self.dirty = False
        self.peer_ip = peer_ip
        self.peer = peer
        self.forwarding = http_head.forwarding_lines(peer_ip, b"https")
        self.writable = True
        self.closed = False
        self.goaway_sent = False
        self.our_goaway = False  # a GOAWAY nghttp2 sends is ours, not its answer to an error
        self.streams: dict[int, H2Stream] = {}
        self.blocked: dict[H2Stream, None] = {}  # streams whose response waits for a window
        # Settings: MAX_STREAMS, header list MAX_HEAD_BYTES, HPACK 4 KiB, extended CONNECT
        # (WebSockets, RFC 8441); the connection's window is larger than one stream's, so a
        # stream whose back end is slow to take its body does not stall the others' bodies.
        # The flood limits are checked in C as frames arrive (receive's rc).
        self.engine = ng.Session(MAX_STREAMS, MAX_HEAD_BYTES, CONNECTION_WINDOW, RESET_LIMIT,
                                 CONTROL_LIMIT, WINDOW_UPDATE_LIMIT)
        now = ctx.loop.time()
        self.window_start = now
        self.deadline = now + ctx.limits.header_timeout_s  # the preface and a first request
        stats = ctx.stats
        stats.connections_open += 1
        stats.connections_total += 1
        stats.tls_handshakes += 1
        stats.h2_connections += 1
        self.flush_out()

    # --- events from the client -------------------------------------------------------------
    def client_data(self, data: bytes) -> None:
        if self.closed:
            return
        rc, evs = self.engine.receive(data)
        try:
            self._events(evs)
        except Exception:  # a bug of ours: this connection ends, the node goes on
            events.exception("event=internal_error peer=%s", self.peer)
            self.goaway(ng.INTERNAL_ERROR, "internal error")
            return
        if self.closed:
            return
        if rc > 0:
            self._flood(FLOODS[rc])
        elif rc < 0:
            # nghttp2 read no further (bad preface, a CONTINUATION flood, its own flood limits)
            self._refused("fatal")
            self.engine.terminate(ng.PROTOCOL_ERROR)
            self._close()
        elif self.goaway_sent or self.engine.want_write():
            # (a request alone gives nghttp2 nothing to send: no send, no empty frames made)
            self.flush_out()

    def _events(self, evs: list[Any]) -> None:
        """The engine's events: a flat list, kind, stream, arg, payload for each."""
        if not evs:
            return
        fresh: list[H2Stream] = []
        streams = self.streams
        i, n = 0, len(evs)
        while i < n:
            kind: int = evs[i]
            sid: int = evs[i + 1]
            arg: int = evs[i + 2]
            payload = evs[i + 3]
            i += 4
            if kind == ng.EV_DATA:
                st = streams.get(sid)
                if st is not None:
                    st.body(payload, arg)
                else:
                    self.ack(sid, arg)
            elif kind == ng.EV_REQUEST:
                st = self._request(sid, payload, arg)
                if st is not None:
                    fresh.append(st)
            elif kind == ng.EV_END:
                st = streams.get(sid)
                if st is not None:
                    st.body_end()
            elif kind == ng.EV_CLOSE:
                st = streams.get(sid)
                if st is not None:
                    st.closed()
            else:
                self._other(kind, sid, arg)
                if self.closed:
                    return
        # Started only now: a stream its client reset in this same read (the rapid-reset
        # pattern) never reaches a back end.
        for st in fresh:
            if st.ex is not None and not st.done:
                st.ex.start()

    def _other(self, kind: int, sid: int, arg: int) -> None:
        st = self.streams.get(sid)
        if kind == ng.EV_RESET:
            if st is not None:
                st.client_reset()
        elif kind == ng.EV_BLOCKED:
            if st is not None and st not in self.blocked:
                self.blocked[st] = None
                st.blocked_since = self.ctx.loop.time()
                ex = st.ex
                if ex is not None and ex.conn is not None:
                    ex.conn.pause_reading()
        elif kind == ng.EV_PROGRESS:
            if st is not None:
                st.blocked_since = self.ctx.loop.time()  # a slow reader, not a stalled one
        elif kind == ng.EV_DRAINED:
            if st is not None and self.blocked.pop(st, 0) is None:
                ex = st.ex
                if ex is not None and ex.conn is not None and self.writable:
                    ex.conn.resume_reading()
        elif kind == ng.EV_GOAWAY_SENT:
            if arg and not self.our_goaway:  # nghttp2's answer to a protocol error
                self._refused(f"code={arg}")
        elif kind == ng.EV_GOAWAY_RECV:
            # The client's GOAWAY: what is in flight is cut.
            self._close()

    def _refused(self, why: str) -> None:
        events.info("event=h2_protocol_error peer=%s reason=%s", self.peer, why)
        self.ctx.stats.bad_requests += 1
        self.ctx.stats.h2_refused += 1

    def _request(self, sid: int, block: bytes, flags: int) -> H2Stream | None:
        st = H2Stream(self, sid)
        self.streams[sid] = st
        self.deadline = 0.0
        if self.goaway_sent:
            st.done = True
            st.reset_stream(ng.REFUSED_STREAM)  # after our GOAWAY: never processed
            return None
        limits = self.ctx.limits
        try:
            if flags & 2:
                raise BadRequest(431, "header list too large")
            if flags & 4:  # the engine's check of each field (h2_headers' rules, in C)
                raise BadRequest(400, "bad header field")
            req = h2_headers.request_from_block(block, limits.max_headers,
                                                limits.max_header_line)
        except BadRequest as bad:
            events.info("event=bad_request peer=%s stream=%d status=%d reason=%r", self.peer,
                        sid, bad.status, bad.reason)
            self.ctx.stats.bad_requests += 1
            fields, body = h2_headers.error_fields(bad.status, bad.reason, self.ctx.hsts)
            st.done = True
            st.send_head(fields)
            st.send_data(body, True)
            return None
        no_body = flags & 1
        if req.websocket:
            req.headers.append((b"sec-websocket-key", base64.b64encode(os.urandom(16))))
        # A body without Content-Length goes to the back end chunked (a tunnel's bytes: as is).
        st.ex = H2Exchange(st, req, chunked=not no_body and req.length < 0 and not req.websocket)
        return st

    def client_closed(self) -> None:
        self.closed = True
        self.ctx.stats.connections_open -= 1
        streams, self.streams = self.streams, {}
        self.blocked = {}
        _let_go(streams)

    def client_writable(self, writable: bool) -> None:
        """The transport's buffer crossed its high (False) or low (True) water mark."""
        self.writable = writable
        for st in self.streams.values():
            st.writable = writable
            ex = st.ex
            if ex is not None and ex.conn is not None and st not in self.blocked:
                if writable:
                    ex.conn.resume_reading()
                else:
                    ex.conn.pause_reading()

    def tick(self, now: float) -> None:
        if self.closed:
            return
        if now - self.window_start >= FLOOD_WINDOW_S:
            self.window_start = now
            self.engine.clear_counters()
        if self.deadline and now >= self.deadline:
            self.goaway(ng.NO_ERROR, "idle")
            return
        stall = self.ctx.limits.backend_timeout_s
        for st in list(self.streams.values()):
            ex = st.ex
            if ex is not None and not st.done:
                ex.check_timeout(now)
            if st in self.blocked and now - st.blocked_since >= stall:
                events.info("event=h2_stream_stalled peer=%s stream=%d", self.peer, st.sid)
                del self.blocked[st]
                st.reset_stream(ng.CANCEL)
                if ex is not None and not st.done:
                    ex.client_gone()
                st.done = True
        self.flush_out()

    def drain(self) -> None:
        """Graceful stop: GOAWAY naming the last stream taken; those finish, then the close.
        Written as a frame of our own: nghttp2's would end the session (and its streams)."""
        if self.closed or self.goaway_sent:
            return
        self.flush_now()
        self.goaway_sent = True
        self.io.write(ng.goaway_frame(self.engine.last_stream(), ng.NO_ERROR))
        if not self.streams:
            self._close()

    # --- called by streams ------------------------------------------------------------------
    def ack(self, sid: int, n: int) -> None:
        if n:
            self.engine.consume(sid, n)  # a stream gone: the connection's window all the same

    def flush_out(self) -> None:
        kick = self.kick
        if kick is None:
            self.flush_now()
        elif not self.dirty:
            self.dirty = True
            kick()

    def flush_now(self) -> None:
        self.dirty = False
        if self.closed:
            return
        while True:
            data, done, evs = self.engine.send()
            if data:
                self.io.write(data)
            if not evs:
                break
            self._events(evs)  # streams closed, windows waited for or drained by this send
            if self.closed:
                return
            if not self.engine.want_write():  # (what the events did queued nothing)
                break
        if done or (self.goaway_sent and not self.streams):
            self._close()

    def stream_finished(self, st: H2Stream) -> None:
        if self.streams.get(st.sid) is st:
            del self.streams[st.sid]
        self.blocked.pop(st, None)
        st.ex = None  # the stream and its exchange refer to each other: freed by refcount now
        if not self.streams and not self.closed and not self.goaway_sent:
            self.deadline = self.ctx.loop.time() + self.ctx.limits.keepalive_timeout_s

    # --- limits ------------------------------------------------------------------------------
    def _flood(self, what: str) -> None:
        self.ctx.stats.bad_requests += 1
        self.ctx.stats.h2_refused += 1
        self.goaway(ng.ENHANCE_YOUR_CALM, what)

    def goaway(self, code: int, reason: str) -> None:
        """Close now: GOAWAY with `code`, the streams in flight cut."""
        events.info("event=h2_goaway peer=%s code=%d reason=%s", self.peer, code, reason)
        self.our_goaway = True
        self.engine.terminate(code)
        self._close()

    def _close(self) -> None:
        if self.closed:
            return
        data = self.engine.send()[0]  # the last frames (a GOAWAY); their events no longer matter
        if data:
            self.io.write(data)
        self.closed = True
        streams, self.streams = self.streams, {}
        self.blocked = {}
        _let_go(streams)
        self.io.close()


def _let_go(streams: dict[int, H2Stream]) -> None:
    """The connection is over: every exchange still running is cut, and each stream lets go
    of its exchange (a reference cycle otherwise)."""
    for st in streams.values():
        ex, st.ex = st.ex, None
        if ex is not None and not st.done:
            st.done = True
            ex.client_gone()
