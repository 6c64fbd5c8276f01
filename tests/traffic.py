"""Background requests for tests that need counters (and sparklines) to move."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import aiohttp


@contextlib.asynccontextmanager
async def background_traffic(url: str, *, fresh_connections: bool = False,
                             gap_s: float = 0.02) -> AsyncIterator[None]:
    """GET `url` in a loop until the block ends. `fresh_connections`: a new connection (so a
    new source port, so another client-table bucket) per request."""

    async def run() -> None:
        conn = aiohttp.TCPConnector(force_close=fresh_connections)
        async with aiohttp.ClientSession(connector=conn,
                                         timeout=aiohttp.ClientTimeout(total=3)) as s:
            while True:
                with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                    async with s.get(url) as r:
                        await r.read()
                await asyncio.sleep(gap_s)

    task = asyncio.ensure_future(run())
    try:
        yield
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
