"""A client's HTTP/2 connection, without I/O: the `h2` library's state machine, each stream an
exchange of the proxy core scheduled on its own, and the limits that keep one connection from
costing more than its requests are worth.

Events in: client_data, client_closed, client_writable, tick, drain (graceful stop). Calls out:
ClientIO (write, close, open a back end). Limits, as nginx and HAProxy set them:
* streams: 100 at once (SETTINGS_MAX_CONCURRENT_STREAMS; h2 refuses more with a GOAWAY),
  header list 64 KiB, HPACK table 4 KiB (h2's decoder refuses a larger one), a header block
  in at most 64 CONTINUATION frames (h2's frame buffer);
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
import contextlib
import logging
import os
from typing import TYPE_CHECKING

from h2.config import H2Configuration
from h2.connection import H2Connection
from h2.errors import ErrorCodes
from h2.events import (
    ConnectionTerminated,
    DataReceived,
    Event,
    PingReceived,
    PriorityUpdated,
    RemoteSettingsChanged,
    RequestReceived,
    StreamEnded,
    StreamReset,
    TrailersReceived,
    UnknownFrameReceived,
    WindowUpdated,
)
from h2.exceptions import H2Error, ProtocolError
from h2.settings import SettingCodes, Settings
from hyperframe.frame import GoAwayFrame

from dlba.proxy import h2_headers, http_head
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


class H2Session:
    __slots__ = ("blocked", "closed", "conn", "control", "ctx", "data_frames", "deadline",
                 "forwarding", "goaway_sent", "io", "peer", "peer_ip", "resets", "streams",
                 "updates", "window_start", "writable")

    def __init__(self, ctx: ProxyContext, io: ClientIO, peer_ip: str, peer: str) -> None:
        self.ctx = ctx
        self.io = io
        self.peer_ip = peer_ip
        self.peer = peer
        self.forwarding = http_head.forwarding_lines(peer_ip, b"https")
        self.writable = True
        self.closed = False
        self.goaway_sent = False
        self.streams: dict[int, H2Stream] = {}
        self.blocked: dict[H2Stream, None] = {}  # streams whose response waits for a window
        # What we send is checked where it is made (h2_headers: lower-case names, no
        # connection-specific fields): h2's second pass over it would cost per response.
        conn = H2Connection(H2Configuration(
            client_side=False, header_encoding=None, validate_outbound_headers=False,
            normalize_outbound_headers=False))
        conn.local_settings = Settings(client=False, initial_values={
            SettingCodes.MAX_CONCURRENT_STREAMS: MAX_STREAMS,
            SettingCodes.MAX_HEADER_LIST_SIZE: MAX_HEAD_BYTES,
            SettingCodes.ENABLE_CONNECT_PROTOCOL: 1,  # WebSockets over HTTP/2 (RFC 8441)
        })
        conn.initiate_connection()
        # The connection's window is larger than one stream's, so a stream whose back end is
        # slow to take its body (its window not reopened) does not stall the others' bodies;
        # h2 keeps it topped up to this size from then on.
        conn.increment_flow_control_window(CONNECTION_WINDOW - conn.inbound_flow_control_window)
        self.conn = conn
        now = ctx.loop.time()
        self.window_start = now
        self.resets = self.control = self.updates = self.data_frames = 0
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
        try:
            evs = self.conn.receive_data(data)
        except ProtocolError as e:  # h2 has queued its GOAWAY
            events.info("event=h2_protocol_error peer=%s reason=%r", self.peer, str(e))
            self.ctx.stats.bad_requests += 1
            self.ctx.stats.h2_refused += 1
            self._close()
            return
        try:
            self._events(evs)
        except Exception:  # a bug of ours: this connection ends, the node goes on
            events.exception("event=internal_error peer=%s", self.peer)
            self.goaway(ErrorCodes.INTERNAL_ERROR, "internal error")

    def _events(self, evs: list[Event]) -> None:
        fresh: list[H2Stream] = []
        streams = self.streams
        for ev in evs:
            if isinstance(ev, DataReceived):
                if not ev.data and ev.stream_ended is None:
                    self.control += 1  # an empty DATA frame that ends nothing: work for nothing
                st = streams.get(ev.stream_id)
                if st is not None:
                    st.body(ev.data or b"", ev.flow_controlled_length or 0)
                else:
                    self.ack(ev.stream_id, ev.flow_controlled_length or 0)
            elif isinstance(ev, RequestReceived):
                st = self._request(ev)
                if st is not None:
                    fresh.append(st)
            elif isinstance(ev, StreamEnded):
                st = streams.get(ev.stream_id)
                if st is not None:
                    st.body_end()
            elif isinstance(ev, WindowUpdated):
                self.updates += 1
                if ev.stream_id:
                    st = streams.get(ev.stream_id)
                    if st is not None and st in self.blocked:
                        st.pump()
                else:
                    self._pump_blocked()
            elif isinstance(ev, StreamReset):
                self.resets += 1
                st = streams.get(ev.stream_id)
                if st is not None and ev.remote_reset:
                    st.client_reset()
            elif isinstance(ev, RemoteSettingsChanged):
                self.control += 1
                if SettingCodes.INITIAL_WINDOW_SIZE in ev.changed_settings:
                    self._pump_blocked()
            elif isinstance(ev, (PingReceived, PriorityUpdated, UnknownFrameReceived)):
                self.control += 1
            elif isinstance(ev, TrailersReceived):
                pass  # dropped: the body goes on chunked, with no trailer section
            elif isinstance(ev, ConnectionTerminated):
                # h2 sends nothing more after the client's GOAWAY: what is in flight is cut.
                self._close()
                return
        # Started only now: a stream its client reset in this same read (the rapid-reset
        # pattern) never reaches a back end.
        for st in fresh:
            if st.ex is not None and not st.done:
                st.ex.start()
        if self._flooding():
            return
        self.flush_out()
        if self.goaway_sent and not self.streams:
            self._close()

    def _request(self, ev: RequestReceived) -> H2Stream | None:
        sid = ev.stream_id or 0
        st = H2Stream(self, sid)
        self.streams[sid] = st
        self.deadline = 0.0
        if self.goaway_sent:
            st.done = True
            st.reset_stream(ErrorCodes.REFUSED_STREAM)  # after our GOAWAY: never processed
            return None
        limits = self.ctx.limits
        try:
            req = h2_headers.request_from_h2(ev.headers or [], limits.max_headers,
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
        no_body = ev.stream_ended is not None
        if req.websocket:
            req.headers.append((b"sec-websocket-key", base64.b64encode(os.urandom(16))))
        # A body without Content-Length goes to the back end chunked (a tunnel's bytes: as is).
        st.ex = H2Exchange(st, req, chunked=not no_body and req.length < 0 and not req.websocket)
        return st

    def client_closed(self) -> None:
        self.closed = True
        self.ctx.stats.connections_open -= 1
        # h2's connection keeps bound methods of itself in a dispatch table: a cycle of some 40
        # objects per connection for the collector, unless it is emptied when the connection ends.
        table = getattr(self.conn, "_frame_dispatch_table", None)
        if isinstance(table, dict):
            table.clear()
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
            self.resets = self.control = self.updates = self.data_frames = 0
        if self.deadline and now >= self.deadline:
            self.goaway(ErrorCodes.NO_ERROR, "idle")
            return
        stall = self.ctx.limits.backend_timeout_s
        for st in list(self.streams.values()):
            ex = st.ex
            if ex is not None and not st.done:
                ex.check_timeout(now)
            if st in self.blocked and now - st.blocked_since >= stall:
                events.info("event=h2_stream_stalled peer=%s stream=%d", self.peer, st.sid)
                st.reset_stream(ErrorCodes.CANCEL)
                st.done = True
                if ex is not None:
                    ex.client_gone()
                self.stream_finished(st)
        self.flush_out()

    def drain(self) -> None:
        """Graceful stop: GOAWAY naming the last stream taken; those finish, then the close.
        Written as a frame of our own: h2's close_connection would end the streams too."""
        if self.closed or self.goaway_sent:
            return
        self.goaway_sent = True
        self.flush_out()
        frame = GoAwayFrame(stream_id=0, last_stream_id=self.conn.highest_inbound_stream_id,
                            error_code=0)
        self.io.write(frame.serialize())
        if not self.streams:
            self._close()

    # --- called by streams ------------------------------------------------------------------
    def ack(self, sid: int, n: int) -> None:
        if n:
            # A stream gone: h2 opens the connection's window all the same.
            with contextlib.suppress(H2Error):
                self.conn.acknowledge_received_data(n, sid)

    def flush_out(self) -> None:
        data = self.conn.data_to_send()
        if data:
            self.io.write(data)

    def stream_finished(self, st: H2Stream) -> None:
        if self.streams.get(st.sid) is st:
            del self.streams[st.sid]
        self.blocked.pop(st, None)
        st.ex = None  # the stream and its exchange refer to each other: freed by refcount now
        if not self.streams and not self.closed:
            if self.goaway_sent:
                self.flush_out()
                self._close()
            else:
                self.deadline = self.ctx.loop.time() + self.ctx.limits.keepalive_timeout_s

    # --- limits ------------------------------------------------------------------------------
    def _pump_blocked(self) -> None:
        for st in list(self.blocked):
            st.pump()

    def _flooding(self) -> bool:
        if self.resets > RESET_LIMIT:
            what = "rapid reset"
        elif self.control > CONTROL_LIMIT:
            what = "control frame flood"
        elif self.updates > WINDOW_UPDATE_LIMIT + self.data_frames:
            what = "window update flood"
        else:
            return False
        self.ctx.stats.bad_requests += 1
        self.ctx.stats.h2_refused += 1
        self.goaway(ErrorCodes.ENHANCE_YOUR_CALM, what)
        return True

    def goaway(self, code: int, reason: str) -> None:
        """Close now: GOAWAY with `code`, the streams in flight cut."""
        events.info("event=h2_goaway peer=%s code=%d reason=%s", self.peer, code, reason)
        with contextlib.suppress(H2Error):
            self.conn.close_connection(error_code=code)
        self._close()

    def _close(self) -> None:
        self.flush_out()
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
