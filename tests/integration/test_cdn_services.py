"""CDN offload per virtual service through a real node: two services on two VIPs of
127.0.0.0/8, each with its own popularity figures, choice and CDN base (one inherits [cdn], the
other overrides base and types in [services.cdn]); a page is rewritten with its own service's
choice and base, cached under its own service (same Host and path on the other service is
another page), and GET /cdn, /metrics and the dashboard say which service each figure belongs
to."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import aiohttp

from dlba.demo_site import OBJECTS
from tests.chromium_cdp import chromium
from tests.integration.loopback import LoopbackArray, free_port, loopback_array

SHOP_VIP, API_VIP = "127.0.30.1", "127.0.40.1"
SHOP_CDN, API_CDN = "https://cdn-shop.test", "https://cdn-api.test"
PLAIN = {"Accept-Encoding": "identity", "Host": "www.test"}


def config(port: int, tls_port: int | None = None) -> str:
    ports = f"ports = [{port}]" if tls_port is None else \
        f"ports = [{port}, {tls_port}]\ntls_ports = [{tls_port}]"
    return f"""
[cdn]
enabled = true
base = "{SHOP_CDN}"
sample = 1.0
top = 20

[[services]]
name = "shop"
vips = ["{SHOP_VIP}"]
{ports}

[[services]]
name = "api"
vips = ["{API_VIP}"]
{ports}

[services.cdn]
base = "{API_CDN}"
types = ["*.png"]
"""


async def _get(s: aiohttp.ClientSession, url: str) -> tuple[int, dict[str, str], str]:
    async with s.get(url, headers=PLAIN) as r:
        return r.status, dict(r.headers), (await r.read()).decode("latin-1")


async def _view(arr: LoopbackArray, s: aiohttp.ClientSession, path: str) -> Any:
    async with s.get(arr.admin_url + path,
                     headers={"Authorization": f"Bearer {arr.token}"}) as r:
        return await r.json() if path == "/cdn" else await r.text()


async def test_two_services_each_with_its_own_choice_base_and_pages(tmp_path: Path) -> None:
    port = free_port()
    async with loopback_array(tmp_path, 2, extra=config(port)) as arr, \
            aiohttp.ClientSession(auto_decompress=False) as s, chromium(tmp_path) as b:
        shop, api = f"http://{SHOP_VIP}:{port}", f"http://{API_VIP}:{port}"
        for name in OBJECTS:  # every object through the shop
            assert (await _get(s, f"{shop}/static/{name}"))[0] == 200
        for name in ("logo.png", "app.js", "logo.png"):  # two through the api, one a png
            assert (await _get(s, f"{api}/static/{name}"))[0] == 200

        want = {"shop": {f"/static/{n}" for n in OBJECTS}, "api": {"/static/logo.png"}}
        for _ in range(100):
            view = await _view(arr, s, "/cdn")
            chosen = {v["service"]: {o["path"] for o in v["objects"]}
                      for v in view["services"]}
            if chosen == want:
                break
            await asyncio.sleep(0.1)
        assert chosen == want  # a path on two services is two objects
        by_name = {v["service"]: v for v in view["services"]}
        assert by_name["api"]["base"] == API_CDN and by_name["shop"]["base"] == SHOP_CDN
        assert by_name["api"]["objects"][0]["cdn_url"] == API_CDN + "/static/logo.png"
        # The api sampled logo.png twice, app.js once: only its own traffic counts.
        assert by_name["api"]["objects"][0]["count"] == 2

        _, h1, shop_page = await _get(s, f"{shop}/page?max_age=60")
        assert h1["X-Dlba-Cdn"] == "rewritten"
        assert f'src="{SHOP_CDN}/static/app.js"' in shop_page
        assert f"{SHOP_CDN}/static/logo.png 1x, {SHOP_CDN}/static/logo-2x.png 2x" in shop_page
        # Same Host and target on the api: not the shop's cached page but its own rewrite.
        _, h2, api_page = await _get(s, f"{api}/page?max_age=60")
        assert h2["X-Dlba-Cdn"] == "rewritten"
        assert f"{API_CDN}/static/logo.png 1x, /static/logo-2x.png 2x" in api_page
        assert 'src="/static/app.js"' in api_page and SHOP_CDN not in api_page
        for url, page in ((shop, shop_page), (api, api_page)):
            _, h, again = await _get(s, f"{url}/page?max_age=60")
            assert h["X-Dlba-Cdn"] == "hit" and again == page

        metrics = await _view(arr, s, "/metrics")
        for service, n in (("shop", 9), ("api", 1)):
            line = f'dlba_cdn_chosen_objects{{node="n1",service="{service}"}} {n}.0'
            assert line in metrics, line
        for service in ("shop", "api"):
            assert f'dlba_cdn_cache_hits_total{{node="n1",service="{service}"}} 1.0' in metrics
            assert f'dlba_cdn_rewritten_total{{node="n1",service="{service}"}} 1.0' in metrics

        # The dashboard's panel: the objects grouped by service, the name on each group's first.
        await b.goto(f"{arr.admin_url}/?token={arr.token}")
        rows = "[...document.querySelectorAll('#cdn tbody tr[data-object]')]"
        assert await b.wait(f"{rows}.length === 10")
        groups = await b.eval(
            f"{rows}.map((r) => r.dataset.service + ':' + r.cells[0].textContent)")
        assert groups == ["shop:shop"] + ["shop:"] * 8 + ["api:api"]
        assert await b.eval(f"{rows}[9].cells[4].textContent") == API_CDN + "/static/logo.png"


async def test_http2_clients_get_their_own_services_pages(tmp_path: Path) -> None:
    """Over HTTP/2 (curl, ALPN h2) the stream's service is the VIP dialled as well."""
    tls_port = free_port()
    async with loopback_array(tmp_path, 1, extra=config(free_port(), tls_port)) as arr:

        async def curl(vip: str, path: str) -> tuple[str, bytes]:
            cmd = ["curl", "-sS", "--http2", "--cacert", str(arr.certs.ca_cert), "--resolve",
                   f"localhost:{tls_port}:{vip}", "-w", "\n%{http_version}",
                   f"https://localhost:{tls_port}{path}"]
            res = await asyncio.to_thread(subprocess.run, cmd, capture_output=True,
                                          timeout=30, check=False)
            assert res.returncode == 0, res.stderr
            body, _, version = bytes(res.stdout).rpartition(b"\n")
            return version.decode(), body

        for vip in (SHOP_VIP, API_VIP):
            for _ in range(2):
                assert (await curl(vip, "/static/logo.png"))[0] == "2"
        for _ in range(100):
            version, shop = await curl(SHOP_VIP, "/page")
            _, api = await curl(API_VIP, "/page")
            if f"{API_CDN}/static/logo.png".encode() in api and \
                    f"{SHOP_CDN}/static/logo.png".encode() in shop:
                break  # each service's choice arrives on its own
            await asyncio.sleep(0.1)
        assert version == "2"
        assert f"{SHOP_CDN}/static/logo.png 1x".encode() in shop
        assert f"{API_CDN}/static/logo.png 1x".encode() in api
        assert SHOP_CDN.encode() not in api
