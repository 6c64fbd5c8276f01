"""Hold N idle HTTP/1.1 keepalive connections to a proxy (helper process of bench.run).

Each connection sends one `GET /1k`, reads the whole response, then stays open and silent.
Prints `{"open": N, "ok": M}` on stdout once all are up, then holds them until stdin closes
or `--hold` seconds pass (bounded), and exits.

    python -m bench.idle --port 8080 --conns 10000 --hold 60
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import resource
import sys
import threading
import time

REQ = b"GET /1k HTTP/1.1\r\nHost: bench\r\n\r\n"


async def one(port: int, writers: list[asyncio.StreamWriter]) -> bool:
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection("127.0.0.1", port), 10)
    except (TimeoutError, OSError):
        return False
    writers.append(w)
    try:
        w.write(REQ)
        head = await asyncio.wait_for(r.readuntil(b"\r\n\r\n"), 10)
        n = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                n = int(line.split(b":", 1)[1])
        await asyncio.wait_for(r.readexactly(n), 10)
        return head.startswith(b"HTTP/1.1 200")
    except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
        return False


async def main_async(port: int, conns: int, batch: int, hold: float) -> None:
    writers: list[asyncio.StreamWriter] = []
    ok = 0
    deadline = time.monotonic() + 120
    for start in range(0, conns, batch):
        if time.monotonic() > deadline:
            break
        res = await asyncio.gather(*(one(port, writers) for _ in range(min(batch, conns - start))))
        ok += sum(res)
    alive = sum(1 for w in writers if not w.is_closing())
    print(json.dumps({"open": alive, "ok": ok}), flush=True)
    loop = asyncio.get_running_loop()
    stdin_closed = asyncio.Event()

    def watch() -> None:
        sys.stdin.read()
        loop.call_soon_threadsafe(stdin_closed.set)

    threading.Thread(target=watch, daemon=True).start()
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(stdin_closed.wait(), hold)
    for w in writers:
        w.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.idle")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--conns", type=int, default=10000)
    p.add_argument("--batch", type=int, default=250)
    p.add_argument("--hold", type=float, default=60.0)
    a = p.parse_args(argv)
    want = a.conns + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < want:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(want, soft), max(want, hard)))
    try:
        import uvloop
        uvloop.run(main_async(a.port, a.conns, a.batch, a.hold))
    except ImportError:
        asyncio.run(main_async(a.port, a.conns, a.batch, a.hold))
    return 0


if __name__ == "__main__":
    sys.exit(main())
