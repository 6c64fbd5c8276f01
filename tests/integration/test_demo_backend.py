"""The demo back end on a real 127.0.0.1 port, driven by a real HTTP client."""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from dlba.demo_backend import bound_port, demo_backend_main, parse_listen, start_demo_backend
from dlba.scheduling.cookie_injection import parse_set_cookie
from tests.integration.loopback import free_port


@pytest.fixture
async def base() -> AsyncIterator[str]:
    runner = await start_demo_backend("B7", "127.0.0.1", 0)
    try:
        yield f"http://127.0.0.1:{bound_port(runner)}"
    finally:
        await runner.cleanup()


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def test_contract_routes(base: str, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{base}/whoami") as r:
        assert r.status == 200 and await r.text() == "B7"
        assert r.headers["X-Backend"] == "B7"
    async with session.get(f"{base}/health") as r:
        assert r.status == 200 and r.headers["X-Backend"] == "B7"
    async with session.get(f"{base}/no/such/path") as r:
        assert r.status == 404 and r.headers["X-Backend"] == "B7"


async def test_login_sets_session_cookie(base: str, session: aiohttp.ClientSession) -> None:
    values = []
    for _ in range(2):
        async with session.get(f"{base}/login") as r:
            (line,) = r.headers.getall("Set-Cookie")
            assert r.headers["X-Backend"] == "B7"
        parsed = parse_set_cookie(line)
        assert parsed is not None
        name, value, attrs = parsed
        assert name == "JSESSIONID" and len(value) >= 16
        assert attrs == {"Path": "/", "Max-Age": "3600", "HttpOnly": ""}
        assert line == f"JSESSIONID={value}; Path=/; Max-Age=3600; HttpOnly"
        values.append(value)
    assert values[0] != values[1]  # random per login


async def test_bytes_streams_exact_length(base: str, session: aiohttp.ClientSession) -> None:
    for n in (0, 1, 65536, 65537, 5_000_000):
        async with session.get(f"{base}/bytes/{n}") as r:
            assert r.status == 200 and r.content_length == n
            got = 0
            async for chunk in r.content.iter_chunked(1 << 16):
                got += len(chunk)
            assert got == n
    async with session.get(f"{base}/bytes/-1") as r:
        assert r.status in (400, 404)
    async with session.get(f"{base}/bytes/x") as r:
        assert r.status == 400


def test_bytes_does_not_buffer_1gb() -> None:
    """A 1 GB body read slowly over a raw socket: the server's memory must stay flat."""
    root = str(Path(__file__).resolve().parents[2])
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [root,
                                                                     os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen([sys.executable, "-m", "dlba.demo_backend", "--name", "big",
                             "--listen", f"127.0.0.1:{free_port()}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    try:
        port = _wait_listening(proc)
        with socket.create_connection(("127.0.0.1", port)) as s:
            s.sendall(b"GET /bytes/1073741824 HTTP/1.1\r\nHost: x\r\n\r\n")
            s.recv(65536)
            time.sleep(1.0)  # reader stalls: a buffering server would now fill memory
            rss_mb = _rss_kb(proc.pid) / 1024
            assert rss_mb < 300, f"demo back end buffered the body: RSS {rss_mb:.0f} MB"
            total = 0
            deadline = time.monotonic() + 120
            while total < 200_000_000 and time.monotonic() < deadline:
                total += len(s.recv(1 << 20))
            assert total >= 200_000_000
            assert _rss_kb(proc.pid) / 1024 < 300
    finally:
        proc.terminate()
        assert proc.wait(10) == 0  # SIGTERM is a clean stop



def _wait_listening(proc: subprocess.Popen[str]) -> int:
    assert proc.stderr is not None
    os.set_blocking(proc.stderr.fileno(), True)
    line = proc.stderr.readline()
    assert "listening on" in line, line
    return int(line.rsplit(":", 1)[1])


def _rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


async def test_echo_and_digest_stream(base: str, session: aiohttp.ClientSession) -> None:
    body = os.urandom(3 * 1024 * 1024 + 7)

    async def gen() -> AsyncIterator[bytes]:
        for i in range(0, len(body), 100_000):
            yield body[i:i + 100_000]

    async with session.post(f"{base}/echo", data=gen()) as r:  # chunked upload
        assert r.status == 200 and await r.read() == body
    async with session.post(f"{base}/echo", data=body) as r:  # Content-Length upload
        assert r.content_length == len(body) and await r.read() == body
    async with session.post(f"{base}/digest", data=gen()) as r:
        assert await r.json() == {"length": len(body), "sha256": hashlib.sha256(body).hexdigest()}


async def test_slow(base: str, session: aiohttp.ClientSession) -> None:
    t0 = time.monotonic()
    async with session.get(f"{base}/slow", params={"ms": "300"}) as r:
        assert r.status == 200
    assert time.monotonic() - t0 >= 0.29


async def test_headers_and_status(base: str, session: aiohttp.ClientSession) -> None:
    async with session.get(f"{base}/headers", headers={"X-Forwarded-For": "203.0.113.9"}) as r:
        got = await r.json()
    assert got["X-Forwarded-For"] == "203.0.113.9"
    assert got["Host"].startswith("127.0.0.1:")
    for code in (201, 204, 404, 503):
        async with session.get(f"{base}/status/{code}") as r:
            assert r.status == code and r.headers["X-Backend"] == "B7"
    async with session.get(f"{base}/status/99") as r:
        assert r.status == 400


async def test_websocket_echo(base: str, session: aiohttp.ClientSession) -> None:
    async with session.ws_connect(f"{base}/ws") as ws:
        await ws.send_str("hello")
        assert await ws.receive_str(timeout=5) == "hello"
        await ws.send_bytes(b"\x00\x01")
        assert await ws.receive_bytes(timeout=5) == b"\x00\x01"


async def test_keepalive_pipelined(base: str) -> None:
    # Two pipelined requests on one connection: both answered, so the node's back-end
    # keepalive pools have something real to reuse.
    reader, writer = await asyncio.open_connection("127.0.0.1", int(base.rsplit(":", 1)[1]))
    writer.write(b"GET /whoami HTTP/1.1\r\nHost: x\r\n\r\nGET /health HTTP/1.1\r\nHost: x\r\n\r\n")
    data = b""
    while data.count(b"HTTP/1.1 200") < 2:
        chunk = await asyncio.wait_for(reader.read(4096), 5)
        assert chunk, data
        data += chunk
    writer.close()


def test_main_usage_errors() -> None:
    assert demo_backend_main(["--listen", "1.2.3.4:80"]) == 2  # --name missing
    assert demo_backend_main(["--name", "x", "--listen", "nohost"]) == 2
    assert demo_backend_main(["--name", "x", "--listen", "1.2.3.4:99999"]) == 2
    assert parse_listen("[::1]:8080") == ("::1", 8080)
    assert parse_listen("198.18.1.101:8080") == ("198.18.1.101", 8080)


async def test_one_log_line_per_request(base: str, session: aiohttp.ClientSession,
                                        caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="dlba.demo_backend")
    for path in ("/whoami", "/status/503"):
        async with session.get(f"{base}{path}") as r:
            await r.read()
    await asyncio.sleep(0.05)
    lines = [r.getMessage() for r in caplog.records if r.name == "dlba.demo_backend"]
    assert len(lines) == 2, lines
    assert "backend=B7" in lines[0] and "GET /whoami" in lines[0] and "status=200" in lines[0]
    assert "status=503" in lines[1]
