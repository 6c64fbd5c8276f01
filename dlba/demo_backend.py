"""The demo web server of the contract (``dlba demo-backend --name B --listen HOST:PORT``).

It stands in for the patent's "back end Web servers": unmodified HTTP servers that know nothing
about the array. ``dlba up`` runs one per back-end namespace; tests run them on loopback. Every
response says which back end produced it (``X-Backend``), which is how tests and the demo see
the node's scheduling, and ``/login`` starts a JSESSIONID session so cookie injection can be
watched end to end.

Routes: ``/whoami``, ``/login``, ``/bytes/N``, ``/health`` (contract); ``/echo``, ``/digest``,
``/slow?ms=N``, ``/headers``, ``/status/N``, ``/ws`` (test helpers); ``/page`` and
``/static/<name>`` (the CDN offload's demo site, dlba/demo_site.py).
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import logging
import secrets
import signal
import sys

from aiohttp import WSMsgType, web

from dlba.demo_site import add_site_routes

log = logging.getLogger("dlba.demo_backend")

CHUNK = 64 * 1024
# One shared, immutable chunk: /bytes/N writes slices of it, so a 1 GB response costs 64 KB of
# memory and no per-chunk allocation beyond the final partial slice.
_PAYLOAD = bytes(range(256)) * (CHUNK // 256)
MAX_BYTES = 1 << 40
MAX_SLOW_MS = 600_000

NAME_KEY = web.AppKey("backend_name", str)


def _name(request: web.Request) -> str:
    return request.app[NAME_KEY]


async def whoami(request: web.Request) -> web.Response:
    return web.Response(text=_name(request))


async def health(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def login(request: web.Request) -> web.Response:
    resp = web.Response(text=f"logged in at {_name(request)}\n")
    # Written by hand (not set_cookie) so the line is exactly the contract's, attribute order
    # and all: cookie-injection tests compare attributes against it.
    resp.headers.add("Set-Cookie",
                     f"JSESSIONID={secrets.token_hex(16)}; Path=/; Max-Age=3600; HttpOnly")
    return resp


async def bytes_(request: web.Request) -> web.StreamResponse:
    try:
        n = int(request.match_info["n"])
    except ValueError:
        raise web.HTTPBadRequest(text="N must be an integer\n") from None
    if not 0 <= n <= MAX_BYTES:
        raise web.HTTPBadRequest(text=f"N must be 0..{MAX_BYTES}\n")
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    # Content-Length (not chunked): clients and the proxy can check the body is complete.
    resp.content_length = n
    await resp.prepare(request)
    view = memoryview(_PAYLOAD)
    left = n
    while left > 0:
        step = min(left, CHUNK)
        # write() waits for the transport to drain, so a slow reader holds us here instead of
        # letting the body pile up in memory.
        await resp.write(view[:step])
        left -= step
    await resp.write_eof()
    return resp


async def echo(request: web.Request) -> web.StreamResponse:
    resp = web.StreamResponse(headers={
        "Content-Type": request.headers.get("Content-Type", "application/octet-stream")})
    if request.content_length is not None:
        resp.content_length = request.content_length
    else:
        resp.enable_chunked_encoding()
    await resp.prepare(request)
    # Stream: each chunk goes back as it arrives, so huge bodies and slow uploads work.
    async for chunk in request.content.iter_chunked(CHUNK):
        await resp.write(chunk)
    await resp.write_eof()
    return resp


async def digest(request: web.Request) -> web.Response:
    h = hashlib.sha256()
    n = 0
    async for chunk in request.content.iter_chunked(CHUNK):
        h.update(chunk)
        n += len(chunk)
    return web.json_response({"length": n, "sha256": h.hexdigest()})


async def slow(request: web.Request) -> web.Response:
    try:
        ms = int(request.query.get("ms", "1000"))
    except ValueError:
        raise web.HTTPBadRequest(text="ms must be an integer\n") from None
    ms = max(0, min(ms, MAX_SLOW_MS))
    await asyncio.sleep(ms / 1000)
    return web.Response(text=f"slept {ms} ms\n")


async def headers(request: web.Request) -> web.Response:
    # Names exactly as received; repeated headers joined with ", " (RFC 9110 5.3), so a test
    # can check what the proxy forwarded (X-Forwarded-For, Forwarded, Host, ...).
    out: dict[str, str] = {}
    for name, value in request.headers.items():
        out[name] = f"{out[name]}, {value}" if name in out else value
    return web.json_response(out)


async def status(request: web.Request) -> web.Response:
    try:
        code = int(request.match_info["code"])
    except ValueError:
        raise web.HTTPBadRequest(text="status must be an integer\n") from None
    if not 200 <= code <= 599:
        # 1xx are interim responses and cannot be the final answer.
        raise web.HTTPBadRequest(text="status must be 200..599\n")
    if code in (204, 304):
        return web.Response(status=code)
    return web.Response(status=code, text=f"status {code}\n")


async def ws(request: web.Request) -> web.WebSocketResponse:
    sock = web.WebSocketResponse()
    await sock.prepare(request)
    async for msg in sock:
        if msg.type == WSMsgType.TEXT:
            await sock.send_str(msg.data)
        elif msg.type == WSMsgType.BINARY:
            await sock.send_bytes(msg.data)
    return sock


async def _tag_response(request: web.Request, response: web.StreamResponse) -> None:
    # A signal, not a handler's job: errors (404, 400, 500) must carry X-Backend too.
    response.headers["X-Backend"] = request.app[NAME_KEY]


def make_app(name: str) -> web.Application:
    app = web.Application(client_max_size=0)  # no limit: /echo and /digest stream
    app[NAME_KEY] = name
    app.on_response_prepare.append(_tag_response)
    app.router.add_get("/whoami", whoami)
    app.router.add_get("/health", health)
    app.router.add_get("/login", login)
    app.router.add_get(r"/bytes/{n}", bytes_)
    app.router.add_post("/echo", echo)
    app.router.add_put("/echo", echo)
    app.router.add_post("/digest", digest)
    app.router.add_put("/digest", digest)
    app.router.add_get("/slow", slow)
    app.router.add_get("/headers", headers)
    app.router.add_route("*", r"/status/{code}", status)
    app.router.add_get("/ws", ws)
    add_site_routes(app)  # /page and /static/<name> (dlba/demo_site.py)
    return app


async def start_demo_backend(name: str, host: str = "127.0.0.1", port: int = 0
                             ) -> web.AppRunner:
    """Start the demo back end; ``port=0`` picks a free port (see ``bound_port``).
    Stop it with ``await runner.cleanup()``."""
    runner = web.AppRunner(
        make_app(name),
        access_log=log,
        # One line per request: who served it, what, status, size, time.
        access_log_format=f'backend={name} client=%a "%r" status=%s bytes=%b time=%Tf',
        handle_signals=False,
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, reuse_address=True, backlog=1024)
    await site.start()
    return runner


def bound_port(runner: web.AppRunner) -> int:
    """The TCP port the runner listens on (useful after ``port=0``)."""
    return int(runner.addresses[0][1])


def parse_listen(text: str) -> tuple[str, int]:
    """``HOST:PORT`` or ``[V6]:PORT`` -> (host, port); ValueError with the reason."""
    host, sep, port_s = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_s.isdigit() or not 0 < int(port_s) < 65536:
        raise ValueError(f"--listen {text!r}: port must be 1..65535")
    return host, int(port_s)


async def _serve(name: str, host: str, port: int) -> None:
    runner = await start_demo_backend(name, host, port)
    log.info("demo back end %s listening on %s:%d", name, host, bound_port(runner))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)  # Linux only, like the whole array
    try:
        await stop.wait()
    finally:
        await runner.cleanup()


def demo_backend_main(argv: list[str]) -> int:
    """``dlba demo-backend --name B --listen HOST:PORT``; returns the exit code."""
    parser = argparse.ArgumentParser(prog="dlba demo-backend",
                                     description="Run the demo back-end web server.")
    parser.add_argument("--name", required=True, help="back-end name, sent as X-Backend")
    parser.add_argument("--listen", default="127.0.0.1:8080", help="HOST:PORT to listen on")
    try:
        args = parser.parse_args(argv)
        host, port = parse_listen(args.listen)
    except SystemExit as exc:  # argparse: 2 on usage errors, 0 on --help
        return int(exc.code or 0)
    except ValueError as exc:
        print(f"dlba demo-backend: {exc}", file=sys.stderr)
        return 2
    if not logging.getLogger().handlers:
        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")
    try:
        asyncio.run(_serve(args.name, host, port))
    except OSError as exc:
        print(f"dlba demo-backend: cannot listen on {args.listen}: {exc.strerror or exc}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(demo_backend_main(sys.argv[1:]))
