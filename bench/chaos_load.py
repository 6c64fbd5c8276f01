"""Mixed load against the VIP for the chaos soak (runs in the client namespace).

    python -m bench.chaos_load --duration S --t0 MONOTONIC --cafile CA --out FILE

Loops, all bounded by the duration: HTTP and HTTPS keepalive GETs, a new connection per GET,
a prober (a new connection every 50 ms, for the longest gap), 10 MB downloads read at a limited
rate (so they are in flight when faults strike), uploads (POST /digest, checked), WebSocket
echo sessions, and logged-in sessions (GET /login, then GETs carrying the cookies the array
gave, each answer's X-Backend recorded). Times are seconds from `--t0` (CLOCK_MONOTONIC, the
same clock as the controller's). The records go to `--out` as JSON; bench.chaos_figures turns
them into figures.

Retry rule (browser-like, see bench/README.md): an idempotent request whose connection fails
before a complete response (connect refused/timeout, reset, EOF, TLS error, body cut short) is
retried on a new connection, after 0, 0.1, 0.2, 0.4 ... s, while less than `--retry-budget`
seconds have passed since its first attempt. Not retried: any HTTP answer (a 5xx is final),
a POST, a download whose body was cut (a transfer: judged by bench.chaos_figures).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import os
import resource
import signal
import ssl
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from bench.chaos_http import (
    Conn,
    ExchangeError,
    Response,
    client_tls,
    connect,
    exchange,
    ws_close,
    ws_echo,
    ws_open,
)

DOWNLOAD = 10 * 1024 * 1024
UPLOAD = 4 * 1024 * 1024
MAX_FAILURES_KEPT = 500


class Load:
    def __init__(self, a: argparse.Namespace) -> None:
        self.t0: float = a.t0
        self.end: float = a.t0 + a.duration
        self.tls = client_tls(a.cafile)
        self.budget = a.retry_budget
        self.scale = a.scale
        self.counts: dict[str, dict[str, int]] = {}
        self.failures: list[dict[str, Any]] = []
        self.probes_ok: list[float] = []
        self.probes_failed = 0
        self.transfers: list[dict[str, Any]] = []
        self.crashes: list[str] = []
        self.sessions: list[list[Any]] = []  # [session, t, backend, sport, scheme]
        self.upload_body = os.urandom(UPLOAD)
        self.upload_sha = hashlib.sha256(self.upload_body).hexdigest()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def running(self) -> bool:
        return time.monotonic() < self.end

    def ctx(self, scheme: str) -> ssl.SSLContext | None:
        return self.tls if scheme == "https" else None

    def count(self, kind: str, what: str) -> None:
        c = self.counts.setdefault(kind, {"requests": 0, "ok": 0, "retried": 0, "lost": 0,
                                          "failed": 0})
        c[what] += 1

    async def idempotent(self, kind: str, scheme: str, conn: Conn | None,
                         send: Callable[[Conn], Awaitable[Response]],
                         expect: Callable[[Response], bool]) -> tuple[Response | None, Conn | None]:
        """One idempotent request under the retry rule; returns (answer or None, connection)."""
        self.count(kind, "requests")
        start = time.monotonic()
        errors: list[str] = []
        delay = 0.0
        while True:
            try:
                if conn is None:
                    conn = await connect(self.ctx(scheme), 5.0)
                resp = await send(conn)
            except ExchangeError as exc:
                errors.append(f"{self.now():.3f} sport={conn.sport if conn else 0} {exc}")
                if conn is not None:
                    conn.close()
                conn = None
                if time.monotonic() + delay - start < self.budget:
                    await asyncio.sleep(delay)
                    delay = max(0.1, delay * 2)
                    continue
                self.count(kind, "lost")
                self.fail(kind, scheme, "connection", errors, start)
                return None, None
            if errors:
                self.count(kind, "retried")
            if not expect(resp):
                self.count(kind, "lost")
                self.fail(kind, scheme, f"status {resp.status} backend {resp.backend!r}",
                          errors, start)
                conn.close()
                return None, None
            self.count(kind, "ok")
            if not resp.keep_alive:
                conn.close()
                conn = None
            return resp, conn

    def fail(self, kind: str, scheme: str, why: str, errors: list[str], start: float) -> None:
        if len(self.failures) < MAX_FAILURES_KEPT:
            self.failures.append({"t": round(start - self.t0, 3), "kind": kind,
                                  "scheme": scheme, "why": why, "attempts": errors[-6:]})

    # --- loops ----------------------------------------------------------------------------
    async def keepalive(self, scheme: str, rate: float) -> None:
        conn: Conn | None = None
        while self.running():
            t = time.monotonic()
            _, conn = await self.idempotent(
                f"keepalive_{scheme}", scheme, conn,
                lambda c: exchange(c, "GET", "/whoami"), lambda r: r.status == 200)
            await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - t)))
        if conn:
            conn.close()

    async def new_connections(self, rate: float) -> None:
        i = 0
        while self.running():
            t = time.monotonic()
            scheme = ("http", "https")[i % 2]
            i += 1
            _, conn = await self.idempotent(
                f"newconn_{scheme}", scheme, None,
                lambda c: exchange(c, "GET", "/whoami", {"Connection": "close"}),
                lambda r: r.status == 200)
            if conn:
                conn.close()
            await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - t)))

    async def probe_once(self) -> None:
        t = self.now()
        try:
            c = await connect(None, 0.5)
            try:
                r = await exchange(c, "GET", "/whoami", {"Connection": "close"}, timeout=1.0)
            finally:
                c.close()
            if r.status == 200:
                self.probes_ok.append(round(t, 3))
                return
        except ExchangeError:
            pass
        self.probes_failed += 1

    async def prober(self, interval: float) -> None:
        tasks: set[asyncio.Task[None]] = set()
        while self.running():
            task = asyncio.create_task(self.probe_once())
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            await asyncio.sleep(interval)
        if tasks:
            await asyncio.wait(tasks, timeout=3)

    def transfer(self, kind: str, scheme: str, t0: float, conn: Conn | None, ok: bool,
                 backend: str, nbytes: int, error: str) -> None:
        self.transfers.append({"kind": kind, "scheme": scheme, "t0": round(t0, 3),
                               "t1": round(self.now(), 3), "sport": conn.sport if conn else 0,
                               "backend": backend, "ok": ok, "bytes": nbytes, "error": error})

    async def downloads(self, n: int, rate: float) -> None:
        while self.running():
            scheme = ("http", "https")[n % 2]
            n += 1
            t0 = self.now()
            box: dict[str, Any] = {}

            async def send(c: Conn, box: dict[str, Any] = box) -> Response:
                box["conn"] = c
                try:
                    return await exchange(c, "GET", f"/bytes/{DOWNLOAD}",
                                          {"Connection": "close"}, keep_body=False, rate=rate,
                                          timeout=10)
                except ExchangeError as exc:
                    if exc.stage != "body":
                        raise  # no answer yet: the retry rule applies
                    box["error"] = str(exc)
                    box["resp"] = exc.response
                    raise _Cut() from None

            try:
                r, conn = await self.idempotent(
                    "download", scheme, None, send,
                    lambda r: r.status == 200 and r.length == DOWNLOAD)
            except _Cut:
                box["conn"].close()
                self.count("download", "failed")
                cut: Response | None = box.get("resp")
                self.transfer("download", scheme, t0, box.get("conn"), False,
                              cut.backend if cut else "", cut.length if cut else 0,
                              box.get("error", ""))
                continue
            if conn:
                conn.close()
            if r is not None:
                self.transfer("download", scheme, t0, box.get("conn"), True, r.backend,
                              r.length, "")
            await asyncio.sleep(0.3)

    async def uploads(self, rate: float) -> None:
        n = 0
        while self.running():
            scheme = ("http", "https")[n % 2]
            n += 1
            t0 = self.now()
            self.count("upload", "requests")
            conn: Conn | None = None
            try:
                conn = await connect(self.ctx(scheme), 5.0)
                r = await exchange(conn, "POST", "/digest", {"Connection": "close"},
                                   self.upload_body, timeout=10, send_rate=rate)
                body = json.loads(r.body) if r.status == 200 else {}
                ok = body.get("sha256") == self.upload_sha and body.get("length") == UPLOAD
                self.count("upload", "ok" if ok else "failed")
                self.transfer("upload", scheme, t0, conn, ok, r.backend, UPLOAD,
                              "" if ok else f"status {r.status} {r.body[:80]!r}")
            except (ExchangeError, ValueError) as exc:
                self.count("upload", "failed")
                self.transfer("upload", scheme, t0, conn, False, "", 0, str(exc))
            finally:
                if conn:
                    conn.close()
            await asyncio.sleep(0.5)

    async def websockets(self, n: int, length_s: float) -> None:
        while self.running():
            scheme = ("http", "https")[n % 2]
            n += 1
            t0 = self.now()
            self.count("websocket", "requests")
            conn: Conn | None = None
            backend, error, msgs = "", "", 0
            try:
                conn = await connect(self.ctx(scheme), 5.0)
                backend = (await ws_open(conn, "/ws", 5.0)).backend
                stop = min(time.monotonic() + length_s, self.end)
                while time.monotonic() < stop:
                    await ws_echo(conn, b"chaos %d" % msgs, 5.0)
                    msgs += 1
                    await asyncio.sleep(0.2)
                await ws_close(conn)
            except ExchangeError as exc:
                error = str(exc)
            self.count("websocket", "failed" if error else "ok")
            self.transfer("websocket", scheme, t0, conn, not error, backend, msgs, error)
            if conn:
                conn.close()
            await asyncio.sleep(0.3)

    async def session(self, sid: int, rate: float) -> None:
        scheme = ("http", "https")[sid % 2]
        jar: dict[str, str] = {}
        conn: Conn | None = None
        i = 0
        while self.running():
            t = time.monotonic()
            path = "/whoami" if jar else "/login"
            # Every other request on a new connection: a new source port, so another bucket,
            # usually another node of the array.
            if i % 2 == 0 and conn is not None:
                conn.close()
                conn = None
            i += 1
            headers = {"Cookie": "; ".join(f"{k}={v}" for k, v in jar.items())} if jar else {}

            def send(c: Conn, p: str = path, h: dict[str, str] = headers) -> Awaitable[Response]:
                return exchange(c, "GET", p, h)

            r, conn = await self.idempotent("session", scheme, conn, send,
                                            lambda r: r.status == 200)
            if r is not None:
                for value in r.cookies:
                    name, _, rest = value.partition("=")
                    val = rest.split(";")[0]
                    if "max-age=0" in value.lower() or not val:
                        jar.pop(name.strip(), None)
                    else:
                        jar[name.strip()] = val
                sport = conn.sport if conn else 0
                self.sessions.append([sid, round(self.now(), 3), r.backend, sport, scheme,
                                      path == "/login"])
            await asyncio.sleep(max(0.0, 1 / rate - (time.monotonic() - t)))
        if conn:
            conn.close()

    async def run(self) -> None:
        s = self.scale
        loops = [self.prober(0.05)]
        loops += [self.keepalive(sch, 8 * s) for sch in ("http", "https") for _ in range(2)]
        loops += [self.new_connections(8 * s)]
        loops += [self.downloads(i, 5e6) for i in range(2)]
        loops += [self.uploads(4e6)]
        loops += [self.websockets(i, 10.0) for i in range(2)]
        loops += [self.session(i, 2 * s) for i in range(8)]
        await asyncio.gather(*(self.guard(loop) for loop in loops))

    async def guard(self, loop: Awaitable[None]) -> None:
        """A loop that dies of a bug of this tool is recorded, not silently lost."""
        try:
            await loop
        except Exception as exc:
            self.crashes.append(repr(exc)[:300])

    def result(self) -> dict[str, Any]:
        return {"counts": self.counts, "failures": self.failures, "probes_ok": self.probes_ok,
                "probes_failed": self.probes_failed, "transfers": self.transfers,
                "sessions": self.sessions, "crashes": self.crashes}


class _Cut(Exception):
    """A download's body was cut: a transfer failure, not a retried request."""


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos_load")
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--t0", type=float, required=True, help="CLOCK_MONOTONIC of time 0")
    p.add_argument("--cafile", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--retry-budget", type=float, default=3.0)
    p.add_argument("--scale", type=float, default=1.0, help="multiplies the request rates")
    a = p.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    load = Load(a)

    async def body() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        loop.add_signal_handler(signal.SIGTERM, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await load.run()

    # The standard event loop, not uvloop: uvloop's client-side TLS transport loses the last
    # ~50-250 KB of a slowly read response when the server closes right after sending it
    # (10 MB downloads over HTTPS at 5 MB/s: 2 of 6 short on loopback with a lone node, none
    # with curl or the standard loop). The load is light; the standard loop is enough.
    asyncio.run(body())
    with open(a.out, "w") as f:
        json.dump(load.result(), f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
