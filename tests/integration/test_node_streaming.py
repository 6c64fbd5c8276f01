"""Issue 2, point 3: a 1 GB response and a large upload stream through a real `dlba node`
process without being buffered (its RSS stays small while the client reads slowly)."""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.loopback import free_port, make_certs, node_processes, write_config

GB = 1_000_000_000


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


@pytest.fixture
def node_process(tmp_path: Path) -> Iterator[tuple[int, int]]:
    """(node pid, node http port) of real processes: one demo back end, one node."""
    certs = make_certs(tmp_path / "certs")
    bport, hport = free_port(), free_port()
    cfg = write_config(
        tmp_path, certs, [(1, f"127.0.0.1:{bport}")], http_port=hport, https_port=free_port(),
        admin_port=free_port(),
    )
    with node_processes(cfg, [bport], [hport]) as pid:
        yield pid, hport


async def test_one_gigabyte_response_is_streamed(node_process: tuple[int, int]) -> None:
    pid, port = node_process
    base = rss_mb(pid)
    reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=2**20)
    writer.write(f"GET /bytes/{GB} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    assert head.startswith(b"HTTP/1.1 200") and f"Content-Length: {GB}".encode() in head
    # a slow reader first: the node must apply back-pressure, not buffer
    await asyncio.sleep(1.0)
    peak = rss_mb(pid)
    got = 0
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 120
    while got < GB:
        chunk = await asyncio.wait_for(reader.read(1 << 20), 20)
        assert chunk, "connection closed early"
        got += len(chunk)
        if got % (64 << 20) < (1 << 20):
            peak = max(peak, rss_mb(pid))
        assert loop.time() < deadline
    writer.close()
    assert got == GB
    assert peak - base < 64, f"node RSS grew {peak - base:.0f} MB while streaming 1 GB"


async def test_large_upload_is_streamed(node_process: tuple[int, int]) -> None:
    pid, port = node_process
    base = rss_mb(pid)
    size = 200 * 1024 * 1024
    block = os.urandom(1 << 20)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"POST /digest HTTP/1.1\r\nHost: x\r\nContent-Length: {size}\r\n\r\n".encode()
    )
    digest = hashlib.sha256()
    peak = base
    for i in range(size >> 20):
        writer.write(block)
        digest.update(block)
        await writer.drain()
        if i % 32 == 0:
            peak = max(peak, rss_mb(pid))
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
    assert head.startswith(b"HTTP/1.1 200")
    body = await asyncio.wait_for(reader.read(4096), 10)
    writer.close()
    assert f'"length": {size}'.encode() in body or f'"length":{size}'.encode() in body
    assert digest.hexdigest().encode() in body
    assert peak - base < 64, f"node RSS grew {peak - base:.0f} MB during a 200 MB upload"
