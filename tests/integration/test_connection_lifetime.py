"""A closed client connection is freed by reference counting, not left to the cycle collector
(issue 7: the collector's passes over per-connection garbage cost ~2 % of a full handshake's
CPU, and the garbage stays in memory until a pass finds it)."""

from __future__ import annotations

import asyncio
import gc
import socket
import ssl
from pathlib import Path

from dlba.proxy.client_connection import ClientConnection
from dlba.proxy.core_exchange import Exchange
from dlba.proxy.core_session import ClientSession
from dlba.tls.transport import TLSTransport
from tests.integration.loopback import loopback_array

REQUEST = b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\n"
LAST = b"GET /whoami HTTP/1.0\r\n\r\n"  # HTTP/1.0 without keep-alive: the node closes


def read_until_close(s: socket.socket) -> bytes:
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def traffic(http_port: int, https_port: int, cafile: Path) -> list[bytes]:
    answers = []
    with socket.create_connection(("127.0.0.1", http_port), timeout=5) as s:
        s.sendall(REQUEST + LAST)  # keepalive, then closed by the node
        answers.append(read_until_close(s))
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = False
    with socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(REQUEST + LAST)
        answers.append(read_until_close(s))
    with socket.create_connection(("127.0.0.1", https_port), timeout=5) as raw, \
            ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(REQUEST)
        answers.append(s.recv(65536))  # then the client closes a keepalive connection
    with socket.create_connection(("127.0.0.1", https_port), timeout=5) as s:
        s.sendall(b"GET / HTTP/1.1\r\n\r\n")  # not TLS: the handshake fails
        answers.append(read_until_close(s))
    with socket.create_connection(("127.0.0.1", http_port), timeout=5) as s:
        s.sendall(b"GARBAGE\r\n\r\n")  # a 400, then the node closes
        answers.append(read_until_close(s))
    return answers


async def test_closed_connections_leave_no_cyclic_garbage(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 1) as arr:
        gc.collect()
        gc.disable()
        gc.set_debug(gc.DEBUG_SAVEALL)  # what a pass finds unreachable stays in gc.garbage
        try:
            answers = await asyncio.to_thread(traffic, arr.http_port, arr.https_port,
                                              arr.certs.ca_cert)
            deadline = asyncio.get_running_loop().time() + 5
            while arr.node.ctx.stats.connections_open and \
                    asyncio.get_running_loop().time() < deadline:
                await asyncio.sleep(0.05)
            open_after = arr.node.ctx.stats.connections_open
            gc.collect()
            leaked = sorted(type(o).__name__ for o in gc.garbage
                            if isinstance(o, (ClientConnection, ClientSession, TLSTransport,
                                              Exchange)))
        finally:
            gc.set_debug(0)
            gc.garbage.clear()
            gc.enable()
    assert answers[0].count(b"HTTP/1.1 200") == 2
    assert answers[1].count(b"HTTP/1.1 200") == 2
    assert answers[2].startswith(b"HTTP/1.1 200")
    assert b"HTTP/1.1 400" in answers[4]
    assert open_after == 0
    assert leaked == []
