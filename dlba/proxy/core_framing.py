"""The framing half of the proxy core: a client's byte stream cut into requests, without I/O.

RequestFraming reads the request line itself (http_head.parse_request_line), gives llhttp
(httptools) one part of one message at a time, enforces the limits on lines, fields and head
size, and checks each complete head (Host, framing headers, the target's form). ClientSession,
its subclass, takes each checked head (_request) and does the rest. A bad request raises
http_head.BadRequest, which the session answers.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import TYPE_CHECKING

import httptools

from dlba.proxy import http_head
from dlba.proxy.core_io import (
    BODY,
    CHUNKED,
    CLOSING,
    HEAD,
    HEADER_TIMER,
    LINE,
    NO_TIMER,
    READING,
    UPGRADING,
    ExchangeClient,
)
from dlba.proxy.http_head import BadRequest as Reject

if TYPE_CHECKING:
    from dlba.proxy.proxy_context import ProxyContext

MAX_HEAD_BYTES = 64 * 1024


class RequestFraming(ExchangeClient):
    __slots__ = (
        "body_left", "deadline", "fields_bytes", "head_bytes", "headers", "held_in",
        "http11", "method", "parser", "state", "tail", "timer", "url", "watched",
    )

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.state = LINE
        # Its callbacks are bound methods of this object, a reference cycle the session breaks
        # when the client is gone.
        self.parser: httptools.HttpRequestParser | None = httptools.HttpRequestParser(self)
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
        # A deadline, not timer handles: ticks check every connection a few times a second,
        # which costs less than creating and cancelling handles on every request.
        self.deadline = 0.0
        self.timer = NO_TIMER

    @property
    def closing(self) -> bool:
        return self.state >= CLOSING

    @property
    def in_head(self) -> bool:
        """Within a request head: its line begun (held) or its header lines being read."""
        return self.state == HEAD or (self.state == LINE and len(self.held_in) > 0)

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
        self._request(parser.should_keep_alive(), parser.should_upgrade(), chunked, length,
                      b"; ".join(cookies).decode("latin-1") if cookies else None, plain,
                      host_value, host == 0)

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

    # --- timers -----------------------------------------------------------------------------
    def _arm(self, timer: int, delay: float) -> None:
        self.timer = timer
        self.deadline = self.ctx.loop.time() + delay

    @abstractmethod
    def _request(self, keep_alive: bool, upgrade: bool, chunked: bool, length: int,
                 cookie_header: str | None, plain: bool, host: bytes, no_host: bool) -> None:
        """A checked request head (ClientSession makes it an exchange)."""

