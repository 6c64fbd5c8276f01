"""CDN offload end to end: a real node samples real demo back ends' traffic, chooses the heavy
static objects, rewrites their URLs in /page on the way out (plain and gzip), caches the
rewritten page while fresh, revalidates it with If-None-Match when stale, and never caches a
private page, a page with Set-Cookie or an Authorization request; Vary is honoured. Pages
encoded gzip and br are decoded, rewritten and encoded again."""

from __future__ import annotations

import asyncio
import gzip
from pathlib import Path

import aiohttp
import brotli
from multidict import CIMultiDict

from dlba.demo_site import OBJECTS
from tests.chromium_cdp import chromium
from tests.integration.loopback import LoopbackArray, loopback_array

CDN = "https://cdn.example.test"
CONFIG = f'[cdn]\nenabled = true\nbase = "{CDN}"\nsample = 1.0\ntop = 20\n'
PLAIN = {"Accept-Encoding": "identity"}


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(auto_decompress=False)


async def _get(s: aiohttp.ClientSession, url: str, headers: dict[str, str] | None = None
               ) -> tuple[int, CIMultiDict[str], bytes]:
    async with s.get(url, headers=headers or PLAIN) as r:
        return r.status, CIMultiDict(r.headers), await r.read()


async def _renders(arr: LoopbackArray, s: aiohttp.ClientSession) -> int:
    """Full /page bodies the back ends sent (a 304 is not one)."""
    total = 0
    for port in arr.backend_ports.values():
        async with s.get(f"http://127.0.0.1:{port}/page/renders") as r:
            total += int(await r.text())
    return total


async def _choose_all_objects(arr: LoopbackArray, s: aiohttp.ClientSession) -> dict[str, object]:
    for name in OBJECTS:
        status, _, _ = await _get(s, f"{arr.url}/static/{name}")
        assert status == 200
    auth = {"Authorization": f"Bearer {arr.token}"}
    for _ in range(100):
        async with s.get(f"{arr.admin_url}/cdn", headers=auth) as r:
            view: dict[str, object] = await r.json()
        objects = view["objects"]
        assert isinstance(objects, list)
        if len(objects) == len(OBJECTS):
            return view
        await asyncio.sleep(0.1)
    raise AssertionError(f"the choice never held every object: {view}")


async def test_rewrite_plain_and_gzip_with_choice_and_metrics(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, extra=CONFIG) as arr, _session() as s:
        status, headers, body = await _get(s, f"{arr.url}/page")
        assert status == 200 and "X-Dlba-Cdn" not in headers  # nothing chosen yet
        view = await _choose_all_objects(arr, s)
        objects = view["objects"]
        assert isinstance(objects, list)
        assert objects[0]["path"] == "/static/hero.jpg"  # the heaviest first
        assert objects[0]["cdn_url"] == CDN + "/static/hero.jpg"

        status, headers, body = await _get(s, f"{arr.url}/page?v=plain")
        assert status == 200 and headers["X-Dlba-Cdn"] == "rewritten"
        text = body.decode()
        for attr in ('href="https://cdn.example.test/static/app.css"',
                     'href="https://cdn.example.test/static/font.woff2"',
                     "HREF=https://cdn.example.test/static/icon.svg",
                     'src="https://cdn.example.test/static/app.js"',
                     "url('https://cdn.example.test/static/bg.gif')",
                     'srcset="https://cdn.example.test/static/logo.png 1x, '
                     'https://cdn.example.test/static/logo-2x.png 2x"',
                     'src="https://cdn.example.test/static/hero.jpg"',  # was relative
                     'poster="https://cdn.example.test/static/poster.jpg" src="/video.mp4"',
                     'href="https://cdn.example.test/static/hero.jpg?download=1&amp;w=2"'):
            assert attr in text, attr
        assert '<!-- <img src="/static/hero.jpg"> is only a comment -->' in text
        assert "var t = \"<img src='/static/logo.png'>\";" in text
        assert headers["ETag"].startswith("W/")

        status, headers, body = await _get(s, f"{arr.url}/page?gzip=1",
                                           {"Accept-Encoding": "gzip"})
        assert headers["Content-Encoding"] == "gzip" and headers["X-Dlba-Cdn"] == "rewritten"
        assert 'src="https://cdn.example.test/static/app.js"' in gzip.decompress(body).decode()
        status, headers, body = await _get(s, f"{arr.url}/page?br=1", {"Accept-Encoding": "br"})
        assert headers["Content-Encoding"] == "br" and headers["X-Dlba-Cdn"] == "rewritten"
        assert 'src="https://cdn.example.test/static/app.js"' in brotli.decompress(body).decode()

        async with s.get(f"{arr.admin_url}/metrics",
                         headers={"Authorization": f"Bearer {arr.token}"}) as r:
            metrics = await r.text()
        assert 'dlba_cdn_rewritten_total{node="n1",service="default"} 3.0' in metrics
        assert 'dlba_cdn_cache_misses_total{node="n1",service="default"}' in metrics
        assert 'dlba_cdn_cache_hits_total{node="n1",service="default"} 0.0' in metrics
        assert 'dlba_cdn_bytes_offloaded_total{node="n1",service="default"} 0.0' not in metrics


async def test_cache_fresh_then_revalidated_and_never_private(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, extra=CONFIG) as arr, _session() as s:
        await _choose_all_objects(arr, s)
        url = f"{arr.url}/page?max_age=1"
        before = await _renders(arr, s)
        _, h1, first = await _get(s, url)
        assert h1["X-Dlba-Cdn"] == "rewritten"
        _, h2, second = await _get(s, url)
        assert h2["X-Dlba-Cdn"] == "hit" and second == first
        assert await _renders(arr, s) == before + 1  # the hit never reached a back end

        # Vary: Accept-Encoding: another value is another variant, not this one.
        _, h3, _ = await _get(s, url, {"Accept-Encoding": "deflate"})
        assert h3["X-Dlba-Cdn"] == "rewritten"

        await asyncio.sleep(1.2)  # stale: revalidated with If-None-Match, answered 304
        _, h4, third = await _get(s, url)
        assert h4["X-Dlba-Cdn"] == "revalidated" and third == first
        assert await _renders(arr, s) == before + 2  # the 304 sent no body
        _, h5, _ = await _get(s, url)
        assert h5["X-Dlba-Cdn"] == "hit"  # fresh again for max_age

        for uncacheable, headers in (("private=1", PLAIN), ("cookie=1", PLAIN),
                                     ("auth=1", {**PLAIN, "Authorization": "Basic eDp5"})):
            page = f"{arr.url}/page?max_age=60&{uncacheable}"
            seen = [(await _get(s, page, headers))[1]["X-Dlba-Cdn"] for _ in range(2)]
            assert seen == ["rewritten", "rewritten"], uncacheable
        assert await _renders(arr, s) == before + 2 + 6


async def test_worker_processes_report_and_rewrite(tmp_path: Path) -> None:
    """With [proxy] workers = 2 each worker samples, reports to its node and rewrites with the
    node's choice; the node's metrics sum the workers' counters."""
    extra = CONFIG + "\n[proxy]\nworkers = 2\n"
    async with loopback_array(tmp_path, extra=extra) as arr:
        for _ in range(100):  # the workers listen once they are up
            try:
                async with _session() as s:
                    await _get(s, f"{arr.url}/health")
                break
            except aiohttp.ClientError:
                await asyncio.sleep(0.1)
        # A new connection per request: the kernel spreads them over both workers.
        conn = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=conn, auto_decompress=False) as s:
            await _choose_all_objects(arr, s)
            page = f"{arr.url}/page?private=1"
            for _ in range(100):  # each worker takes the node's choice with its next report
                seen = [(await _get(s, page))[1].get("X-Dlba-Cdn") for _ in range(4)]
                if seen == ["rewritten"] * 4:
                    break
                await asyncio.sleep(0.1)
            seen = [(await _get(s, page))[1].get("X-Dlba-Cdn") for _ in range(12)]
            assert seen == ["rewritten"] * 12
            for _ in range(50):  # the workers' counters arrive with their next reports
                async with s.get(f"{arr.admin_url}/metrics",
                                 headers={"Authorization": f"Bearer {arr.token}"}) as r:
                    metrics = await r.text()
                line = next(x for x in metrics.splitlines()
                            if x.startswith("dlba_cdn_rewritten_total"))
                if float(line.split()[-1]) >= 16:
                    break
                await asyncio.sleep(0.1)
    assert float(line.split()[-1]) >= 16  # every page each worker rewrote, summed


async def test_dashboard_lists_the_chosen_objects(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, extra=CONFIG) as arr, _session() as s, \
            chromium(tmp_path) as b:
        await _choose_all_objects(arr, s)
        await b.goto(f"{arr.admin_url}/?token={arr.token}")
        rows = "[...document.querySelectorAll('#cdn tbody tr[data-object]')].length"
        assert await b.wait(f"{rows} === {len(OBJECTS)}")
        first = await b.eval("document.querySelector('#cdn tbody tr').dataset.object")
        assert first == "/static/hero.jpg"  # heaviest first
        caption = await b.eval("document.getElementById('cdn-caption').textContent")
        assert "decided by n1" in caption
