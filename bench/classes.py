"""Client classes under overload (seed 002): a saturated pool, a high and a low class.

One real node (`dlba node`) in front of one demo back end whose `/slow?ms=M` answers take M ms,
with `maxconn = C`: the pool serves C / (M / 1000) requests per second ("capacity"). The node
serves one service on the VIP prefix 127.0.50.0/29; the address dialled names the class (gold,
priority 0, on 127.0.50.2; bronze, priority 1, on 127.0.50.3). Open-loop load (requests are
due at fixed intervals, latency counted from the due time, one connection per request):

1. unloaded: gold alone at `--gold` x capacity;
2. loaded: gold as before plus bronze at `--bronze` x capacity (defaults: 0.5 + 1.5 = 2x).

Figures per run and class: success rate (2xx), shed (503), p50/p99 of all answers (ms).
Writes bench/classes_results.json.

    .venv/bin/python -m bench.classes [--duration 10] [--gold 0.5] [--bronze 1.5]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Any

from dlba.tls.certs import init_certs

ROOT = Path(__file__).resolve().parents[1]
GOLD, BRONZE = "127.0.50.2", "127.0.50.3"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def write_config(d: Path, backend: int, port: int, admin: int, maxconn: int,
                 timeout_s: float) -> Path:
    c = init_certs(d / "certs")
    text = f"""
[cluster]
secret_file = "{c.cluster_key}"

[[nodes]]
name = "n1"
address = "127.0.0.1"
listen = []
listen_tls = []

[admin]
listen = "127.0.0.1:{admin}"
token_file = "{c.admin_token}"

[proxy]
backend_timeout_s = 30

[[backends]]
id = 1
address = "127.0.0.1:{backend}"
maxconn = {maxconn}

[[pools]]
name = "default"
queue_timeout_s = {timeout_s}

[[services]]
name = "bench"
vips = ["127.0.50.0/29"]
ports = [{port}]
tls_ports = []

[[classes]]
name = "gold"
priority = 0
vips = ["{GOLD}"]

[[classes]]
name = "bronze"
priority = 1
vips = ["{BRONZE}"]
"""
    path = d / "node.toml"
    path.write_text(text)
    return path


def wait_port(host: str, port: int, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection((host, port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"nothing listens on {host}:{port}")


async def one(vip: str, port: int, path: bytes, due: float, out: list[tuple[int, float]]) -> None:
    loop = asyncio.get_running_loop()
    status = 0
    try:
        r, w = await asyncio.wait_for(asyncio.open_connection(vip, port), 10)
        w.write(b"GET %s HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n" % path)
        data = await asyncio.wait_for(r.read(), 30)
        w.close()
        status = int(data[9:12]) if len(data) >= 12 else 0
    except (OSError, TimeoutError, ValueError):
        status = 0
    out.append((status, (loop.time() - due) * 1000))


async def load(port: int, path: bytes, rates: dict[str, float], duration: float
               ) -> dict[str, list[tuple[int, float]]]:
    """Open loop: request i of a class is due at t0 + i / rate."""
    loop = asyncio.get_running_loop()
    results: dict[str, list[tuple[int, float]]] = {name: [] for name in rates}
    vips = {"gold": GOLD, "bronze": BRONZE}
    tasks: list[asyncio.Task[None]] = []
    t0 = loop.time() + 0.1
    due = {name: t0 for name in rates}
    while True:
        name = min(due, key=lambda n: due[n])
        if due[name] - t0 >= duration:
            break
        delay = due[name] - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(one(vips[name], port, path, due[name], results[name])))
        due[name] += 1 / rates[name]
    await asyncio.gather(*tasks)
    return results


def figures(samples: list[tuple[int, float]]) -> dict[str, Any]:
    n = len(samples)
    lat = sorted(ms for _, ms in samples)
    ok = sum(1 for st, _ in samples if 200 <= st < 300)

    def pct(p: float) -> float:
        return round(lat[min(n - 1, int(p * n))], 1) if n else 0.0

    return {"requests": n, "success_rate": round(ok / n, 4) if n else 0.0,
            "shed_503": sum(1 for st, _ in samples if st == 503),
            "failed_other": sum(1 for st, _ in samples if st != 503 and not 200 <= st < 300),
            "p50_ms": pct(0.5), "p99_ms": pct(0.99)}


def admin_status(admin: int, token: str) -> dict[str, Any]:
    req = urllib.request.Request(f"http://127.0.0.1:{admin}/status",
                                 headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        out: dict[str, Any] = json.loads(r.read())
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.classes", description=__doc__.split(
        "\n\n")[0])
    p.add_argument("--duration", type=float, default=10.0, help="seconds of load per run")
    p.add_argument("--maxconn", type=int, default=10, help="the back end's maxconn")
    p.add_argument("--ms", type=int, default=100, help="the back end's answer time (ms)")
    p.add_argument("--gold", type=float, default=0.5, help="gold's rate, x capacity")
    p.add_argument("--bronze", type=float, default=1.5, help="bronze's rate, x capacity")
    p.add_argument("--queue-timeout", type=float, default=2.0, help="pool queue_timeout_s")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "classes_results.json",
                   help="where the figures go")
    a = p.parse_args(argv)
    capacity = a.maxconn / (a.ms / 1000)
    path = b"/slow?ms=%d" % a.ms
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    with tempfile.TemporaryDirectory(prefix="dlba-bench-classes-") as tmp:
        d = Path(tmp)
        backend, port, admin = free_port(), free_port(), free_port()
        cfg = write_config(d, backend, port, admin, a.maxconn, a.queue_timeout)
        token = (d / "certs" / "admin.token").read_text().strip()
        procs = [subprocess.Popen(
            [sys.executable, "-m", "dlba", "demo-backend", "--name", "b1", "--listen",
             f"127.0.0.1:{backend}"], env=env, stderr=subprocess.DEVNULL)]
        procs.append(subprocess.Popen(
            [sys.executable, "-m", "dlba", "node", "--config", str(cfg), "--name", "n1",
             "--log-level", "WARNING"], env=env, stderr=subprocess.DEVNULL))
        try:
            wait_port("127.0.0.1", backend)
            wait_port(GOLD, port)
            gold_rate, bronze_rate = a.gold * capacity, a.bronze * capacity
            unloaded = asyncio.run(load(port, path, {"gold": gold_rate}, a.duration))
            loaded = asyncio.run(load(port, path, {"gold": gold_rate, "bronze": bronze_rate},
                                      a.duration))
            status = admin_status(admin, token)
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
    result = {
        "capacity_rps": capacity, "maxconn": a.maxconn, "backend_ms": a.ms,
        "queue_timeout_s": a.queue_timeout, "duration_s": a.duration,
        "rates_rps": {"gold": gold_rate, "bronze": bronze_rate},
        "unloaded": {"gold": figures(unloaded["gold"])},
        "loaded": {name: figures(s) for name, s in loaded.items()},
        "node_pool": {k: v for k, v in status["services"]["pools"]["default"].items()
                      if k != "backends"},
    }
    a.out.write_text(json.dumps(result, indent=1) + "\n")
    g0, g1, b1 = result["unloaded"]["gold"], result["loaded"]["gold"], result["loaded"]["bronze"]
    print(f"capacity {capacity:.0f} req/s (maxconn {a.maxconn} x {a.ms} ms); "
          f"gold {gold_rate:.0f} req/s, bronze {bronze_rate:.0f} req/s, {a.duration:.0f} s each")
    print(f"{'run':<10}{'class':<8}{'success':>9}{'shed':>7}{'p50 ms':>9}{'p99 ms':>9}")
    for run, cls, f in (("unloaded", "gold", g0), ("loaded", "gold", g1),
                        ("loaded", "bronze", b1)):
        print(f"{run:<10}{cls:<8}{f['success_rate']:>9.1%}{f['shed_503']:>7}"
              f"{f['p50_ms']:>9.1f}{f['p99_ms']:>9.1f}")
    print(f"written to {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
