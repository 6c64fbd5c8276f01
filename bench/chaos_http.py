"""A small HTTP/1.1 and WebSocket client on asyncio streams for the chaos soak.

Raw rather than aiohttp's client: the soak needs each connection's source port (it decides the
client-table bucket, hence the node), the exact point where an exchange failed (before or after
the response head), rate-limited reading of long bodies, and no hidden retries.
"""

from __future__ import annotations

import asyncio
import base64
import os
import ssl
import struct
import time
from dataclasses import dataclass, field

VIP = "198.18.0.100"
READ = 65536


class ExchangeError(Exception):
    """The connection failed: `stage` says where (connect, head, body)."""

    def __init__(self, stage: str, reason: str, response: Response | None = None) -> None:
        super().__init__(f"{stage}: {reason}")
        self.stage = stage
        self.reason = reason
        self.response = response  # the head, when the body was cut


@dataclass
class Response:
    status: int
    headers: dict[str, str]
    cookies: list[str] = field(default_factory=list)  # Set-Cookie values
    body: bytes = b""
    length: int = 0  # body bytes received (also when not kept)
    keep_alive: bool = True

    @property
    def backend(self) -> str:
        return self.headers.get("x-backend", "")


class Conn:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, tls: bool):
        self.reader, self.writer, self.tls = reader, writer, tls
        self.sport = int(writer.get_extra_info("sockname")[1])
        self.used = 0

    def close(self) -> None:
        if not self.writer.is_closing():
            self.writer.transport.abort()


def client_tls(cafile: str) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=cafile)
    ctx.check_hostname = True
    return ctx


async def connect(tls_ctx: ssl.SSLContext | None, timeout: float, host: str = VIP) -> Conn:
    port = 443 if tls_ctx else 80
    try:
        r, w = await asyncio.wait_for(
            asyncio.open_connection(host, port, ssl=tls_ctx, limit=1 << 20,
                                    server_hostname=host if tls_ctx else None),
            timeout)
    except (OSError, TimeoutError, ssl.SSLError) as exc:
        raise ExchangeError("connect", type(exc).__name__ + ":" + str(exc)[:80]) from None
    return Conn(r, w, tls_ctx is not None)


def request_head(method: str, path: str, headers: dict[str, str], body_len: int | None) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {VIP}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body_len is not None:
        lines.append(f"Content-Length: {body_len}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def parse_head(raw: bytes) -> Response:
    lines = raw.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise ExchangeError("head", f"bad status line {lines[0][:60]!r}")
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for line in lines[1:]:
        if not line:
            continue
        name, _, value = line.partition(":")
        name, value = name.strip().lower(), value.strip()
        if name == "set-cookie":
            cookies.append(value)
        headers[name] = f"{headers[name]}, {value}" if name in headers else value
    keep = "close" not in headers.get("connection", "").lower()
    return Response(int(parts[1]), headers, cookies, keep_alive=keep)


async def _read_body(conn: Conn, resp: Response, keep: bool, rate: float, timeout: float,
                     method: str) -> None:
    r = conn.reader
    started = time.monotonic()

    async def take(n: int) -> None:
        while n > 0:
            chunk = await asyncio.wait_for(r.read(min(n, READ)), timeout)
            if not chunk:
                raise ExchangeError("body", f"EOF after {resp.length} bytes")
            n -= len(chunk)
            resp.length += len(chunk)
            if keep:
                resp.body += chunk
            if rate > 0:  # read no faster than `rate` bytes/s: a long transfer stays in flight
                ahead = resp.length / rate - (time.monotonic() - started)
                if ahead > 0:
                    await asyncio.sleep(ahead)

    if method == "HEAD" or resp.status in (204, 304) or 100 <= resp.status < 200:
        return
    if "chunked" in resp.headers.get("transfer-encoding", "").lower():
        while True:
            line = await asyncio.wait_for(r.readuntil(b"\r\n"), timeout)
            size = int(line.split(b";")[0].strip() or b"0", 16)
            if size == 0:  # trailers, if any, up to the empty line
                while await asyncio.wait_for(r.readuntil(b"\r\n"), timeout) != b"\r\n":
                    pass
                return
            await take(size)
            await asyncio.wait_for(r.readexactly(2), timeout)
    elif "content-length" in resp.headers:
        await take(int(resp.headers["content-length"]))
    else:  # close-delimited
        resp.keep_alive = False
        while chunk := await asyncio.wait_for(r.read(READ), timeout):
            resp.length += len(chunk)
            if keep:
                resp.body += chunk


async def exchange(conn: Conn, method: str, path: str, headers: dict[str, str] | None = None,
                   body: bytes | None = None, *, keep_body: bool = True, rate: float = 0.0,
                   timeout: float = 10.0, send_rate: float = 0.0) -> Response:
    """One request and its whole response on `conn`; ExchangeError on any connection failure."""
    conn.used += 1
    w = conn.writer
    send_error = ""
    try:
        w.write(request_head(method, path, headers or {}, None if body is None else len(body)))
        if body:
            step = READ
            t0 = time.monotonic()
            for i in range(0, len(body), step):
                w.write(body[i:i + step])
                await asyncio.wait_for(w.drain(), timeout)
                if send_rate > 0:
                    ahead = (i + step) / send_rate - (time.monotonic() - t0)
                    if ahead > 0:
                        await asyncio.sleep(ahead)
        await asyncio.wait_for(w.drain(), timeout)
    except (OSError, TimeoutError, ssl.SSLError, RuntimeError) as exc:
        # A server may answer and close before our last drain() returns (asyncio then raises
        # "Connection lost"; uvloop a RuntimeError on a closed transport): the answer, if any,
        # is in the reader's buffer and decides.
        send_error = type(exc).__name__
    try:
        raw = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), timeout)
    except asyncio.IncompleteReadError as exc:
        raise ExchangeError("send" if send_error else "head",
                            send_error or f"EOF after {len(exc.partial)} bytes") from None
    except (OSError, TimeoutError, ssl.SSLError, asyncio.LimitOverrunError) as exc:
        raise ExchangeError("send" if send_error else "head",
                            send_error or type(exc).__name__) from None
    resp = parse_head(raw[:-4])
    try:
        await _read_body(conn, resp, keep_body, rate, timeout, method)
    except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError,
            asyncio.LimitOverrunError, ValueError) as exc:
        raise ExchangeError("body", f"{type(exc).__name__} after {resp.length} bytes",
                            resp) from None
    except ExchangeError as exc:
        raise ExchangeError(exc.stage, exc.reason, resp) from None
    return resp


# --- WebSocket (RFC 6455), client side -----------------------------------------------------
async def ws_open(conn: Conn, path: str, timeout: float) -> Response:
    key = base64.b64encode(os.urandom(16)).decode()
    head = request_head("GET", path, {"Upgrade": "websocket", "Connection": "Upgrade",
                                      "Sec-WebSocket-Key": key, "Sec-WebSocket-Version": "13"},
                        None)
    try:
        conn.writer.write(head)
        raw = await asyncio.wait_for(conn.reader.readuntil(b"\r\n\r\n"), timeout)
    except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError,
            RuntimeError) as exc:
        raise ExchangeError("head", type(exc).__name__) from None
    resp = parse_head(raw[:-4])
    if resp.status != 101:
        raise ExchangeError("upgrade", f"status {resp.status}")
    return resp


def ws_frame(payload: bytes, opcode: int = 1) -> bytes:
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 65536:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    return head + mask + masked


async def ws_recv(conn: Conn, timeout: float) -> tuple[int, bytes]:
    r = conn.reader
    b0, b1 = await asyncio.wait_for(r.readexactly(2), timeout)
    n = b1 & 0x7F
    if n == 126:
        (n,) = struct.unpack("!H", await r.readexactly(2))
    elif n == 127:
        (n,) = struct.unpack("!Q", await r.readexactly(8))
    return b0 & 0x0F, await asyncio.wait_for(r.readexactly(n), timeout)


async def ws_echo(conn: Conn, payload: bytes, timeout: float) -> None:
    try:
        conn.writer.write(ws_frame(payload))
        await asyncio.wait_for(conn.writer.drain(), timeout)
        op, data = await ws_recv(conn, timeout)
    except (OSError, TimeoutError, ssl.SSLError, asyncio.IncompleteReadError,
            RuntimeError) as exc:
        raise ExchangeError("ws", type(exc).__name__) from None
    if op != 1 or data != payload:
        raise ExchangeError("ws", f"echo mismatch (opcode {op}, {len(data)} bytes)")


async def ws_close(conn: Conn) -> None:
    try:
        conn.writer.write(ws_frame(b"\x03\xe8", opcode=8))
        await asyncio.wait_for(conn.writer.drain(), 2)
    except (OSError, TimeoutError, ssl.SSLError, RuntimeError):
        pass
    conn.close()
