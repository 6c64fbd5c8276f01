"""Hostile clients for the chaos soak (runs in the client namespace beside bench.chaos_load).

    python -m bench.chaos_hostile --duration S --t0 MONOTONIC --idle N --out FILE

* an idle crowd: N HTTP connections, each one GET then silence; one closed by the array
  (keepalive timeout, a node's death) is opened again a second later;
* slowloris: 20 connections sending one header line every 2 s, never ending the head;
* header floods: 1000 header lines, or one 64 KiB line (expected: 431/400 or a close);
* smuggling probes, CL.TE and TE.CL (and obfuscated Transfer-Encoding), each smuggling a
  `GET /status/418` and following it with an ordinary GET on the same connection: a 418
  anywhere means the array let a request through its parser's back door;
* TLS garbage on 443 and binary garbage on 80.
All loops end with the duration; every connection is closed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import resource
import signal
import sys
import time
from typing import Any

VIP = "198.18.0.100"
SMUGGLED = b"GET /status/418 HTTP/1.1\r\nHost: v\r\nX-Ignore: x"
FOLLOW = b"GET /whoami HTTP/1.1\r\nHost: v\r\n\r\n"


def smuggle_probes() -> list[tuple[str, bytes]]:
    cl_te_body = b"0\r\n\r\n" + SMUGGLED
    te_cl_chunk = SMUGGLED + b"\r\n\r\n"
    te_cl_body = b"%x\r\n%s\r\n0\r\n\r\n" % (len(te_cl_chunk), te_cl_chunk)
    out = []
    for te in (b"chunked", b" chunked", b"xchunked", b"chunked, identity"):
        out.append(("cl.te", b"POST /echo HTTP/1.1\r\nHost: v\r\nContent-Length: %d\r\n"
                    b"Transfer-Encoding: %s\r\n\r\n%s" % (len(cl_te_body), te, cl_te_body)))
        out.append(("te.cl", b"POST /echo HTTP/1.1\r\nHost: v\r\nContent-Length: 4\r\n"
                    b"Transfer-Encoding: %s\r\n\r\n%s" % (te, te_cl_body)))
    return out


class Hostile:
    def __init__(self, a: argparse.Namespace) -> None:
        self.end: float = a.t0 + a.duration
        self.t0: float = a.t0
        self.idle_target = a.idle
        self.idle_open = 0
        self.idle_min_after_ramp: int | None = None
        self.writers: set[asyncio.StreamWriter] = set()
        self.c: dict[str, int] = {}
        self.statuses: dict[str, dict[str, int]] = {}
        self.slowloris_hold_max = 0.0

    def running(self) -> bool:
        return time.monotonic() < self.end

    def bump(self, key: str, n: int = 1) -> None:
        self.c[key] = self.c.get(key, 0) + n

    def status(self, probe: str, data: bytes) -> None:
        line = data.split(b"\r\n", 1)[0].decode("latin-1")[:40] if data else "closed"
        key = line.split(" ")[1] if line.startswith("HTTP/") and " " in line else line
        d = self.statuses.setdefault(probe, {})
        d[key] = d.get(key, 0) + 1
        if b" 418 " in data:
            self.bump("smuggled_418")

    async def open(self, port: int = 80, timeout: float = 5.0
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        r, w = await asyncio.wait_for(asyncio.open_connection(VIP, port), timeout)
        self.writers.add(w)
        return r, w

    def drop(self, w: asyncio.StreamWriter) -> None:
        self.writers.discard(w)
        w.transport.abort()

    async def read_all(self, r: asyncio.StreamReader, timeout: float) -> bytes:
        data = b""
        with contextlib.suppress(OSError, TimeoutError):
            while len(data) < 65536:
                chunk = await asyncio.wait_for(r.read(65536), timeout)
                if not chunk:
                    break
                data += chunk
        return data

    # --- idle crowd -------------------------------------------------------------------------
    async def idle_one(self) -> None:
        while self.running():
            w = None
            try:
                r, w = await self.open()
                w.write(b"GET /health HTTP/1.1\r\nHost: v\r\n\r\n")
                await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
                self.idle_open += 1
                self.bump("idle_established")
                try:
                    while self.running():  # silent; the body (2 bytes) and then EOF or reset
                        left = self.end - time.monotonic()
                        if not await asyncio.wait_for(r.read(4096), max(0.1, left)):
                            break
                    else:
                        return
                except TimeoutError:
                    return
                finally:
                    self.idle_open -= 1
                self.bump("idle_closed_by_array")
            except (OSError, TimeoutError, asyncio.IncompleteReadError,
                    asyncio.LimitOverrunError, RuntimeError):  # uvloop: write after a reset
                self.bump("idle_connect_failed")
            finally:
                if w is not None:
                    self.drop(w)
            await asyncio.sleep(1.0)

    async def idle_crowd(self) -> None:
        tasks = []
        for i in range(0, self.idle_target, 200):
            if not self.running():
                break
            tasks += [asyncio.create_task(self.idle_one())
                      for _ in range(min(200, self.idle_target - i))]
            await asyncio.sleep(0.2)
        await asyncio.sleep(5.0)
        while self.running():  # the crowd's size after its ramp, at its lowest
            low = self.idle_open
            self.idle_min_after_ramp = min(self.idle_min_after_ramp or low, low)
            await asyncio.sleep(1.0)
        await asyncio.gather(*tasks, return_exceptions=True)

    # --- slowloris ---------------------------------------------------------------------------
    async def slowloris_one(self) -> None:
        while self.running():
            t = time.monotonic()
            try:
                r, w = await self.open()
            except (OSError, TimeoutError):
                self.bump("slowloris_connect_failed")
                await asyncio.sleep(1.0)
                continue
            try:
                w.write(b"GET /whoami HTTP/1.1\r\nHost: v\r\n")
                i = 0
                while self.running():
                    i += 1
                    w.write(b"X-Slow-%d: %d\r\n" % (i, i))
                    await w.drain()
                    with contextlib.suppress(TimeoutError):
                        if not await asyncio.wait_for(r.read(4096), 2.0) or r.at_eof():
                            break
                if self.running():
                    self.bump("slowloris_closed_by_array")
                    self.slowloris_hold_max = max(self.slowloris_hold_max, time.monotonic() - t)
            except (OSError, RuntimeError):  # uvloop: write after a reset
                self.bump("slowloris_closed_by_array")
                self.slowloris_hold_max = max(self.slowloris_hold_max, time.monotonic() - t)
            finally:
                self.drop(w)

    # --- one-shot probes ----------------------------------------------------------------------
    async def probe(self, name: str, data: bytes, port: int = 80, follow: bool = False) -> None:
        try:
            r, w = await self.open(port)
        except (OSError, TimeoutError):
            self.bump(f"{name}_connect_failed")
            return
        try:
            try:
                w.write(data)
                if follow:
                    w.write(FOLLOW)
                await w.drain()
            except (OSError, RuntimeError):  # reset already (uvloop: RuntimeError on write)
                pass
            got = await self.read_all(r, 3.0)
            self.status(name, got)
        finally:
            self.drop(w)

    async def probes(self) -> None:
        smuggles = smuggle_probes()
        flood = b"GET /whoami HTTP/1.1\r\nHost: v\r\n" + b"".join(
            b"X-Flood-%d: %s\r\n" % (i, b"a" * 40) for i in range(1000)) + b"\r\n"
        long_line = b"GET /whoami HTTP/1.1\r\nHost: v\r\nX-Long: " + b"a" * 65536 + b"\r\n\r\n"
        i = 0
        while self.running():
            name, data = smuggles[i % len(smuggles)]
            await asyncio.gather(
                self.probe(name, data, follow=True),
                self.probe("header_flood", flood if i % 2 else long_line),
                self.probe("tls_garbage", os.urandom(2048), port=443),
                self.probe("http_garbage", os.urandom(512)),
            )
            i += 1
            await asyncio.sleep(0.5)

    async def run(self) -> None:
        await asyncio.gather(self.idle_crowd(), self.probes(),
                             *(self.slowloris_one() for _ in range(20)))

    def result(self) -> dict[str, Any]:
        return {"counters": self.c, "statuses": self.statuses,
                "idle_target": self.idle_target, "idle_min_after_ramp": self.idle_min_after_ramp,
                "slowloris_hold_max_s": round(self.slowloris_hold_max, 2)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.chaos_hostile")
    p.add_argument("--duration", type=float, required=True)
    p.add_argument("--t0", type=float, required=True)
    p.add_argument("--idle", type=int, default=10000)
    p.add_argument("--out", required=True)
    a = p.parse_args(argv)
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    h = Hostile(a)

    async def body() -> None:
        task = asyncio.current_task()
        assert task is not None
        asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, task.cancel)
        try:
            await h.run()
        except asyncio.CancelledError:
            pass
        finally:
            for w in list(h.writers):
                w.transport.abort()

    try:
        import uvloop
        uvloop.run(body())
    except ImportError:
        asyncio.run(body())
    with open(a.out, "w") as f:
        json.dump(h.result(), f)
    return 0


if __name__ == "__main__":
    sys.exit(main())
