"""Keepalive connections to one back end, and the protocol that reads its responses.

Written on asyncio protocols with httptools (llhttp) rather than aiohttp's client because the
proxy must stream each response to a client transport with flow control and reuse the
connection for the next client's request without a per-request session or task; aiohttp's
client allocates a ClientResponse, a StreamReader and a task per request, which is where a
naive aiohttp proxy spends most of its time.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, cast

import httptools

from dlba.proxy import http_head
from dlba.proxy.core_io import BackendLink

if TYPE_CHECKING:
    from dlba.proxy.core_exchange import Exchange

log = logging.getLogger("dlba.backend")


class BackendConnection(BackendLink):
    """One TCP connection to a back end, idle in its pool or bound to one exchange: the shell
    that parses its responses (llhttp) and reports them to the exchange (the core), and carries
    out the exchange's calls (BackendLink)."""

    __slots__ = ("_headers", "_reason", "closed", "got_bytes", "head_request", "idle_since",
                 "loop", "parser", "paused", "pool", "sink", "transport", "tunnel")

    def __init__(self, pool: BackendPool) -> None:
        super().__init__()
        self.pool = pool
        self.transport: asyncio.Transport | None = None
        self.sink: Exchange | None = None
        self.parser = httptools.HttpResponseParser(self)
        self.head_request = False
        self.got_bytes = False
        self.tunnel = False
        self.closed = False
        self.paused = False  # reading paused for a slow client (ClientSession.client_writable)
        self.idle_since = 0.0
        self.loop: asyncio.AbstractEventLoop | None = None
        self._headers: list[tuple[bytes, bytes]] = []
        self._reason = b""

    # --- asyncio protocol -------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports are not asyncio.Transport subclasses, only alike.
        self.transport = cast(asyncio.Transport, transport)
        # Held for release's clock: asyncio.get_running_loop() costs a getpid() syscall a call.
        self.loop = asyncio.get_running_loop()

    def data_received(self, data: bytes) -> None:
        self.got_bytes = True
        sink = self.sink
        if self.tunnel:
            if sink is not None:
                sink.on_tunnel_data(data)
            return
        if sink is None:
            # A back end must not talk while idle; whatever it is, the connection is unusable.
            self.abort()
            return
        try:
            self.parser.feed_data(data)
            if self.sink is not None:
                self.sink.flush()
        except httptools.HttpParserUpgrade as e:
            self.tunnel = True
            rest = data[int(e.args[0]) :]
            if rest and self.sink is not None:
                self.sink.on_tunnel_data(rest)
        except httptools.HttpParserError as e:
            log.warning("event=backend_protocol_error backend=%s error=%r", self.pool.name, e)
            self._drop()

    def eof_received(self) -> bool | None:
        return None  # the transport closes; connection_lost reports it

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.pool.forget(self)
        sink, self.sink = self.sink, None
        if sink is not None:
            sink.on_backend_lost(exc, self.got_bytes)

    def pause_writing(self) -> None:
        if self.sink is not None:
            self.sink.on_backend_writable(False)

    def resume_writing(self) -> None:
        if self.sink is not None:
            self.sink.on_backend_writable(True)

    # --- httptools callbacks (no on_message_begin: a call per response for nothing; each head
    # takes its field list and leaves a new one for the next) -----------------------------
    def on_status(self, status: bytes) -> None:
        self._reason = status

    def on_header(self, name: bytes, value: bytes) -> None:
        self._headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = self.parser.get_status_code()
        headers = self._headers
        self._headers = []
        chunked, has_length, seen = http_head.response_facts(headers)
        if self.sink is not None:
            self.sink.on_response_head(
                status, self._reason, headers, self.parser.should_keep_alive(), chunked,
                has_length, seen,
            )
        if self.head_request and status >= 200:
            # httptools cannot be told that a HEAD response has no body, so the message is
            # ended here and the parser replaced before the next response arrives.
            self.parser = httptools.HttpResponseParser(self)
            self._finish()

    def on_body(self, body: bytes) -> None:
        if self.sink is not None:
            self.sink.on_response_body(body)

    def on_message_complete(self) -> None:
        if self.parser.get_status_code() < 200 or self.head_request:
            return  # 1xx: the final response follows on the same connection
        self._finish()

    def _finish(self) -> None:
        sink, self.sink = self.sink, None
        self.head_request = False
        if sink is not None:
            sink.on_response_complete()

    # --- BackendLink: the exchange's calls --------------------------------------------------
    def bind(self, ex: Exchange, head_request: bool) -> None:
        self.sink = ex
        self.head_request = head_request
        self.got_bytes = False

    def write(self, data: bytes) -> None:
        if self.transport is not None and not self.closed:
            self.transport.write(data)

    def pause_reading(self) -> None:
        if self.transport is not None and not self.closed and not self.paused:
            self.paused = True
            self.transport.pause_reading()

    def resume_reading(self) -> None:
        if self.transport is not None and not self.closed and self.paused:
            self.paused = False
            self.transport.resume_reading()

    def release(self) -> None:
        # The pool the connection came from: a reload may have removed the back end.
        loop = self.loop or asyncio.get_running_loop()
        self.pool.release(self, loop.time())

    def abort(self) -> None:
        self.sink = None
        self._drop()

    def _drop(self) -> None:
        """Reset; connection_lost reports it to the exchange still bound."""
        self.closed = True
        if self.transport is not None:
            self.transport.abort()

    def authority(self) -> bytes:
        return self.pool.authority


class BackendPool:
    """Idle keepalive connections to one back end, most recently used first."""

    def __init__(
        self, backend_id: int, host: str, port: int, *, max_idle: int, idle_timeout_s: float,
        connect_timeout_s: float,
    ) -> None:
        self.backend_id = backend_id
        self.host = host
        self.port = port
        self.name = f"{backend_id}@{host}:{port}"
        self.authority = f"{host}:{port}".encode()
        self.max_idle = max_idle
        self.idle_timeout_s = idle_timeout_s
        self.connect_timeout_s = connect_timeout_s
        self.idle: deque[BackendConnection] = deque()
        self.closed = False
        self.connects = 0
        self.connecting: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references

    def take_idle(self) -> BackendConnection | None:
        while self.idle:
            conn = self.idle.pop()
            if not conn.closed:
                conn.reused += 1
                return conn
        return None

    def connect_for(self, ex: Exchange) -> None:
        """A new connection for `ex`, reported to it (backend_connected or _connect_failed)."""
        task = asyncio.get_running_loop().create_task(self._connect_for(ex))
        self.connecting.add(task)
        task.add_done_callback(self.connecting.discard)

    async def _connect_for(self, ex: Exchange) -> None:
        try:
            conn = await self.connect()
        except (TimeoutError, OSError) as e:
            ex.backend_connect_failed(e)
            return
        ex.backend_connected(conn, True)

    async def connect(self) -> BackendConnection:
        loop = asyncio.get_running_loop()
        self.connects += 1
        factory = cast(Any, lambda: BackendConnection(self))  # an asyncio protocol by its methods
        async with asyncio.timeout(self.connect_timeout_s):
            _, proto = await loop.create_connection(factory, self.host, self.port)
        return cast(BackendConnection, proto)

    def release(self, conn: BackendConnection, now: float) -> None:
        if self.closed or conn.closed or len(self.idle) >= self.max_idle:
            conn.abort()
            return
        conn.sink = None
        conn.idle_since = now
        # The read that ended the response may also have filled the client's buffer and paused
        # this connection: idle, it must be read again, or the next request's answer (and the
        # back end's close) would wait in the socket unread.
        conn.resume_reading()
        self.idle.append(conn)

    def forget(self, conn: BackendConnection) -> None:
        with contextlib.suppress(ValueError):
            self.idle.remove(conn)

    def expire(self, now: float) -> None:
        """Close connections idle for longer than the back end is likely to keep them."""
        while self.idle and now - self.idle[0].idle_since > self.idle_timeout_s:
            self.idle.popleft().abort()

    def close(self) -> None:
        self.closed = True
        while self.idle:
            self.idle.pop().abort()
