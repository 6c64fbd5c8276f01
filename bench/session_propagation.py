"""How long a learned session id takes to reach the other nodes (loopback, 3 nodes).

    python -m bench.session_propagation [--logins 20] [--workers 1]

Logs in through n1 (the back end issues JSESSIONID), then asks n2 and n3 with only that
JSESSIONID, every 5 ms, until both send it to the issuing back end (only sessions that the
session-id hash ring would send elsewhere count); prints the median and the worst delay.
Loopback nodes in one process (with --workers 2, each node has two worker processes), so this
is the sync's own latency (batching periods), not a network's.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
import time
from pathlib import Path

import aiohttp

from dlba.config import load_config
from dlba.node import NodeRuntime
from dlba.scheduling.hash_ring import HashRing
from tests.integration.config_array import config_array


async def measure(logins: int, workers: int) -> list[float]:
    delays: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        async with config_array(Path(tmp), n_nodes=3, backend_names=("b1", "b2", "b3"),
                                initial=(1, 2, 3), start=[]) as arr:
            for name in arr.names:
                path = arr.node_dir(name) / "cluster.toml"
                path.write_text(path.read_text().replace(
                    "[proxy]\n", f"[proxy]\nworkers = {workers}\n"))
                node = NodeRuntime(load_config(path), name)
                await node.start()
                arr.nodes[name] = node
            for name in arr.names:
                while not all(w["ready"] for w in (await arr.admin(name, "/status"))["workers"]):
                    await asyncio.sleep(0.1)
            conn = aiohttp.TCPConnector(force_close=True)
            async with aiohttp.ClientSession(connector=conn,
                                             cookie_jar=aiohttp.DummyCookieJar()) as s:
                ring = HashRing({1: 100, 2: 100, 3: 100})
                while len(delays) < logins:
                    async with s.get(arr.url("n1") + "/login") as r:
                        issuer = r.headers["X-Backend"]
                        sid = r.cookies["JSESSIONID"].value
                    if f"b{ring.get(sid)}" == issuer:
                        continue  # the session-id ring sends it there anyway: nothing to see
                    t0 = time.perf_counter()
                    pending = {"n2", "n3"}
                    while pending:
                        for name in list(pending):
                            async with s.get(arr.url(name) + "/whoami",
                                             headers={"Cookie": f"JSESSIONID={sid}"}) as r:
                                if r.headers["X-Backend"] == issuer:
                                    pending.discard(name)
                        if pending:
                            await asyncio.sleep(0.005)
                    delays.append(time.perf_counter() - t0)
    return delays


def main() -> None:
    p = argparse.ArgumentParser(prog="bench.session_propagation")
    p.add_argument("--logins", type=int, default=20)
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args()
    d = asyncio.run(measure(args.logins, args.workers))
    print(f"learned session id on every node: median {statistics.median(d) * 1000:.0f} ms, "
          f"max {max(d) * 1000:.0f} ms ({len(d)} logins, workers={args.workers})")


if __name__ == "__main__":
    main()
