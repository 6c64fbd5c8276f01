"""A saturated pool through a real node and a real slow back end: requests beyond the back
end's maxconn wait in the pool's queue; the low class waits behind the high one and is shed
(503 with Retry-After) when its wait runs out, the high class is served."""

from __future__ import annotations

import asyncio
from pathlib import Path

import aiohttp

from tests.integration.loopback import free_port, loopback_array

GOLD_VIP, BRONZE_VIP = "127.0.30.2", "127.0.30.3"


def config(port: int) -> str:
    return f"""
[[pools]]
name = "default"
queue_timeout_s = 2

[[services]]
name = "svc"
vips = ["127.0.30.0/29"]
ports = [{port}]
tls_ports = []

[[classes]]
name = "gold"
priority = 0
vips = ["{GOLD_VIP}/32"]

[[classes]]
name = "bronze"
priority = 5
vips = ["{BRONZE_VIP}/32"]
"""


async def test_low_class_is_shed_high_class_is_served(tmp_path: Path) -> None:
    port = free_port()
    async with loopback_array(tmp_path, 1, extra=config(port),
                              backend_extra={1: "maxconn = 2"}) as arr, aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, force_close=True)) as s:

        async def get(vip: str) -> tuple[int, str]:
            async with s.get(f"http://{vip}:{port}/slow?ms=250") as r:
                await r.read()
                return r.status, r.headers.get("Retry-After", "")

        # Bronze arrives all along (50/s for 3 s against 8/s of capacity); gold comes in
        # the middle of it: by priority it waits for the next slot only. (Served first come
        # first served, it would wait behind bronze that times out just before it.)
        bronze: list[asyncio.Task[tuple[int, str]]] = []
        gold_task = None
        for i in range(150):
            bronze.append(asyncio.create_task(get(BRONZE_VIP)))
            if i == 50:
                gold_task = asyncio.gather(*(get(GOLD_VIP) for _ in range(4)))
            await asyncio.sleep(0.02)
        assert gold_task is not None
        gold = await gold_task
        low = await asyncio.gather(*bronze)
        async with s.get(arr.admin_url + "/status",
                         headers={"Authorization": f"Bearer {arr.token}"}) as r:
            status = await r.json()
        async with s.get(arr.admin_url + "/metrics",
                         headers={"Authorization": f"Bearer {arr.token}"}) as r:
            metrics = await r.text()
    assert [st for st, _ in gold] == [200] * 4
    shed = [ra for st, ra in low if st == 503]
    assert shed and all(ra == "2" for ra in shed)
    assert all(st in (200, 503) for st, _ in low)
    pool = status["services"]["pools"]["default"]
    assert pool["classes"]["gold"]["shed"] == 0 and pool["classes"]["gold"]["queued"] >= 1
    assert pool["classes"]["bronze"]["shed"] == len(shed)
    assert pool["slots"] == 2 and pool["queue_depth"] == 0
    assert (f'dlba_class_shed_total{{class="bronze",node="n1",pool="default"}} {len(shed)}.0'
            in metrics)
    assert 'dlba_class_shed_total{class="gold",node="n1",pool="default"} 0.0' in metrics
    assert 'dlba_pool_queue_depth{node="n1",pool="default"} 0.0' in metrics
    assert 'dlba_service_requests_total{node="n1",service="svc"} 154.0' in metrics
