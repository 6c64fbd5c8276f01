"""Issue 2, points 3-5: keepalive, pools, pipelining, scheduling order, cookie injection."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import aiohttp

from dlba.config import load_config
from dlba.node import NodeRuntime
from dlba.scheduling import cookie_codec
from tests.integration.loopback import free_port, loopback_array, raw_exchange, write_config


async def test_one_client_connection_reaches_several_backends(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 3) as arr:
        conn = aiohttp.TCPConnector(limit=1)
        async with aiohttp.ClientSession(connector=conn) as s:
            seen = []
            for _ in range(9):
                async with s.get(arr.url + "/whoami") as r:
                    assert r.status == 200
                    seen.append(await r.text())
        assert set(seen) == {"b1", "b2", "b3"}
        assert arr.node.ctx.stats.connections_total == 1
        # back-end connections come from keepalive pools: far fewer connects than requests
        connects = sum(p.connects for p in arr.node.ctx.pools.values())
        assert connects <= 3


async def test_pipelined_requests_answered_in_order(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 3) as arr:
        reader, writer = await asyncio.open_connection("127.0.0.1", arr.http_port)
        reqs = b"".join(
            f"GET /slow?ms={ms} HTTP/1.1\r\nHost: x\r\n\r\n".encode() for ms in (300, 0, 150, 0)
        ) + b"GET /bytes/5 HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
        writer.write(reqs)
        data = await asyncio.wait_for(reader.read(-1), 10)
        writer.close()
        assert data.count(b"HTTP/1.1 200") == 5
        # the slow first answer still comes first: its body names its delay
        bodies = [part for part in data.split(b"HTTP/1.1 200")[1:]]
        assert b"300" in bodies[0] and b"150" in bodies[2]


async def test_persistence_cookie_injected_and_honoured(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 3) as arr:
        async with aiohttp.ClientSession() as s, s.get(arr.url + "/login") as r:
            owner = r.headers["X-Backend"]
            lines = r.headers.getall("Set-Cookie")
        injected = [ln for ln in lines if ln.startswith("DLBASERVER=")]
        assert len(injected) == 1
        # same attributes as the session cookie
        assert "Path=/" in injected[0] and "Max-Age=3600" in injected[0]
        assert "HttpOnly" in injected[0]
        value = injected[0].split(";")[0].split("=", 1)[1]
        assert cookie_codec.decode(value, arr.node.ctx.secret) == int(owner[1:])
        # every later request goes to the owner, over HTTP and HTTPS
        async with aiohttp.ClientSession(cookies={"DLBASERVER": value}) as s:
            for url in (arr.url, arr.tls_url) * 5:
                async with s.get(url + "/whoami", ssl=arr.client_ssl()) as r:
                    assert await r.text() == owner
        assert arr.node.ctx.stats.cookie_injected == 1


async def test_cookie_valid_on_another_node_of_the_array(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 3) as arr:
        # a second node sharing the cluster secret and the back ends
        cfg2 = tmp_path / "n2"
        cfg2.mkdir()
        backends = [(b.id, str(b.address)) for b in arr.node.config.backends]
        path = write_config(
            cfg2, arr.certs, backends, http_port=free_port(), https_port=free_port(),
            admin_port=free_port(), name="n2",
        )
        node2 = NodeRuntime(load_config(path), "n2")
        await node2.start()
        try:
            # cookies are not port-specific: a browser sends it to every node behind the VIP
            jar = aiohttp.CookieJar(unsafe=True)
            async with aiohttp.ClientSession(cookie_jar=jar) as s:
                async with s.get(arr.url + "/login") as r:
                    owner = r.headers["X-Backend"]
                port2 = node2.config.node("n2").listen_tls[0].port
                for _ in range(6):
                    async with s.get(
                        f"https://127.0.0.1:{port2}/whoami", ssl=arr.client_ssl()
                    ) as r:
                        assert await r.text() == owner
        finally:
            await node2.stop()


async def test_tampered_cookie_ignored_and_counted(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 3) as arr:
        good = cookie_codec.encode(2, arr.node.ctx.secret)
        forged = "2." + "A" * (len(good) - 2)
        foreign = cookie_codec.encode(2, b"another array's secret")
        async with aiohttp.ClientSession() as s:
            for bad in (forged, foreign, "garbage"):
                seen = set()
                for _ in range(6):
                    hdrs = {"Cookie": f"DLBASERVER={bad}"}
                    async with s.get(arr.url + "/whoami", headers=hdrs) as r:
                        assert r.status == 200
                        seen.add(await r.text())
                assert len(seen) > 1  # normal scheduling, not pinned to b2
        assert arr.node.ctx.stats.cookie_rejected == 18


async def test_session_id_in_url_and_cookie_sticks(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 4) as arr, aiohttp.ClientSession() as s:
        for sid in ("abc", "def", "0123456789"):
            owners = set()
            for path in (f"/whoami;jsessionid={sid}", f"/whoami?sid={sid}"):
                for _ in range(4):
                    async with s.get(arr.url + path) as r:
                        owners.add(r.headers["X-Backend"])
            async with aiohttp.ClientSession(cookies={"JSESSIONID": sid}) as s2:
                for _ in range(4):
                    async with s2.get(arr.url + "/whoami") as r:
                        owners.add(r.headers["X-Backend"])
            assert len(owners) == 1, (sid, owners)


async def test_url_hash_paths_stick_and_spread(tmp_path: Path) -> None:
    extra = '[scheduling]\npolicy = "least_conn"\nurl_hash_paths = ["/static/", "*.gif"]\n'
    async with loopback_array(tmp_path, 4, extra=extra) as arr:
        owners: dict[str, set[str]] = {}
        async with aiohttp.ClientSession() as s:
            for i in range(40):
                path = f"/static/f{i}.css" if i % 2 else f"/img/p{i}.gif"
                for _ in range(3):
                    async with s.get(arr.url + path) as r:
                        owners.setdefault(path, set()).add(r.headers["X-Backend"])
        assert all(len(v) == 1 for v in owners.values())
        assert len({next(iter(v)) for v in owners.values()}) >= 3  # spread over the ring


async def test_least_conn_avoids_busy_backend(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 2) as arr, aiohttp.ClientSession() as s:
        slow = asyncio.ensure_future(s.get(arr.url + "/slow?ms=1500"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        busy = None
        while busy is None and loop.time() < deadline:
            for row in arr.node.ctx.table.rows:
                if row.open_connections == 1:
                    busy = row.address
            await asyncio.sleep(0.01)
        assert busy is not None
        for _ in range(10):
            async with s.get(arr.url + "/whoami") as r:
                port = arr.backend_ports[await r.text()]
                assert busy != f"127.0.0.1:{port}"
        r = await slow
        r.release()


async def test_weighted_rr_follows_weights(tmp_path: Path) -> None:
    extra = '[scheduling]\npolicy = "weighted_rr"\n'
    async with loopback_array(
        tmp_path, 2, extra=extra, backend_extra={1: "weight = 100", 2: "weight = 300"}
    ) as arr:
        counts = {"b1": 0, "b2": 0}
        async with aiohttp.ClientSession() as s:
            for _ in range(40):
                async with s.get(arr.url + "/whoami") as r:
                    counts[await r.text()] += 1
        assert counts == {"b1": 10, "b2": 30}


async def test_response_streams_and_request_body_streams(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 1) as arr, aiohttp.ClientSession() as s:
        async with s.get(arr.url + "/bytes/5000000") as r:
            n = 0
            async for chunk in r.content.iter_chunked(65536):
                n += len(chunk)
            assert n == 5_000_000

        async def gen():  # chunked upload
            for _ in range(50):
                yield b"x" * 100_000

        async with s.post(arr.url + "/digest", data=gen()) as r:
            body = await r.json()
            assert body["length"] == 5_000_000


async def test_http10_request_without_host_reaches_the_backend_with_one(tmp_path: Path) -> None:
    """HTTP/1.0 allows no Host; the HTTP/1.1 request to the back end must carry one (or the back
    end answers 400 and closes, and the keepalive pool is useless)."""
    async with loopback_array(tmp_path, 1) as arr:
        for _ in range(3):
            data = await raw_exchange(arr.http_port, b"GET /headers HTTP/1.0\r\n\r\n")
            head, _, body = data.partition(b"\r\n\r\n")
            assert head.startswith(b"HTTP/1.1 200"), head
            seen = {k.lower(): v for k, v in json.loads(body).items()}
            assert seen["host"] == f"127.0.0.1:{arr.backend_ports['b1']}"
        assert sum(p.connects for p in arr.node.ctx.pools.values()) == 1
