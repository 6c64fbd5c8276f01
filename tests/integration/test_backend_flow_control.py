"""Flow control between a slow client and a back end must not outlive the exchange.

A client that reads slower than the back end sends makes the node pause reading the back-end
connection (ClientConnection.pause_writing). When the read that ends the response is the one
that fills the client's buffer, the pause comes in the same callback that completes the
response, and the connection went back to its pool still paused: the next request sent on it
was answered by the back end, but the node never read the answer (the chaos soak's requests
without a response, after 10 MB downloads read at 5 MB/s).
"""

from __future__ import annotations

import asyncio
import socket
from collections.abc import Callable
from pathlib import Path

from dlba.config import load_config
from dlba.node import NodeRuntime
from dlba.proxy.client_connection import ClientConnection
from dlba.proxy.core_exchange import Exchange
from tests.integration.loopback import free_port, make_certs, write_config

PIECE = 32 * 1024  # below the client transport's high-water mark (64 KiB): no pause
LAST = 72 * 1024  # above it: written at once, it pauses reading the back end
OK = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok"


def chunk(data: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(data), data)


class Backend(asyncio.Protocol):
    """`GET /big`: handed to the test, which writes its answer; anything else: `ok` at once."""

    def __init__(self, big: asyncio.Queue[asyncio.Transport]) -> None:
        self.big = big
        self.buf = b""
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None
        self.buf += data
        while b"\r\n\r\n" in self.buf:
            head, _, self.buf = self.buf.partition(b"\r\n\r\n")
            if head.startswith(b"GET /big "):
                self.big.put_nowait(self.transport)
            else:
                self.transport.write(OK)


async def get(port: int, path: str, timeout: float) -> bytes:
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        w.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        return await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), timeout)
    finally:
        w.close()


def forwarded(ex: Exchange, n: int) -> Callable[[], bool]:
    return lambda: ex.bytes_out == n


async def wait_for(cond: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while not cond():
        assert loop.time() < deadline, what
        await asyncio.sleep(0.001)


async def test_back_end_connection_reused_after_a_slow_client_answers(tmp_path: Path) -> None:
    loop = asyncio.get_running_loop()
    big: asyncio.Queue[asyncio.Transport] = asyncio.Queue()
    server = await loop.create_server(lambda: Backend(big), "127.0.0.1", 0)
    bport = server.sockets[0].getsockname()[1]
    http_port = free_port()
    cfg = write_config(tmp_path, make_certs(tmp_path / "certs"), [(1, f"127.0.0.1:{bport}")],
                       http_port=http_port, https_port=free_port(), admin_port=free_port())
    node = NodeRuntime(load_config(cfg), "n1")
    await node.start()
    slow = socket.socket()
    try:
        # The slow client: a small receive buffer, and it reads nothing until the end.
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.setblocking(False)
        await loop.sock_connect(slow, ("127.0.0.1", http_port))
        await loop.sock_sendall(slow, b"GET /big HTTP/1.1\r\nHost: x\r\n\r\n")
        backend = await asyncio.wait_for(big.get(), 10)
        peer = f"127.0.0.1:{slow.getsockname()[1]}"
        client = next(c for c in node.ctx.connections
                      if isinstance(c, ClientConnection) and c.peer == peer)
        assert client.transport is not None and client.queue
        ex = client.queue[0]
        backend.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n")
        # Pieces the node forwards one at a time, until the kernel takes no more of them
        # for the client and the node starts to buffer (still under its high-water mark).
        sent = 0
        while client.transport.get_write_buffer_size() == 0:
            assert sent < 256 * 1024 * 1024, "the client's socket never filled"
            backend.write(chunk(b"x" * PIECE))
            sent += PIECE
            await wait_for(forwarded(ex, sent), "the node did not forward a piece")
        # The end of the response in one read, which also crosses the high-water mark.
        backend.write(chunk(b"y" * LAST) + b"0\r\n\r\n")
        await wait_for(lambda: ex.finished, "the response did not complete")
        # The pooled connection is the one taken next: its answer must be read.
        head = await get(http_port, "/small", timeout=3)
        assert head.startswith(b"HTTP/1.1 200"), head
        assert node.ctx.pools[1].connects == 1  # the same back-end connection served it
    finally:
        slow.close()
        await node.stop()
        server.close()
        await server.wait_closed()
