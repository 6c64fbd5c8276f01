"""One HTTP/2 stream as the client side of one exchange, without I/O.

H2Stream is the exchange's ExchangeClient: its request body's flow control (the client's
window is opened only as the back end takes the bytes), its response (HEADERS and DATA handed
to nghttp2, whose own flow control paces the body; the session pauses the back end while the
client's window holds bytes back), and its ending (RST_STREAM for a cut response).
H2Exchange is core_exchange.Exchange with HTTP/2 framing in place of HTTP/1.1's: the
scheduling, retries, cookies, tables and access log are the same code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from dlba.proxy import h2_headers
from dlba.proxy import nghttp2_engine as ng
from dlba.proxy.core_exchange import Exchange
from dlba.proxy.core_io import TUNNELLING, ExchangeClient

if TYPE_CHECKING:
    from dlba.proxy.h2_session import H2Session


class H2Stream(ExchangeClient):
    __slots__ = ("blocked_since", "done", "engine", "ex", "out_end", "paused", "remote_ended",
                 "reset", "session", "sid", "tunnel", "unacked")

    def __init__(self, session: H2Session, sid: int) -> None:
        self.session = session
        self.engine = session.engine
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
        self.out_end = False  # END_STREAM is submitted (nghttp2 sends it after the body)
        self.remote_ended = False
        self.reset = False
        self.done = False  # the exchange is over (nghttp2 may still be sending the body)
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
                self.reset_stream(ng.PROTOCOL_ERROR)
                self.done = True
                ex.client_gone()
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
        # (informational when :status, the first field, is 1xx: the engine looks)
        if self.engine.head(self.sid, fields, end) < 0:
            self.abort()
            return
        if end:
            self.out_end = True

    def send_response(self, status: int, headers: list[tuple[bytes, bytes]],
                      extra: Sequence[tuple[bytes, bytes]], hsts: bytes, framed: bool,
                      tokens: frozenset[bytes]) -> None:
        """A back end's final head, made HTTP/2 fields by the engine (response_fields' rules,
        in C: no list of new tuples per response); its body follows."""
        if self.reset:
            return
        if self.engine.response(self.sid, status, headers, extra, hsts, framed, tokens) < 0:
            self.abort()

    def send_data(self, data: bytes, end: bool) -> None:
        if self.reset or self.out_end:
            return
        if end:
            self.out_end = True
        if self.engine.data(self.sid, data, end) < 0:
            self.reset = True  # closed under us (nghttp2 reset it): nobody reads the rest

    # --- ending ------------------------------------------------------------------------------
    def exchange_done(self, ex: Exchange) -> None:
        self.done = True
        if not self.out_end:
            self.abort()  # the response was cut: the client must not take it as complete

    def start_tunnel(self, ex: Exchange) -> None:
        self.tunnel = True

    def close(self) -> None:
        """A tunnel's end: END_STREAM after what was sent."""
        if not self.out_end:
            self.send_data(b"", True)

    def abort(self) -> None:
        self.reset_stream(ng.INTERNAL_ERROR)

    def reset_stream(self, code: int) -> None:
        if self.reset:
            return
        self.reset = True
        self.engine.reset(self.sid, code)

    def client_reset(self) -> None:
        """The client sent RST_STREAM: nobody reads the rest."""
        self.reset = True
        ex = self.ex
        if ex is not None and not self.done:
            ex.client_gone()
        self.done = True

    def closed(self) -> None:
        """nghttp2 closed the stream: both sides ended, or a reset either way."""
        ex = self.ex
        # After a complete response the exchange is ending on its own (this close can come
        # from the flush within its last step).
        if ex is not None and not self.done and not self.out_end:
            self.reset = True
            ex.client_gone()
        self.done = True
        self.session.stream_finished(self)


class H2Exchange(Exchange):
    """Exchange with HTTP/2 framing: the head as HEADERS, the body as DATA frames without
    HTTP/1.1's chunking (rechunk stays off), the end as END_STREAM."""

    __slots__ = ("completing", "stream")

    def __init__(self, stream: H2Stream, req: h2_headers.H2Request, chunked: bool) -> None:
        super().__init__(stream, req.method, req.target, req.headers, True, req.websocket,
                         chunked, req.cookie_header, req.plain and not chunked)
        self.stream = stream
        self.completing = False

    def _informational(self, status: int, reason: bytes,
                       headers: list[tuple[bytes, bytes]]) -> None:
        if status != 101:
            self.stream.send_head(h2_headers.response_fields(status, headers, (), b"", True))

    def _respond(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
                 extra: Sequence[tuple[bytes, bytes]], upgrade: bool, hsts: bytes,
                 tokens: frozenset[bytes]) -> None:
        framed = not self.rechunk and not self.ends_at_close
        self.rechunk = False  # DATA frames carry the body as it comes
        stream = self.stream
        if upgrade:  # the back end's 101 to a WebSocket's extended CONNECT: 200, then a tunnel
            fields = h2_headers.response_fields(200, headers, extra, hsts, False, tokens)
            stream.send_head([f for f in fields if f[0] != b"sec-websocket-accept"])
            self.state = TUNNELLING
            stream.start_tunnel(self)
            stream.session.flush_out()
            return
        stream.send_response(status, headers, extra, hsts, framed, tokens)

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
