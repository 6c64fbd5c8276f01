"""The dashboard in Chromium shows the node's virtual services, pools and client classes."""

from __future__ import annotations

from pathlib import Path

import aiohttp

from tests.chromium_cdp import chromium
from tests.integration.loopback import free_port, loopback_array

ROWS = "[...document.querySelectorAll('#{t} tbody tr[data-{k}]')].map(r => r.dataset.{k})"


async def test_dashboard_shows_services_pools_and_classes(tmp_path: Path) -> None:
    port = free_port()
    extra = f"""
[[pools]]
name = "web"

[[services]]
name = "shop"
vips = ["127.0.70.0/30"]
ports = [{port}]
tls_ports = []
pool = "web"

[[services.routes]]
path_prefix = "/whoami"
pool = "default"

[[classes]]
name = "gold"
priority = 0
vips = ["127.0.70.1"]
"""
    async with loopback_array(tmp_path, 2, extra=extra, backend_extra={2: 'pool = "web"'}
                              ) as arr, chromium(tmp_path) as b:
        async with aiohttp.ClientSession() as s:
            for vip in ("127.0.70.1", "127.0.70.2"):
                async with s.get(f"http://{vip}:{port}/whoami") as r:
                    assert r.status == 200
        await b.goto(f"{arr.admin_url}/?token={arr.token}")
        await b.wait("Number(document.body.dataset.loaded || 0) >= 1")
        assert await b.eval(ROWS.format(t="services", k="service")) == ["shop"]
        assert await b.eval(ROWS.format(t="pools", k="pool")) == ["default", "web"]
        assert await b.eval(ROWS.format(t="classes", k="class")) == [
            "default/gold", "default/default"]
        text = await b.eval("document.querySelector('#services').innerText")
        assert "127.0.70.0/30" in text
        assert not [c for c in b.console if c.startswith("exception")], b.console
