"""Issue 6, points 5 and 6 on a real namespace array (`dlba up`): the dashboard of a node that is
not the scheduler, in headless Chromium, shows every node and back end and the scheduler's
4096-bucket client table; a back end and a node are disabled (and enabled again) by clicks on the
page; and the README's screenshot is made by this run.

Chromium has to reach the nodes' admin listeners (198.18.0.1x:9000), which exist only inside the
array's client namespace. So the whole browser session runs in one thread that has entered that
namespace (`processes.run_in_netns`): Chromium, started from that thread, is born in it, and its
DevTools port on 127.0.0.1 is that namespace's loopback, where the same thread's DevTools client
connects. Client traffic to the VIP comes from the same place, so the rates and buckets move.

The screenshot goes to the test's tmp folder; `DLBA_SCREENSHOT=docs/dashboard.png` writes the
README's picture instead (see tests/chromium_cdp.py).
"""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path
from typing import Any

from tests.array.array_harness import VIP, Array, running_array, wait_until
from tests.chromium_cdp import Chromium, chromium, screenshot_path
from tests.traffic import background_traffic

ROWS = "[...document.querySelectorAll('#{t} tbody tr[data-{k}]')].map(r => r.dataset.{k})"
PNG = b"\x89PNG\r\n\x1a\n"


async def admin(arr: Array, k: int, path: str, method: str = "GET") -> Any:
    return await asyncio.to_thread(arr.admin, k, path, method)


async def until(arr: Array, what: str, check: Any, timeout: float = 10.0) -> None:
    """`check()` (blocking admin calls) true within `timeout`, without stalling the page."""
    await asyncio.to_thread(wait_until, check, timeout, what, 0.1)


def backend_enabled(arr: Array, bid: int) -> list[bool]:
    """Back end `bid`'s `enabled` in every node's own table (Fig. 7, `/status`)."""
    out = []
    for k in range(1, arr.nodes + 1):
        rows = arr.admin(k, "/status")["backends"]
        out.append(next(r["enabled"] for r in rows if r["id"] == bid))
    return out


def node_enabled(arr: Array, sched: int, name: str) -> bool:
    return bool(next(n["enabled"] for n in arr.admin(sched, "/summary")["nodes"]
                     if n["name"] == name))


async def browse(arr: Array, page_node: int, sched: int, tmp: Path, shot: Path) -> None:
    status = await admin(arr, page_node, "/status")
    assert status["role"] != "scheduler" and status["scheduler"] == f"n{sched}"
    ids = sorted(str(b["id"]) for b in status["backends"])
    assert len(ids) == 2
    base = f"http://{arr.node_address(page_node)}:9000"

    async with background_traffic(f"http://{VIP}/whoami", fresh_connections=True,
                                  gap_s=0.01), chromium(tmp) as b:
        await b.goto(f"{base}/?token={arr.token}")
        await b.wait("Number(document.body.dataset.loaded || 0) >= 1", timeout=15)
        assert await b.eval("location.href") == base + "/"
        assert await b.eval("document.getElementById('node-name').textContent") == \
            f"n{page_node}"
        assert await b.eval("document.getElementById('role').textContent") == "server"

        # Fig. 5 from the scheduler (fetched by this non-scheduler node): every node.
        await b.wait(f"{ROWS.format(t='nodes', k='node')}.length === {arr.nodes}")
        assert await b.eval(ROWS.format(t="nodes", k="node")) == [
            f"n{k}" for k in range(1, arr.nodes + 1)]
        # Every back end in the array's summary (Fig. 8) and in this node's table (Fig. 7).
        assert sorted(await b.eval(ROWS.format(t="summary", k="backend"))) == ids
        assert sorted(await b.eval(ROWS.format(t="backends", k="backend"))) == ids
        text = await b.eval("document.querySelector('#summary').innerText")
        for row in status["backends"]:
            assert row["address"] in text
        # The client table: one cell per bucket, all of them owned by the array's nodes.
        assert await b.eval("document.getElementById('buckets').dataset.cells") == "4096"
        legend = await b.eval("[...document.querySelectorAll('#legend li')]"
                              ".map(li => li.textContent)")
        assert sorted(li.split(":")[0] for li in legend) == ["n1", "n2", "n3"]
        assert sum(int(li.split(": ")[1]) for li in legend) == 4096

        # Some polls with traffic flowing, so the sparklines have a history: the README shot.
        await b.wait("Number(document.body.dataset.loaded) >= 6", timeout=20)
        await b.wait("[...document.querySelectorAll('#nodes tbody tr')]"
                     ".some(r => parseFloat(r.cells[5].innerText) > 0)")
        await b.screenshot(shot)
        assert shot.read_bytes()[:8] == PNG
        await b.send("Emulation.clearDeviceMetricsOverride")

        # Disable back end 1 on every node from the page: each node's /status changes.
        await b.click("#scope-array")
        assert await b.eval("document.getElementById('scope-array').checked") is True
        await click_action(b, "#backends button[data-backend='1'][data-action='disable']")
        await until(arr, "back end 1 disabled everywhere",
                    lambda: backend_enabled(arr, 1) == [False] * arr.nodes)
        await b.wait("document.querySelector(\"#backends tr[data-backend='1'] .state\")"
                     ".textContent === 'disabled'")
        await click_action(b, "#backends button[data-backend='1'][data-action='enable']")
        await until(arr, "back end 1 enabled again",
                    lambda: backend_enabled(arr, 1) == [True] * arr.nodes)

        # Disable node n1 from the page: the scheduler's summary says so; then enable it again.
        row = "#nodes tr[data-node='n1']"
        await click_action(b, f"{row} button[data-action='disable']")
        await until(arr, "n1 disabled on the scheduler", lambda: not node_enabled(arr, sched, "n1"))
        await b.wait(f"document.querySelector(\"{row} .state\").textContent === 'disabled'")
        await click_action(b, f"{row} button[data-action='enable']")
        await until(arr, "n1 enabled again", lambda: node_enabled(arr, sched, "n1"))
        await b.wait(f"document.querySelector(\"{row} .state\").textContent === 'up'")

        # Version skew (a push that reached one node only) is shown, not hidden.
        text = (arr.state / "cluster.toml").read_text()

        def put_on_n1() -> Any:
            req = urllib.request.Request(
                f"http://{arr.node_address(1)}:9000/config", data=text.encode(), method="PUT",
                headers={"Authorization": f"Bearer {arr.token}"})
            with urllib.request.urlopen(req, timeout=10) as r:
                return json.loads(r.read())

        assert (await asyncio.to_thread(arr.in_client, put_on_n1))["config_version"] == 2
        await b.wait("/skew/.test(document.getElementById('config-version').textContent)",
                     timeout=15)
        assert not [c for c in b.console if c.startswith("exception")], b.console


async def click_action(b: Chromium, selector: str) -> None:
    """Click once the button is there and enabled (the page redraws its rows every poll)."""
    await b.wait(f"(() => {{ const e = document.querySelector({json.dumps(selector)});"
                 " return !!e && !e.disabled; })()")
    await b.click(selector)
    await b.wait("/: done$/.test(document.getElementById('message').textContent)")


def test_dashboard_of_a_non_scheduler_on_the_array(tmp_path: Path) -> None:
    shot = screenshot_path(tmp_path)
    with running_array(tmp_path, nodes=3, backends=2) as arr:
        sched = arr.scheduler()
        assert sched is not None
        page_node = next(k for k in range(1, arr.nodes + 1) if k != sched)
        arr.in_client(lambda: asyncio.run(browse(arr, page_node, sched, tmp_path, shot)))
