"""With worker processes the node's /status and /metrics sum every worker's services, pools
and classes (each worker counts its own requests)."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.integration.loopback import free_port, loopback_array


async def test_worker_views_are_summed(tmp_path: Path) -> None:
    port = free_port()
    extra = f"""
[proxy]
workers = 2

[[services]]
name = "svc"
vips = ["127.0.60.0/30"]
ports = [{port}]
tls_ports = []

[[classes]]
name = "gold"
priority = 0
vips = ["127.0.60.1"]
"""
    async with loopback_array(tmp_path, 1, extra=extra) as arr, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(force_close=True)) as s:
        for _ in range(8):  # new connections: spread over both workers by SO_REUSEPORT
            async with s.get(f"http://127.0.60.1:{port}/whoami") as r:
                assert r.status == 200
        async with s.get(arr.admin_url + "/status",
                         headers={"Authorization": f"Bearer {arr.token}"}) as r:
            view = (await r.json())["services"]
    assert view["services"][0]["requests"] == 8
    assert view["pools"]["default"]["classes"]["gold"]["requests"] == 8
