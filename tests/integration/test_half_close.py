"""A long Connection: close response ends with a half-close: the node's socket stays open,
reading and dropping, until the client closes first. A node keeps no TIME_WAIT, so a socket it
closed itself vanishes as soon as its FIN is acknowledged, and anything the client sends after
that (a window update while it still reads, a TLS close_notify) draws a reset: a TLS client
then loses the tail of the response it has not read yet (the chaos soak's cut downloads)."""

from __future__ import annotations

import asyncio
import socket
import ssl
import time
from pathlib import Path

from tests.integration.loopback import loopback_array

SIZE = 1_000_000


def _get(s: socket.socket | ssl.SSLSocket, size: int) -> bytes:
    s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n" % size)
    out = b""
    while chunk := s.recv(65536):
        out += chunk
    return out


def _send_after_eof(http_port: int, size: int) -> tuple[bytes, str]:
    """Read the whole response and the node's FIN, then send twice; an OSError on the second
    send means the first drew a reset: the node's socket was already gone."""
    with socket.create_connection(("127.0.0.1", http_port), timeout=5) as s:
        answer = _get(s, size)
        try:
            s.sendall(b"\r\n")
            time.sleep(0.3)
            s.sendall(b"\r\n")
        except OSError as e:
            return answer, type(e).__name__
        return answer, "ok"


def _tls_close_after_eof(https_port: int, cafile: Path) -> tuple[bytes, float]:
    """Over TLS: read the whole response and the node's close_notify, then wait before
    answering with ours; how long the node kept its socket open for it."""
    ctx = ssl.create_default_context(cafile=str(cafile))
    ctx.check_hostname = False
    raw = socket.create_connection(("127.0.0.1", https_port), timeout=5)
    s = ctx.wrap_socket(raw, server_hostname="localhost")
    answer = _get(s, SIZE)
    time.sleep(0.3)
    t0 = time.monotonic()
    plain = s.unwrap()  # our close_notify: the node may now close
    eof = plain.recv(1)  # the node's FIN, not a reset
    plain.close()
    return answer + eof, time.monotonic() - t0


async def test_long_close_response_waits_for_the_client_to_close(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 1) as arr:
        answer, outcome = await asyncio.to_thread(_send_after_eof, arr.http_port, SIZE)
        assert answer.startswith(b"HTTP/1.1 200")
        assert len(answer.split(b"\r\n\r\n", 1)[1]) == SIZE
        assert outcome == "ok"  # the node still held the connection and dropped the bytes
        tls_answer, waited = await asyncio.to_thread(_tls_close_after_eof, arr.https_port,
                                                     arr.certs.ca_cert)
        assert len(tls_answer.split(b"\r\n\r\n", 1)[1]) == SIZE
        assert waited < 5
        deadline = asyncio.get_running_loop().time() + 5
        while arr.node.ctx.stats.connections_open and \
                asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.05)
        assert arr.node.ctx.stats.connections_open == 0


async def test_short_close_response_still_closes_at_once(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 1) as arr:
        answer, outcome = await asyncio.to_thread(_send_after_eof, arr.http_port, 1000)
        assert answer.startswith(b"HTTP/1.1 200")
        # The cheap close: the node's socket is gone, so the bytes sent after it draw a reset.
        assert outcome in ("BrokenPipeError", "ConnectionResetError")
