"""Issue 2, points 6-8: web server status table, re-routing, health and agent checks, admin API."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from dlba.demo_backend import start_demo_backend
from tests.integration.loopback import loopback_array


async def wait_for(cond: Callable[[], bool], timeout: float = 5.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not cond():
        assert loop.time() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.02)


async def get_all(url: str, n: int, **kw: object) -> list[tuple[int, str]]:
    out = []
    async with aiohttp.ClientSession() as s:
        for _ in range(n):
            async with s.get(url, **kw) as r:  # type: ignore[arg-type]
                out.append((r.status, r.headers.get("X-Backend", "")))
    return out


async def test_dead_backend_rerouted_without_client_error(tmp_path: Path) -> None:
    extra = "[proxy]\nfail_threshold = 2\nretry_backoff_s = 60\nretry_backoff_max_s = 60\n"
    async with loopback_array(tmp_path, 2, dead_backends=1, extra=extra) as arr:
        results = await get_all(arr.url + "/whoami", 30)
        assert all(status == 200 for status, _ in results)
        dead = arr.node.ctx.table.get(3)
        assert dead is not None
        assert dead.unable_to_connect == 2  # marked down after 2, then not tried for 60 s
        assert dead.state.value == "down"
        assert arr.node.ctx.stats.reroutes == 2


async def test_backend_down_then_back_up_with_backoff(tmp_path: Path) -> None:
    extra = "[proxy]\nfail_threshold = 1\nretry_backoff_s = 0.2\nretry_backoff_max_s = 0.4\n"
    async with loopback_array(tmp_path, 2, extra=extra) as arr:
        port = arr.backend_ports["b2"]
        await arr.stop_backend("b2")
        results = await get_all(arr.url + "/whoami", 10)
        assert {b for _, b in results} == {"b1"}
        assert all(s == 200 for s, _ in results)
        row = arr.node.ctx.table.get(2)
        assert row is not None and row.state.value == "down"
        arr.backends["b2"] = await start_demo_backend("b2", "127.0.0.1", port)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        seen: set[str] = set()
        while "b2" not in seen:
            assert loop.time() < deadline, "b2 never came back"
            seen |= {b for _, b in await get_all(arr.url + "/whoami", 4)}
            await asyncio.sleep(0.1)
        assert row.state.value == "up"


async def reset_server(hits: list[int]) -> asyncio.Server:
    """A back end that accepts, reads the request, and resets before any response byte."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(1024)
        hits.append(1)
        sock = writer.get_extra_info("socket")
        import socket
        import struct

        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_reset_before_response_retried_for_idempotent_only(tmp_path: Path) -> None:
    hits: list[int] = []
    srv = await reset_server(hits)
    port = srv.sockets[0].getsockname()[1]
    extra = f'[[backends]]\nid = 9\naddress = "127.0.0.1:{port}"\nweight = 1000\n'
    try:
        async with loopback_array(tmp_path, 1, extra=extra) as arr:
            results = await get_all(arr.url + "/whoami", 5)
            assert all(s == 200 for s, _ in results), results
            assert hits, "the resetting back end was never tried"
            async with aiohttp.ClientSession() as s:
                statuses = []
                for _ in range(6):
                    async with s.post(arr.url + "/echo", data=b"x") as r:
                        statuses.append(r.status)
            # a POST that reached the resetting back end is not replayed: 502, never a retry
            assert 502 in statuses
    finally:
        srv.close()


async def test_active_health_check_marks_down_and_up(tmp_path: Path) -> None:
    extra = "[proxy]\nhealth_interval_s = 0.1\n"
    async with loopback_array(
        tmp_path, 2, extra=extra,
        backend_extra={1: 'health = "/status/503"', 2: 'health = "/health"'},
    ) as arr:
        row1 = arr.node.ctx.table.get(1)
        row2 = arr.node.ctx.table.get(2)
        assert row1 is not None and row2 is not None
        await wait_for(lambda: row1.state.value == "down")
        assert row2.state.value == "up"
        results = await get_all(arr.url + "/whoami", 6)
        assert {b for _, b in results} == {"b2"}


async def test_disabled_backend_drains(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 2) as arr:
        async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as s:
            owner = ""
            while owner != "b1":  # a session on b1
                s.cookie_jar.clear()
                async with s.get(arr.url + "/login") as r:
                    owner = r.headers["X-Backend"]
            async with s.post(
                arr.admin_url + "/backends/1/disable",
                headers={"Authorization": f"Bearer {arr.token}"},
            ) as r:
                assert r.status == 200
                assert (await r.json())["enabled"] is False
            for _ in range(5):  # the cookie session finishes on b1
                async with s.get(arr.url + "/whoami") as r:
                    assert await r.text() == "b1"
        results = await get_all(arr.url + "/whoami", 8)  # no new sessions on b1
        assert {b for _, b in results} == {"b2"}


async def agent_server(reply: list[bytes]) -> asyncio.Server:
    async def handle(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(reply[0] + b"\n")
        await writer.drain()
        writer.close()

    return await asyncio.start_server(handle, "127.0.0.1", 0)


async def test_agent_check_drain_weight_down(tmp_path: Path) -> None:
    reply = [b"ready 50%"]
    srv = await agent_server(reply)
    port = srv.sockets[0].getsockname()[1]
    extra = "[proxy]\nagent_interval_s = 0.1\n"
    try:
        async with loopback_array(
            tmp_path, 2, extra=extra, backend_extra={1: f'agent = "127.0.0.1:{port}"'}
        ) as arr:
            row = arr.node.ctx.table.get(1)
            assert row is not None
            await wait_for(lambda: row.effective_weight == 50)
            reply[0] = b"drain"
            await wait_for(lambda: row.state.value == "draining")
            results = await get_all(arr.url + "/whoami", 6)
            assert {b for _, b in results} == {"b2"}
            reply[0] = b"down # maintenance"
            await wait_for(lambda: row.state.value == "down")
            reply[0] = b"up 100%"
            await wait_for(lambda: row.state.value == "up" and row.effective_weight == 100)
    finally:
        srv.close()


async def test_admin_api_status_metrics_auth(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 2) as arr:
        await get_all(arr.url + "/whoami", 10)
        auth = {"Authorization": f"Bearer {arr.token}"}
        async with aiohttp.ClientSession() as s:
            async with s.get(arr.admin_url + "/healthz") as r:
                assert r.status == 200
            for path in ("/status", "/metrics"):
                async with s.get(arr.admin_url + path) as r:
                    assert r.status == 401
                async with s.get(
                    arr.admin_url + path, headers={"Authorization": "Bearer wrong"}
                ) as r:
                    assert r.status == 401
            async with s.post(arr.admin_url + "/backends/1/drain") as r:
                assert r.status == 401
            async with s.get(arr.admin_url + "/status", headers=auth) as r:
                st = await r.json()
            async with s.get(arr.admin_url + "/metrics", headers=auth) as r:
                text = await r.text()
            async with s.post(arr.admin_url + "/backends/2/drain", headers=auth) as r:
                assert (await r.json())["state"] == "draining"
            async with s.post(arr.admin_url + "/backends/7/drain", headers=auth) as r:
                assert r.status == 404
        assert st["node"] == "n1"
        for key in ("role", "scheduler", "config_version", "table_version", "nodes", "backends"):
            assert key in st
        b = st["backends"][0]
        for key in ("id", "address", "cookie_groups", "avg_response_ms", "hits",
                    "open_connections", "unable_to_connect", "failed", "enabled", "weight"):
            assert key in b
        assert sum(x["hits"] for x in st["backends"]) == 10
        n = st["nodes"][0]
        for key in ("name", "address", "mac", "ip_groups", "avg_response_ms", "hits",
                    "open_connections", "failed", "enabled", "weight"):
            assert key in n
        fams = {f.name: f for f in text_string_to_metric_families(text)}
        reqs = fams["dlba_requests"]
        assert reqs.samples[0].value == 10
        per = {s.labels["backend"]: s.value for s in fams["dlba_backend_requests"].samples
               if s.name.endswith("_total")}
        assert sum(per.values()) == 10
        assert "dlba_backend_request_duration_seconds" in fams
