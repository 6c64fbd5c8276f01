"""A service, a pool and a class added and removed by `dlba config push`, no restart: every
node opens the service's port, routes to the new pool, and closes the port again."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from dlba.config.push import push_main
from tests.integration.config_array import config_array
from tests.integration.loopback import free_port

VIP = "127.0.80.1"


async def push(path: Path) -> int:
    return await asyncio.to_thread(push_main, [str(path)])


async def test_service_added_and_removed_by_push(tmp_path: Path) -> None:
    port = free_port()
    async with config_array(tmp_path) as arr:
        base = [arr.backend(1, "b1"), arr.backend(2, "b2", 'pool = "web"')]
        service = f"""
[[pools]]
name = "web"

[[services]]
name = "shop"
vips = ["{VIP}"]
ports = [{port}]
tls_ports = []
pool = "web"

[[classes]]
name = "gold"
priority = 0
vips = ["{VIP}"]
"""
        # The first push adds the pool "web" only (b2 in it, nobody routed there).
        pools_only = arr.render(base) + '\n[[pools]]\nname = "web"\n'
        assert await push(arr.push_file(pools_only)) == 0
        assert await push(arr.push_file(arr.render(base) + service)) == 0
        async with aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(force_close=True)) as s:
            seen = set()
            for _ in range(6):  # each connection lands on one of the three nodes
                async with s.get(f"http://{VIP}:{port}/whoami") as r:
                    seen.add(await r.text())
            assert seen == {"b2"}  # the service's pool
            for name in arr.names:
                view = arr.nodes[name].ctx.services.to_json()
                assert [x["name"] for x in view["services"]] == ["shop"]
            assert await push(arr.push_file(pools_only)) == 0
            for _ in range(3):
                try:
                    async with s.get(f"http://{VIP}:{port}/whoami") as r:
                        raise AssertionError(f"still served: {r.status}")
                except aiohttp.ClientConnectorError:
                    pass
