"""The demo back end's small web site for the CDN offload: ``GET /page`` (an HTML page that
references /static objects in every attribute the offload rewrites) and ``GET /static/<name>``.

The same page and objects on every back end, byte for byte, so validators (ETag,
Last-Modified) hold across the array. ``/page`` options (query): ``gzip=1`` gzip-encoded,
``br=1`` brotli-encoded,
``size=N`` padded with paragraphs to about N bytes, ``max_age=N`` (default 60),
``private=1``, ``cookie=1``, ``v=TEXT`` a version string in the page (its content changes).
``/page/renders`` says how many full bodies /page sent (a revalidation answered 304 is not one).
"""

from __future__ import annotations

import gzip
import hashlib

import brotli
from aiohttp import web

LAST_MODIFIED = "Tue, 01 Dec 2026 00:00:00 GMT"
# name: (content type, size in bytes)
OBJECTS = {
    "app.css": ("text/css", 24 * 1024),
    "app.js": ("application/javascript", 60 * 1024),
    "logo.png": ("image/png", 12 * 1024),
    "logo-2x.png": ("image/png", 30 * 1024),
    "hero.jpg": ("image/jpeg", 150 * 1024),
    "poster.jpg": ("image/jpeg", 80 * 1024),
    "bg.gif": ("image/gif", 8 * 1024),
    "icon.svg": ("image/svg+xml", 2 * 1024),
    "font.woff2": ("font/woff2", 30 * 1024),
}
RENDERS = web.AppKey("page_renders", list[int])

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8">
<title>DLBA demo page {version}</title>
<link rel="stylesheet" href="/static/app.css">
<link rel="preload" href="/static/font.woff2" as="font" type="font/woff2" crossorigin>
<LINK REL=icon HREF=/static/icon.svg>
<script src="/static/app.js" defer></script>
<style>body {{ margin: 0 }}</style>
</head>
<body style="background: url('/static/bg.gif') repeat">
<!-- <img src="/static/hero.jpg"> is only a comment -->
<h1>Speederized &amp; cached</h1>
<img src="/static/logo.png" srcset="/static/logo.png 1x, /static/logo-2x.png 2x" alt="logo">
<img src="static/hero.jpg" alt="relative">
<video poster="/static/poster.jpg" src="/video.mp4"></video>
<a href="/static/hero.jpg?download=1&amp;w=2">download</a>
<script>var t = "<img src='/static/logo.png'>";</script>
{padding}</body></html>
"""
PARAGRAPH = ("<p>Lorem ipsum dolor sit amet, <a href=\"/other\">consectetur</a> adipiscing "
             "elit, sed do eiusmod <img src=\"/static/icon.svg\" alt=\"\"> tempor.</p>\n")


def page_html(version: str = "1", size: int = 0) -> bytes:
    head = TEMPLATE.format(version=version, padding="")
    count = max(0, (size - len(head)) // len(PARAGRAPH)) if size else 0
    return TEMPLATE.format(version=version, padding=PARAGRAPH * count).encode()


def static_body(name: str) -> bytes | None:
    spec = OBJECTS.get(name)
    if spec is None:
        return None
    seed = hashlib.sha256(name.encode()).digest()
    return (seed * (spec[1] // len(seed) + 1))[:spec[1]]


def _etag(body: bytes) -> str:
    return '"' + hashlib.sha256(body).hexdigest()[:20] + '"'


async def page(request: web.Request) -> web.Response:
    q = request.query
    try:
        size = min(int(q.get("size", "0")), 64 * 1024 * 1024)
        max_age = int(q.get("max_age", "60"))
    except ValueError:
        raise web.HTTPBadRequest(text="size and max_age are integers\n") from None
    body = page_html(q.get("v", "1"), size)
    headers = {"Content-Type": "text/html; charset=utf-8", "Last-Modified": LAST_MODIFIED,
               "Cache-Control": ("private" if q.get("private") else "public")
               + f", max-age={max_age}", "Vary": "Accept-Encoding"}
    if q.get("gzip"):
        body = gzip.compress(body, mtime=0)
        headers["Content-Encoding"] = "gzip"
    elif q.get("br"):
        body = brotli.compress(body)
        headers["Content-Encoding"] = "br"
    headers["ETag"] = _etag(body)
    if request.headers.get("If-None-Match") in (headers["ETag"], "W/" + headers["ETag"]):
        return web.Response(status=304, headers={k: v for k, v in headers.items()
                                                 if k in ("ETag", "Cache-Control", "Vary")})
    request.app[RENDERS][0] += 1
    resp = web.Response(body=body, headers=headers)
    if q.get("cookie"):
        resp.headers.add("Set-Cookie", "visitor=1; Path=/")
    return resp


async def renders(request: web.Request) -> web.Response:
    return web.Response(text=str(request.app[RENDERS][0]))


async def static(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    body = static_body(name)
    if body is None:
        raise web.HTTPNotFound(text=f"no object {name}\n")
    etag = _etag(body)
    headers = {"Content-Type": OBJECTS[name][0], "ETag": etag,
               "Cache-Control": "public, max-age=3600", "Last-Modified": LAST_MODIFIED}
    if request.headers.get("If-None-Match") == etag:
        return web.Response(status=304, headers=headers)
    return web.Response(body=body, headers=headers)


def add_site_routes(app: web.Application) -> None:
    app[RENDERS] = [0]
    app.router.add_get("/page", page)
    app.router.add_get("/page/renders", renders)
    app.router.add_get(r"/static/{name}", static)
