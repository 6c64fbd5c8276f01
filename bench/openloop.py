"""Open-loop HTTP/1.1 load at a fixed rate (wrk2-style), latency measured from the intended
send time so a stalled server cannot hide its stall (no coordinated omission).

Request i of a process is *due* at t0 + i / rate. A timer loop sends every due request on one of
`--conns` keepalive connections (round robin; pipelined when that connection is still busy,
which HTTP/1.1 allows and all three proxies support). A response completes the oldest request of
its connection; its latency is (completion time - due time), never (completion - actual send).
Bounded: stops sending at `--duration` seconds or `--max-requests`, then waits at most
`--drain` seconds for outstanding responses (those left count as timeouts).

    python -m bench.openloop --port 8080 --rate 2000 --duration 10 [--procs 2]

prints one JSON object: sent, done, errors, timeouts, achieved rate, p50/p90/p99/p999/max (ms).
With --procs N the rate is split over N processes (one event loop per core).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import subprocess
import sys
import time
from collections import deque
from typing import Any

REQ = b"GET %s HTTP/1.1\r\nHost: bench\r\nUser-Agent: openloop\r\n\r\n"


class Conn(asyncio.Protocol):
    def __init__(self, lat: list[float], errors: list[int]) -> None:
        self.due: deque[float] = deque()
        self.buf = bytearray()
        self.need = -1  # bytes of body still expected for the current response (-1: in head)
        self.lat = lat
        self.errors = errors
        self.transport: asyncio.Transport | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True

    def send(self, req: bytes, due: float) -> None:
        self.due.append(due)
        assert self.transport is not None
        self.transport.write(req)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need < 0:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end]).lower()
                i = head.find(b"content-length:")
                if i < 0:  # the bench only fetches static files: always a length
                    self.errors[0] += 1
                    n = 0
                else:
                    j = head.find(b"\r\n", i)
                    n = int(head[i + 15:j if j >= 0 else None])
                if not head.startswith(b"http/1.1 200"):
                    self.errors[0] += 1
                del self.buf[:end + 4]
                self.need = n
            if len(self.buf) < self.need:
                return
            del self.buf[:self.need]
            self.need = -1
            now = time.perf_counter()
            if self.due:
                self.lat.append(now - self.due.popleft())


async def run(port: int, path: str, rate: float, duration: float, conns: int,
              max_requests: int, drain: float) -> dict[str, Any]:
    loop = asyncio.get_running_loop()
    lat: list[float] = []
    errors = [0]
    pool: list[Conn] = []
    for _ in range(conns):
        _, proto = await loop.create_connection(lambda: Conn(lat, errors), "127.0.0.1", port)
        pool.append(proto)
    req = REQ % path.encode()
    # warm every connection once (not measured)
    for c in pool:
        c.send(req, time.perf_counter())
    t_end = time.perf_counter() + 5
    while len(lat) < conns and time.perf_counter() < t_end:
        await asyncio.sleep(0.01)
    lat.clear()
    interval = 1.0 / rate
    n_total = min(max_requests, int(rate * duration))
    t0 = time.perf_counter()
    sent = 0
    rr = 0
    while sent < n_total:
        now = time.perf_counter()
        if now - t0 > duration + 1:  # hard stop: never run past the time budget
            break
        due_n = min(n_total, int((now - t0) / interval) + 1)
        while sent < due_n:
            c = pool[rr]
            rr = (rr + 1) % conns
            if c.closed:
                errors[0] += 1
            else:
                c.send(req, t0 + sent * interval)
            sent += 1
        nxt = t0 + sent * interval
        delay = nxt - time.perf_counter()
        await asyncio.sleep(delay if delay > 0.0005 else 0)
    send_wall = time.perf_counter() - t0
    t_drain = time.perf_counter() + drain
    while len(lat) + errors[0] < sent and time.perf_counter() < t_drain:
        await asyncio.sleep(0.01)
    # Requests still unanswered count with the latency they have reached so far (a lower bound):
    # dropping them would flatter a server that fell behind.
    outstanding = 0
    now = time.perf_counter()
    for c in pool:
        outstanding += len(c.due)
        lat.extend(now - d for d in c.due)
    for c in pool:
        if c.transport is not None:
            c.transport.close()
    return {"sent": sent, "done": len(lat) - outstanding, "errors": errors[0],
            "timeouts": outstanding,
            "send_wall_s": send_wall, "lat": lat}


def summarize(lat: list[float], extra: dict[str, Any]) -> dict[str, Any]:
    s = sorted(lat)

    def q(p: float) -> float:
        return round(s[min(len(s) - 1, int(p * len(s)))] * 1000, 3) if s else float("nan")

    return {**extra, "p50_ms": q(0.50), "p90_ms": q(0.90), "p99_ms": q(0.99),
            "p999_ms": q(0.999), "max_ms": round(s[-1] * 1000, 3) if s else float("nan")}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.openloop")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--path", default="/1k")
    p.add_argument("--rate", type=float, required=True, help="requests/s (all processes)")
    p.add_argument("--duration", type=float, default=10.0)
    p.add_argument("--conns", type=int, default=32, help="connections per process")
    p.add_argument("--procs", type=int, default=1)
    p.add_argument("--max-requests", type=int, default=2_000_000)
    p.add_argument("--drain", type=float, default=5.0)
    p.add_argument("--raw", help=argparse.SUPPRESS)  # child mode: write raw results to file
    a = p.parse_args(argv)
    if a.procs > 1:
        import tempfile

        tmp = tempfile.mkdtemp(prefix="openloop-")
        args = [sys.executable, "-m", "bench.openloop", "--port", str(a.port),
                "--path", a.path, "--rate", str(a.rate / a.procs), "--duration", str(a.duration),
                "--conns", str(a.conns), "--max-requests", str(a.max_requests // a.procs),
                "--drain", str(a.drain)]
        procs = [subprocess.Popen([*args, "--raw", f"{tmp}/{i}.json"]) for i in range(a.procs)]
        parts = []
        for i, pr in enumerate(procs):
            pr.wait(timeout=a.duration + a.drain + 30)
            with open(f"{tmp}/{i}.json") as fh:
                parts.append(json.load(fh))
        import shutil

        shutil.rmtree(tmp, ignore_errors=True)
        lat = [x for part in parts for x in part["lat"]]
        tot = {k: sum(part[k] for part in parts) for k in ("sent", "done", "errors", "timeouts")}
        wall = max(part["send_wall_s"] for part in parts)
    else:
        try:
            import uvloop
            res = uvloop.run(run(a.port, a.path, a.rate, a.duration, a.conns, a.max_requests,
                                 a.drain))
        except ImportError:
            res = asyncio.run(run(a.port, a.path, a.rate, a.duration, a.conns, a.max_requests,
                                  a.drain))
        if a.raw:
            with open(a.raw, "w") as fh:
                json.dump(res, fh)
            return 0
        lat = res.pop("lat")
        tot = {k: res[k] for k in ("sent", "done", "errors", "timeouts")}
        wall = res["send_wall_s"]
    out = summarize(lat, {**tot, "target_rate": a.rate,
                          "achieved_rate": round(tot["done"] / wall, 1) if wall else 0.0})
    print(json.dumps(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
