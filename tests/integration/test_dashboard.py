"""Issue 6, points 1, 2, 5: the dashboard in a real headless Chromium against a running node,
its actions (token, cookie, CSRF), the scheduler's view and node actions from another node.

Chromium is driven by tests/chromium_cdp.py. The screenshots here go to the test's tmp folder;
the README's picture comes from tests/array/test_dashboard_array.py (`DLBA_SCREENSHOT`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import aiohttp
from aiohttp import web

from dlba.admin.api import make_admin_app
from dlba.admin.dashboard import DASHBOARD_KEY, register_dashboard
from dlba.config import HostPort
from scheduler.client_table import ClientTable
from tests.chromium_cdp import chromium
from tests.integration.loopback import free_port, loopback_array
from tests.traffic import background_traffic


async def get_status(admin_url: str, token: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as s, s.get(
        admin_url + "/status", headers={"Authorization": f"Bearer {token}"}
    ) as r:
        assert r.status == 200
        return dict(await r.json())


async def until(check: Callable[[], Awaitable[bool]], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, "condition not met before the deadline"
        await asyncio.sleep(0.1)


ROWS = "[...document.querySelectorAll('#{t} tbody tr[data-{k}]')].map(r => r.dataset.{k})"


# --- the page in Chromium against a running node ------------------------------------------------
async def test_dashboard_in_chromium_shows_tables_and_disables_by_click(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 3) as arr, background_traffic(
        arr.url + "/whoami"
    ), chromium(tmp_path) as b:
        ids = sorted(str(r["id"]) for r in (await get_status(arr.admin_url, arr.token))[
            "backends"])
        assert ids == ["1", "2", "3"]

        # The token once in the URL: it becomes an HttpOnly cookie and leaves the address bar.
        await b.goto(f"{arr.admin_url}/?token={arr.token}")
        await b.wait("Number(document.body.dataset.loaded || 0) >= 1")
        assert await b.eval("location.href") == arr.admin_url + "/"
        assert "dlba_admin" not in await b.eval("document.cookie")  # HttpOnly: no script sees it

        # Every back end in this node's table (Fig. 7) and the summary (Fig. 8); the node (Fig. 5).
        assert sorted(await b.eval(ROWS.format(t="backends", k="backend"))) == ids
        assert sorted(await b.eval(ROWS.format(t="summary", k="backend"))) == ids
        assert await b.eval(ROWS.format(t="nodes", k="node")) == ["n1"]
        text = await b.eval("document.querySelector('#backends').innerText")
        for row in (await get_status(arr.admin_url, arr.token))["backends"]:
            assert row["address"] in text
        assert await b.eval("document.getElementById('node-name').textContent") == "n1"
        assert await b.eval("document.getElementById('role').textContent") == "standalone"
        # A standalone node keeps no client table: no picture, and the page says why.
        assert await b.eval("document.getElementById('buckets').dataset.cells") == "0"

        # A click on "disable" for back end 2 changes the node's table (seen through /status) ...
        await b.click("#backends button[data-backend='2'][data-action='disable']")

        async def disabled() -> bool:
            rows = (await get_status(arr.admin_url, arr.token))["backends"]
            return [r["enabled"] for r in sorted(rows, key=lambda r: r["id"])] == [
                True, False, True]

        await until(disabled)
        # ... and the page shows it on its next refresh.
        await b.wait("document.querySelector(\"#backends tr[data-backend='2'] .state\")"
                     ".textContent === 'disabled'")
        assert "done" in await b.eval("document.getElementById('message').textContent")

        # Rates need a few polls; then a screenshot (to tmp: the README's comes from the array).
        await b.wait("Number(document.body.dataset.loaded) >= 8", timeout=30)
        rate = await b.eval("document.querySelector(\"#backends tr[data-backend='1']\")"
                            ".cells[5].innerText")
        assert rate.endswith("/s") and float(rate.strip().rstrip("/s")) > 0
        shot = tmp_path / "dashboard.png"
        await b.screenshot(shot)
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert not [c for c in b.console if c.startswith("exception")], b.console


async def test_dashboard_readable_on_a_phone(tmp_path: Path) -> None:
    """At a phone's width the page does not overflow sideways (wide tables scroll inside)."""
    async with loopback_array(tmp_path, 3) as arr, chromium(tmp_path) as b:
        await b.send("Emulation.setDeviceMetricsOverride", {
            "width": 390, "height": 844, "deviceScaleFactor": 2, "mobile": True})
        await b.goto(f"{arr.admin_url}/?token={arr.token}")
        await b.wait("Number(document.body.dataset.loaded || 0) >= 1")
        assert await b.eval("document.documentElement.scrollWidth") <= 390
        assert await b.eval("getComputedStyle(document.querySelector('.scroll')).overflowX") \
            == "auto"


# --- actions: token, cookie, CSRF ---------------------------------------------------------------
async def test_actions_need_token_and_cookie_needs_csrf(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 3) as arr, aiohttp.ClientSession() as s:
        base, table = arr.admin_url, arr.node.ctx.table
        bearer = {"Authorization": f"Bearer {arr.token}"}

        # No token at all: every page, data and action refused with 401.
        for method, path in [("GET", "/"), ("GET", "/dashboard.json"),
                             ("GET", "/static/dashboard.js"), ("POST", "/backends/1/disable"),
                             ("POST", "/dashboard/backends/1/disable"), ("POST", "/panic"),
                             ("POST", "/dashboard/panic"), ("DELETE", "/dashboard/panic")]:
            async with s.request(method, base + path) as r:
                assert r.status == 401, (method, path)
        async with s.get(base + "/?token=wrong", allow_redirects=False) as r:
            assert r.status == 401
        async with s.post(base + "/backends/1/disable", cookies={"dlba_admin": "wrong"}) as r:
            assert r.status == 401
        assert all(row.enabled for row in table.rows)

        # The token once in the URL: a 303 to "/" with the HttpOnly, SameSite=Strict cookie.
        async with s.get(f"{base}/?token={arr.token}", allow_redirects=False) as r:
            assert r.status == 303 and r.headers["Location"] == "/"
            cookie = r.cookies["dlba_admin"]
            assert cookie.value == arr.token
            assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
        jar = {"dlba_admin": arr.token}
        async with s.get(base + "/", cookies=jar) as r:
            assert r.status == 200 and "text/html" in r.headers["Content-Type"]
            assert "frame-ancestors 'none'" in r.headers["Content-Security-Policy"]
            html = await r.text()
            assert "http://" not in html and "https://" not in html  # nothing from elsewhere
        for name, kind in (("dashboard.js", "javascript"), ("dashboard.css", "text/css")):
            async with s.get(f"{base}/static/{name}", cookies=jar) as r:
                assert r.status == 200 and kind in r.headers["Content-Type"]
        async with s.get(base + "/static/..%2Fdashboard.py", cookies=jar) as r:
            assert r.status == 404
        async with s.get(base + "/dashboard.json", cookies=jar) as r:
            assert r.status == 200
            data = await r.json()
        csrf = data["csrf"]
        assert len(csrf) >= 32
        assert data["node"]["node"] == "n1" and len(data["node"]["backends"]) == 3
        assert data["scheduler"]["table"] is None and data["scheduler"]["summary"] is None

        # The cookie alone cannot change anything: 403 without (or with a wrong) CSRF token.
        for headers in ({}, {"X-CSRF-Token": "x" * 43}):
            for path in ("/backends/1/disable", "/dashboard/backends/1/disable",
                         "/dashboard/panic"):
                async with s.post(base + path, cookies=jar, headers=headers) as r:
                    assert r.status == 403, (path, headers)
        assert all(row.enabled for row in table.rows)

        # Cookie + CSRF header: done (the page's way).
        async with s.post(base + "/backends/1/disable", cookies=jar,
                          headers={"X-CSRF-Token": csrf}) as r:
            assert r.status == 200 and (await r.json())["enabled"] is False
        # Bearer header: no CSRF token needed (scripts, `curl`).
        async with s.post(base + "/backends/1/enable", headers=bearer) as r:
            assert r.status == 200 and (await r.json())["enabled"] is True

        # "On every node": forwarded to each node of the config (here only n1) with the token.
        async with s.post(base + "/dashboard/backends/3/drain", headers=bearer) as r:
            assert r.status == 200
            body = await r.json()
            assert body["ok"] and [x["node"] for x in body["results"]] == ["n1"]
        row3 = table.get(3)
        assert row3 is not None and row3.state.value == "draining"
        async with s.post(base + "/dashboard/backends/3/explode", headers=bearer) as r:
            assert r.status == 404
        # Panic needs a scheduler; a standalone node has none.
        async with s.post(base + "/dashboard/panic", headers=bearer) as r:
            assert r.status == 409


# --- the scheduler's part: client-table picture, remote fetch from a non-scheduler ---------------
class FakeRole:
    """What the dashboard reads from the scheduler role: the real client table, fake sweep."""

    def __init__(self, names: list[str], size: int) -> None:
        self.names = names
        self.enabled = dict.fromkeys(names, True)
        self.table = ClientTable(size, [100] * len(names))
        now = time.monotonic()
        self.table.fill(now - 1000)
        for b in range(0, size, 3):  # a third of the buckets recently used, the rest idle
            self.table.touch(b, now)

    def table_json(self) -> dict[str, Any]:
        return {"version": self.table.version, "epoch": 0, "size": self.table.size,
                "assignments": [None if o is None else self.names[o]
                                for o in self.table.assignments()]}

    def set_node_enabled(self, name: str, enabled: bool) -> None:
        self.enabled[name] = enabled

    def summary_json(self) -> dict[str, Any]:
        nodes = [{"name": n, "address": f"127.0.0.{i + 1}", "mac": "", "ip_groups": c,
                  "avg_response_ms": 1.0, "hits": 10 * i, "open_connections": i,
                  "failed": False, "enabled": self.enabled[n], "weight": 100}
                 for i, (n, c) in enumerate(zip(self.names, self.table.counts(), strict=True))]
        return {"scheduler": self.names[0], "table_version": self.table.version,
                "last_sweep": time.time(), "sweeps": 5, "nodes": nodes, "backends": [],
                "dataplane": None, "panic": False}


class FakeView:
    """A node as the admin API sees it, without proxies (config: only what the dashboard reads)."""

    def __init__(self, name: str, scheduler: str, nodes: list[tuple[str, int]],
                 role: FakeRole | None) -> None:
        self.name = name
        self.address = "127.0.0.1"
        self.config_version = 1
        self.agent = SimpleNamespace(role=role)
        cfg_nodes = [SimpleNamespace(name=n, address="127.0.0.1", admin=HostPort("127.0.0.1", p))
                     for n, p in nodes]
        config = SimpleNamespace(nodes=cfg_nodes, admin=SimpleNamespace(listen=":9000"),
                                 cluster=SimpleNamespace(bucket_idle_s=300.0),
                                 admin_url=lambda i: f"http://127.0.0.1:{nodes[i][1]}")
        self.ctx = SimpleNamespace(config=config, table=SimpleNamespace(to_json=list))
        self._scheduler = scheduler
        self.node_calls: list[tuple[str, str, str]] = []  # what the fake scheduler was asked

    def role(self) -> str:
        return "scheduler" if self.agent.role is not None else "server"

    def scheduler_name(self) -> str:
        return self._scheduler

    def table_version(self) -> int:
        return 0

    def node_rows(self) -> list[dict[str, Any]]:
        return []


@contextlib.asynccontextmanager
async def serve(view: FakeView, token: str, port: int) -> AsyncIterator[str]:
    app = make_admin_app(view, token)  # type: ignore[arg-type]

    async def node_action(request: web.Request) -> web.Response:
        """The scheduler's `POST /nodes/{name}/{action}` as scheduler/failover answers it."""
        role = view.agent.role
        if role is None:
            return web.json_response(
                {"error": "not the scheduler", "scheduler": view.scheduler_name()}, status=409)
        name, action = request.match_info["name"], request.match_info["action"]
        if name not in role.names or action not in ("enable", "disable"):
            return web.json_response({"error": "unknown node or action"}, status=404)
        role.set_node_enabled(name, action == "enable")
        view.node_calls.append((name, action, request.headers.get("Authorization", "")))
        return web.json_response({"name": name, "enabled": role.enabled[name]})

    app.router.add_post("/nodes/{name}/{action}", node_action)
    if DASHBOARD_KEY not in app:
        register_dashboard(app, view, token)  # type: ignore[arg-type]
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_non_scheduler_shows_the_schedulers_table_one_cell_per_bucket(
    tmp_path: Path,
) -> None:
    token = "t" * 40
    names, size = ["s1", "s2", "s3"], 1024
    p1, p2 = free_port(), free_port()
    nodes = [("s1", p1), ("s2", p2), ("s3", free_port())]
    role = FakeRole(names, size)
    sched = FakeView("s1", "s1", nodes, role)
    follower = FakeView("s2", "s1", nodes, None)
    bearer = {"Authorization": f"Bearer {token}"}
    async with serve(sched, token, p1) as url1, serve(follower, token, p2) as url2, \
            aiohttp.ClientSession(headers=bearer) as s:
        # The scheduler's part, with idle flags, for the other nodes; 409 on a non-scheduler.
        async with s.get(url1 + "/dashboard/scheduler.json") as r:
            part = await r.json()
            assert part["source"] == "local" and len(part["table"]["idle"]) == size
        async with s.get(url2 + "/dashboard/scheduler.json") as r:
            assert r.status == 409

        # The follower's dashboard.json carries the scheduler's tables, fetched with the token.
        async with s.get(url2 + "/dashboard.json") as r:
            d = await r.json()
        sch = d["scheduler"]
        assert sch["source"] == url1 and sch["error"] is None
        assert [n["name"] for n in sch["summary"]["nodes"]] == names
        t = sch["table"]
        assert len(t["owners"]) == size and sorted(t["names"]) == names
        owners = role.table.assignments()
        assert [t["names"][o] for o in t["owners"]] == [names[o] for o in owners if o is not None]
        assert sum(t["idle"]) == size - len(range(0, size, 3))

        # In Chromium: the picture has one cell per bucket, the legend counts them per node,
        # idle cells are faded.
        async with chromium(tmp_path) as b:
            await b.goto(f"{url2}/?token={token}")
            await b.wait("Number(document.body.dataset.loaded || 0) >= 1")
            assert await b.eval("document.getElementById('buckets').dataset.cells") == str(size)
            legend = await b.eval("[...document.querySelectorAll('#legend li')]"
                                  ".map(li => li.textContent)")
            counts = role.table.counts()
            assert sorted(legend) == sorted(f"{n}: {c}" for n, c in zip(names, counts,
                                                                        strict=True))
            assert sum(counts) == size
            assert await b.eval(ROWS.format(t="nodes", k="node")) == names
            assert "idle (faded)" in await b.eval(
                "document.getElementById('table-caption').textContent")
            # Pixels: bucket 0 (used) is opaque, bucket 1 (idle) faded.
            alpha = await b.eval(
                "(() => { const c = document.getElementById('buckets'); const g = "
                "c.getContext('2d'); const px = Math.floor(512 / Math.ceil(Math.sqrt(" f"{size}"
                "))); return [g.getImageData(1, 1, 1, 1).data[3],"
                " g.getImageData(px + 1, 1, 1, 1).data[3]]; })()")
            assert alpha[0] == 255 and 0 < alpha[1] < 128

        # Panic from the follower's page goes to the scheduler's admin API (here: no /panic
        # route on the fake scheduler, so its 404 comes back as a gateway error).
        async with s.post(url2 + "/dashboard/panic") as r:
            assert r.status == 502
            assert (await r.json())["node"] == "s1"


async def test_scheduler_unreachable_is_reported_not_fatal(tmp_path: Path) -> None:
    token = "t" * 40
    port = free_port()
    nodes = [("s1", free_port()), ("s2", port)]  # nothing listens for s1
    follower = FakeView("s2", "s1", nodes, None)
    async with serve(follower, token, port) as url, aiohttp.ClientSession(
        headers={"Authorization": f"Bearer {token}"}
    ) as s, s.get(url + "/dashboard.json") as r:
        assert r.status == 200
        d = await r.json()
        assert "unreachable" in d["scheduler"]["error"]
        assert d["scheduler"]["table"] is None and d["node"]["node"] == "s2"


async def test_node_enable_disable_from_any_node_reaches_the_scheduler(tmp_path: Path) -> None:
    """Fig. 5's enable/disable buttons: from a non-scheduler's page to the scheduler's
    `POST /nodes/{name}/{action}` (with the token), also when the role has moved."""
    token = "t" * 40
    names = ["s1", "s2", "s3"]
    ports = [free_port() for _ in names]
    nodes = list(zip(names, ports, strict=True))
    role = FakeRole(names, 256)
    sched = FakeView("s1", "s1", nodes, role)
    follower = FakeView("s2", "s1", nodes, None)
    stale = FakeView("s3", "s2", nodes, None)  # still thinks s2 holds the role
    bearer = {"Authorization": f"Bearer {token}"}
    async with serve(sched, token, ports[0]), serve(follower, token, ports[1]) as url2, \
            serve(stale, token, ports[2]) as url3, aiohttp.ClientSession() as s:
        # No token: refused; the cookie alone (no CSRF header): refused; nothing forwarded.
        async with s.post(url2 + "/dashboard/nodes/s3/disable") as r:
            assert r.status == 401
        async with s.post(url2 + "/dashboard/nodes/s3/disable",
                          cookies={"dlba_admin": token}) as r:
            assert r.status == 403
        async with s.post(url2 + "/dashboard/nodes/s3/explode", headers=bearer) as r:
            assert r.status == 404
        async with s.post(url2 + "/dashboard/nodes/nosuch/disable", headers=bearer) as r:
            assert r.status == 404
        assert sched.node_calls == [] and all(role.enabled.values())

        # From s3, which names the wrong scheduler: s2 answers 409 naming s1, asked once more.
        async with s.post(url3 + "/dashboard/nodes/s2/disable", headers=bearer) as r:
            assert r.status == 200, await r.text()
            body = await r.json()
            assert body["node"] == "s1" and body["body"] == {"name": "s2", "enabled": False}
        async with s.post(url3 + "/dashboard/nodes/s2/enable", headers=bearer) as r:
            assert r.status == 200
        assert sched.node_calls == [("s2", "disable", f"Bearer {token}"),
                                    ("s2", "enable", f"Bearer {token}")]

        # In Chromium on the follower's page: "disable" on s3's row, then "enable".
        async with chromium(tmp_path) as b:
            await b.goto(f"{url2}/?token={token}")
            await b.wait("Number(document.body.dataset.loaded || 0) >= 1")
            row = "#nodes tr[data-node='s3']"
            # Only the action that changes something is offered.
            assert await b.eval(f"document.querySelector(\"{row} button[data-action='enable']\")"
                                ".disabled") is True
            await b.click(f"{row} button[data-action='disable']")
            await b.wait(f"document.querySelector(\"{row} .state\").textContent === 'disabled'")
            assert role.enabled == {"s1": True, "s2": True, "s3": False}
            assert "done" in await b.eval("document.getElementById('message').textContent")
            await b.click(f"{row} button[data-action='enable']")
            await b.wait(f"document.querySelector(\"{row} .state\").textContent === 'up'")
            assert all(role.enabled.values())
            assert sched.node_calls[-2:] == [("s3", "disable", f"Bearer {token}"),
                                             ("s3", "enable", f"Bearer {token}")]
            assert not [c for c in b.console if c.startswith("exception")], b.console
