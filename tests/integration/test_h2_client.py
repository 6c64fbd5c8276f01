"""HTTP/2 for clients through a real node with real clients: ALPN, curl --http2, streams of one
connection spread over back ends, bodies both ways, cookies."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
from pathlib import Path
from typing import cast

import pytest

from dlba.config import ConfigError, parse_config
from dlba.demo_site import OBJECTS
from tests.chromium_cdp import chromium
from tests.integration.loopback import LoopbackArray, loopback_array


async def curl(arr: LoopbackArray, *args: str) -> subprocess.CompletedProcess[str]:
    cmd = ["curl", "-sS", "--http2", "--cacert", str(arr.certs.ca_cert),
           "--resolve", f"localhost:{arr.https_port}:127.0.0.1", *args]
    return await asyncio.to_thread(subprocess.run, cmd, capture_output=True, text=True,
                                   timeout=30, check=False)


def url(arr: LoopbackArray, path: str) -> str:
    return f"https://localhost:{arr.https_port}{path}"


async def test_curl_http2_streams_of_one_connection_spread_over_back_ends(
        tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 3) as arr:
        # Twelve requests on one connection (curl reuses it), each scheduled on its own.
        urls = [url(arr, "/whoami")] * 12
        res = await curl(arr, "-w", " %{http_version} %{num_connects}\n", *urls)
        assert res.returncode == 0, res.stderr
        rows = [line.split() for line in res.stdout.splitlines()]
        assert len(rows) == 12 and all(r[1] == "2" for r in rows), res.stdout
        assert {r[0] for r in rows} == {"b1", "b2", "b3"}, res.stdout
        connects = [int(r[2]) for r in rows]
        assert sum(connects) == 1, res.stdout  # one TCP connection for all twelve


async def test_curl_http2_bodies_both_ways_and_cookie_persistence(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 3) as arr:
        res = await curl(arr, "-i", url(arr, "/login"))
        assert res.returncode == 0, res.stderr
        head = res.stdout.lower()
        assert head.startswith("http/2 200"), res.stdout
        assert "set-cookie: dlbaserver=" in head and "jsessionid=" in head
        assert "transfer-encoding" not in head and "connection:" not in head
        backend = next(line.split(":")[1].strip() for line in head.splitlines()
                       if line.startswith("x-backend:"))
        cookie = next(line.split(":", 1)[1].split(";")[0].strip()
                      for line in res.stdout.splitlines()
                      if line.lower().startswith("set-cookie: dlbaserver="))
        # The persistence cookie pins every stream of a new connection to that back end.
        res = await curl(arr, "-H", f"Cookie: {cookie}", "-w", "\n", *[url(arr, "/whoami")] * 6)
        assert res.stdout.split() == [backend] * 6, res.stdout
        # HEAD: the length of the body a GET would get, and no body.
        res = await curl(arr, "-I", url(arr, "/bytes/1000"))
        assert res.returncode == 0 and res.stdout.lower().startswith("http/2 200"), res
        assert "content-length: 1000" in res.stdout.lower()
        # A status without a body, from the back end.
        res = await curl(arr, "-o", "/dev/null", "-w", "%{http_code}", url(arr, "/status/204"))
        assert res.returncode == 0 and res.stdout == "204", res
        # A large response streams through the client's flow-control window.
        res = await curl(arr, "-o", "/dev/null", "-w", "%{size_download} %{http_version}",
                         url(arr, "/bytes/3000000"))
        assert res.stdout == "3000000 2", (res.stdout, res.stderr)
        # A request body without Content-Length (curl streams stdin) reaches the back end
        # whole (chunked), and echo streams it back through both flow-control windows.
        body = os.urandom(700_000)
        for path in ("/digest", "/echo"):
            res = await asyncio.to_thread(
                subprocess.run,
                ["curl", "-sS", "--http2", "--cacert", str(arr.certs.ca_cert), "--resolve",
                 f"localhost:{arr.https_port}:127.0.0.1", "-T", "-", "-X", "POST",
                 url(arr, path)],
                input=body, capture_output=True, timeout=30, check=False)
            assert res.returncode == 0, res.stderr
            out = cast(bytes, res.stdout)
            if path == "/digest":
                assert json.loads(out) == {
                    "length": len(body), "sha256": hashlib.sha256(body).hexdigest()}
            else:
                assert out == body


async def test_request_headers_translated_for_the_back_end(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 1) as arr:
        res = await curl(arr, "-H", "Cookie: a=1", "-H", "Cookie: b=2", "-H", "TE: trailers",
                         url(arr, "/headers"))
        got = json.loads(res.stdout)
        assert got["Host"] == f"localhost:{arr.https_port}"
        assert got["Cookie"] == "a=1; b=2"
        assert got["X-Forwarded-For"] == "127.0.0.1" and got["X-Forwarded-Proto"] == "https"
        assert "TE" not in got and "te" not in got


async def test_chromium_fetches_many_assets_over_one_http2_connection(tmp_path: Path) -> None:
    """A browser offers h2: the page and its 40 assets come over one connection, each asset a
    stream scheduled on its own (several back ends answer)."""
    async with loopback_array(tmp_path, 3) as arr, chromium(tmp_path) as b:
        # The dev CA is not in Chromium's store; the certificate is checked by the tests above.
        await b.send("Security.setIgnoreCertificateErrors", {"ignore": True})
        before = arr.node.ctx.stats.connections_total
        await b.goto(url(arr, "/whoami"))
        await b.wait("document.readyState === 'complete' && document.body.innerText.length > 0")
        names = await b.eval(
            "Promise.all(Array.from({length: 40}, (_, i) => fetch('/whoami?asset=' + i)"
            ".then(r => r.text())))")
        assert len(names) == 40 and set(names) == {"b1", "b2", "b3"}, names
        protocols = await b.eval(
            "[performance.getEntriesByType('navigation')[0].nextHopProtocol, "
            "...performance.getEntriesByType('resource').map(e => e.nextHopProtocol)]")
        assert set(protocols) == {"h2"} and len(protocols) >= 41, protocols
        assert arr.node.ctx.stats.connections_total - before == 1
        assert arr.node.ctx.stats.requests >= 41


async def test_h2load_smoke(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 2) as arr:
        res = await asyncio.to_thread(
            subprocess.run, ["h2load", "-n", "400", "-c", "2", "-m", "20",
                             f"https://127.0.0.1:{arr.https_port}/whoami"],
            capture_output=True, text=True, timeout=60, check=False)
        assert "Application protocol: h2" in res.stdout, res.stdout
        assert "400 succeeded, 0 failed, 0 errored, 0 timeout" in res.stdout, res.stdout
        assert "400 2xx" in res.stdout


async def test_http2_off_offers_http1_only(tmp_path: Path) -> None:
    async with loopback_array(tmp_path, 1, extra="[proxy]\nhttp2 = false\n") as arr:
        res = await curl(arr, "-o", "/dev/null", "-w", "%{http_version}", url(arr, "/whoami"))
        assert res.returncode == 0 and res.stdout == "1.1", res
        text = arr.config_path.read_text().replace("http2 = false", 'http2 = "yes"')
    with pytest.raises(ConfigError, match=r"proxy\.http2"):
        parse_config(text, arr.config_path, check_files=False)


async def test_cdn_rewritten_and_cached_pages_over_http2(tmp_path: Path) -> None:
    """The CDN offload's response filter and its cached answers (node-made HTTP/1.1 responses,
    turned into HTTP/2) reach an h2 client as they reach an HTTP/1.1 one."""
    cdn = "https://cdn.example.test"
    extra = f'[cdn]\nenabled = true\nbase = "{cdn}"\nsample = 1.0\ntop = 20\n'
    async with loopback_array(tmp_path, 1, extra=extra) as arr:
        for name in OBJECTS:  # sampled: the node chooses them for the CDN
            res = await curl(arr, "-o", "/dev/null", url(arr, f"/static/{name}"))
            assert res.returncode == 0, res.stderr
        for _ in range(100):
            page = await curl(arr, "-H", "Accept-Encoding: identity", url(arr, "/page"))
            if f'src="{cdn}/static/app.js"' in page.stdout:
                break
            await asyncio.sleep(0.1)
        else:
            raise AssertionError(f"never rewritten: {page.stdout[:300]}")
        # once more: now from the node's cache (a node-made answer), still whole over HTTP/2
        again = await curl(arr, "-H", "Accept-Encoding: identity", "-w", "\n%{http_version}",
                           url(arr, "/page"))
        body, _, version = again.stdout.rpartition("\n")
        assert version == "2" and body == page.stdout, (again.stderr, body[:200])


async def test_chromium_websocket_over_the_http2_connection(tmp_path: Path) -> None:
    """RFC 8441: Chromium opens its WebSocket as a stream of the page's h2 connection; the
    back end sees an HTTP/1.1 Upgrade and echoes."""
    async with loopback_array(tmp_path, 1) as arr, chromium(tmp_path) as b:
        await b.send("Security.setIgnoreCertificateErrors", {"ignore": True})
        await b.goto(url(arr, "/whoami"))
        await b.wait("document.readyState === 'complete' && document.body.innerText.length > 0")
        before = arr.node.ctx.stats.connections_total
        h2_before = arr.node.ctx.stats.h2_connections  # Chromium may have preconnected a spare
        assert h2_before >= 1
        echo = await b.eval(
            "new Promise((ok, fail) => { const ws = new WebSocket("
            f"'wss://localhost:{arr.https_port}/ws'); "
            "ws.onopen = () => ws.send('hello over h2'); "
            "ws.onmessage = e => { ws.close(); ok(e.data); }; "
            "ws.onerror = () => fail('websocket error'); "
            "setTimeout(() => fail('timeout'), 8000); })")
        assert echo == "hello over h2"
        assert arr.node.ctx.stats.connections_total == before  # no new connection
        assert arr.node.ctx.stats.h2_connections == h2_before
