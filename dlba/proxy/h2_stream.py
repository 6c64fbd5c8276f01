"""One HTTP/2 stream as the client side of one exchange, without I/O.

H2Stream is the exchange's ExchangeClient: its request body's flow control (the client's
window is opened only as the back end takes the bytes), its response's flow control (what the
client's window does not admit waits here and the back end's reading pauses), and its ending
(RST_STREAM for a cut response, or after a full response while the client still sends).
H2Exchange is core_exchange.Exchange with HTTP/2 framing in place of HTTP/1.1's: the
scheduling, retries, cookies, tables and access log are the same code.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

from h2.errors import ErrorCodes
from h2.exceptions import H2Error

from dlba.proxy import h2_headers
from dlba.proxy.core_exchange import Exchange
from dlba.proxy.core_io import TUNNELLING, ExchangeClient

if TYPE_CHECKING:
    from dlba.proxy.h2_session import H2Session


class H2Stream(ExchangeClient):
    __slots__ = ("blocked_since", "done", "ex", "out", "out_end", "paused", "remote_ended",
                 "reset", "sent_end", "session", "sid", "tunnel", "unacked")

    def __init__(self, session: H2Session, sid: int) -> None:
        self.session = session
        self.ctx = session.ctx
        self.io = session.io
        self.scheme = b"https"
        self.peer_ip = session.peer_ip
        self.peer = session.peer
        self.forwarding = session.forwarding
        self.writable = session.writable
        self.sid = sid
        self.ex: H2Exchange | None = None
        self.paused = False  # the back end does not take more of the request body now
        self.unacked = 0  # request body bytes received while paused, their window not reopened
        self.out: list[bytes] = []  # response bytes the client's window has not admitted yet
        self.out_end = False  # END_STREAM follows `out`
        self.sent_end = False
        self.remote_ended = False
        self.reset = False
        self.done = False  # the exchange is over (the stream may still drain `out`)
        self.blocked_since = 0.0
        self.tunnel = False  # a WebSocket's bytes both ways, after the back end's 101

    @property
    def closing(self) -> bool:
        return self.session.goaway_sent

    # --- request body: flow control tied to the back end's back-pressure ----------------------
    def body(self, data: bytes, flow_len: int) -> None:
        ex = self.ex
        if data and ex is not None and not self.done:  # an empty chunk would end the body
            if self.tunnel:
                ex.tunnel_from_client(data)
            elif ex.upgrade:
                # Bytes before the tunnel is open: a back end refusing the upgrade would read
                # them as a request of its own.
                self.reset_stream(ErrorCodes.PROTOCOL_ERROR)
                self.done = True
                ex.client_gone()
                self._maybe_finish()
            else:
                ex.feed_body(data)
        if self.paused and not self.done:
            self.unacked += flow_len
        else:
            self.session.ack(self.sid, flow_len)

    def body_end(self) -> None:
        self.remote_ended = True
        if self.ex is not None and not self.done:
            self.ex.body_complete()
        self._maybe_finish()

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        if self.paused:
            self.paused = False
            if self.unacked:
                n, self.unacked = self.unacked, 0
                self.session.ack(self.sid, n)
                self.session.flush_out()

    # --- response ----------------------------------------------------------------------------
    def send_head(self, fields: list[tuple[bytes, bytes]], end: bool = False) -> None:
        if self.reset:
            return
        try:
            self.session.conn.send_headers(self.sid, fields, end_stream=end)
        except H2Error:
            self.abort()
            return
        if end:
            self.sent_end = True

    def send_data(self, data: bytes, end: bool) -> None:
        if self.reset:
            return
        if data:
            self.out.append(data)
        if end:
            self.out_end = True
        self.pump()

    def pump(self) -> None:
        """Send what the client's windows admit; pause the back end while anything waits."""
        conn = self.session.conn
        out = self.out
        frames = self.session.data_frames
        try:
            while out:
                window = min(conn.local_flow_control_window(self.sid), conn.max_outbound_frame_size)
                if window <= 0:
                    break
                piece = out[0]
                self.session.data_frames += 1
                if len(piece) <= window:
                    del out[0]
                    last = not out and self.out_end
                    conn.send_data(self.sid, piece, end_stream=last)
                    self.sent_end = self.sent_end or last
                else:
                    out[0] = piece[window:]
                    conn.send_data(self.sid, piece[:window])
            if not out and self.out_end and not self.sent_end:
                conn.end_stream(self.sid)
                self.sent_end = True
        except H2Error:
            self.abort()
            return
        ex = self.ex
        session = self.session
        if out:
            if self not in session.blocked:
                session.blocked[self] = None
                self.blocked_since = self.ctx.loop.time()
                if ex is not None and ex.conn is not None:
                    ex.conn.pause_reading()
            elif session.data_frames != frames:
                self.blocked_since = self.ctx.loop.time()  # a slow reader, not a stalled one
        elif self in session.blocked:
            del session.blocked[self]
            if ex is not None and ex.conn is not None and self.writable:
                ex.conn.resume_reading()
        self._maybe_finish()

    # --- ending ------------------------------------------------------------------------------
    def exchange_done(self, ex: Exchange) -> None:
        self.done = True
        if not self.out_end and not self.sent_end:
            self.abort()  # the response was cut: the client must not take it as complete
        else:
            self._maybe_finish()

    def start_tunnel(self, ex: Exchange) -> None:
        self.tunnel = True

    def close(self) -> None:
        """A tunnel's end: END_STREAM after what was sent."""
        if not self.out_end and not self.sent_end:
            self.send_data(b"", True)

    def abort(self) -> None:
        self.reset_stream(ErrorCodes.INTERNAL_ERROR)

    def reset_stream(self, code: int) -> None:
        if self.reset or (self.sent_end and self.remote_ended):
            return
        self.reset = True
        self.out = []
        with contextlib.suppress(H2Error):  # closed already on h2's side
            self.session.conn.reset_stream(self.sid, code)
        self._maybe_finish()

    def client_reset(self) -> None:
        """The client sent RST_STREAM: nobody reads the rest."""
        self.reset = True
        self.out = []
        ex = self.ex
        if ex is not None and not self.done:
            ex.client_gone()
        self.done = True
        self._maybe_finish()

    def _maybe_finish(self) -> None:
        if not self.done or self.out:
            return
        if self.sent_end and not self.remote_ended and not self.reset:
            # A complete response while the client still sends its body (RFC 9113 §8.1).
            self.reset_stream(ErrorCodes.NO_ERROR)
            return
        if self.reset or self.sent_end:
            self.session.stream_finished(self)


class H2Exchange(Exchange):
    """Exchange with HTTP/2 framing: the head as HEADERS, the body as DATA frames without
    HTTP/1.1's chunking (rechunk stays off), the end as END_STREAM."""

    __slots__ = ("completing", "stream")

    def __init__(self, stream: H2Stream, req: h2_headers.H2Request, chunked: bool) -> None:
        super().__init__(stream, req.method, req.target, req.headers, True, req.websocket,
                         chunked, req.cookie_header)
        self.stream = stream
        self.completing = False

    def _informational(self, status: int, reason: bytes,
                       headers: list[tuple[bytes, bytes]]) -> None:
        if status != 101:
            self.stream.send_head(h2_headers.response_fields(status, headers, (), b"", True))

    def _respond(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                 extra: Sequence[tuple[bytes, bytes]], upgrade: bool, hsts: bytes) -> None:
        framed = not self.rechunk and not self.ends_at_close
        self.rechunk = False  # DATA frames carry the body as it comes
        stream = self.stream
        if upgrade:  # the back end's 101 to a WebSocket's extended CONNECT: 200, then a tunnel
            fields = h2_headers.response_fields(200, headers, extra, hsts, False)
            stream.send_head([f for f in fields if f[0] != b"sec-websocket-accept"])
            self.state = TUNNELLING
            stream.start_tunnel(self)
            stream.session.flush_out()
            return
        stream.send_head(h2_headers.response_fields(status, headers, extra, hsts, framed))

    def on_tunnel_data(self, data: bytes) -> None:
        self.bytes_out += len(data)
        self.stream.send_data(data, False)
        self.stream.session.flush_out()

    def on_backend_lost(self, exc: Exception | None, got_bytes: bool) -> None:
        if self.state == TUNNELLING:  # the back end closed the WebSocket: END_STREAM
            self.conn = None
            self.stream.close()
            self._end(True)
            self.stream.session.flush_out()
            return
        super().on_backend_lost(exc, got_bytes)

    def flush(self) -> None:
        held = self.held
        if held or self.completing:
            self.held = []
            data = held[0] if len(held) == 1 else b"".join(held)
            self.stream.send_data(data, self.completing)
        self.stream.session.flush_out()

    def on_response_complete(self) -> None:
        self.completing = True  # the flush within sends END_STREAM
        super().on_response_complete()

    def _answer_locally(self, response: bytes) -> None:
        """A whole HTTP/1.1 response the node made (a cached page, a redirect), as HTTP/2."""
        status, fields, body = h2_headers.local_response(response)
        self.status = status
        self.reason = "local"
        self.pending = self.retained = None
        stream = self.stream
        stream.send_head(fields, end=not body)
        if body:
            stream.send_data(body, True)
        self._end(True, counted=False)
        stream.session.flush_out()

    def _fail(self, status: int, message: str, extra: bytes = b"") -> None:
        self.status = status
        stream = self.stream
        fields, body = h2_headers.error_fields(status, message, self.ctx.hsts, extra)
        stream.send_head(fields)
        stream.send_data(body, True)
        self.ctx.stats.errors += 1
        self._end(False, counted=False)
        stream.session.flush_out()
