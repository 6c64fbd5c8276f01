"""Failover figures (issue 4, point 6) on the namespace array made by `dlba up`.

Per run: a fresh 3-node array; slow transfers held open on the two non-scheduler nodes; a prober
opening a new connection to the VIP every 20 ms; then the scheduler's `front` link goes down.
Reported: the gap in service for new connections (link down -> first new connection answered)
and the number of in-flight transfers broken on the surviving nodes. Default settings:
ping_interval_s = 0.1, ping_failures = 3 (see dlba/config.py).

    sudo .venv/bin/python -m bench.failover [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import socket
import statistics
import tempfile
import threading
import time
from pathlib import Path

from tests.array.array_harness import CLIENT_IP, VIP, Array, running_array, wait_until

SIZE = 16_000_000


def transfer(arr: Array, sport: int, out: dict[int, int]) -> None:
    def run() -> None:
        got = -1
        try:
            with socket.socket() as s:
                s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                s.settimeout(15)
                s.bind((CLIENT_IP, sport))
                s.connect((VIP, 80))
                s.sendall(b"GET /bytes/%d HTTP/1.1\r\nHost: v\r\nConnection: close\r\n\r\n"
                          % SIZE)
                data = s.recv(65536)
                got = len(data.partition(b"\r\n\r\n")[2])
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline and (chunk := s.recv(65536)):
                    got += len(chunk)
                    time.sleep(0.003)
        except OSError:
            pass
        out[sport] = got

    arr.in_client(run)


def prober(arr: Array, stop: threading.Event, ok_times: list[float]) -> None:
    def run() -> None:
        while not stop.is_set():
            t = time.monotonic()
            try:
                with socket.create_connection((VIP, 80), timeout=0.2) as s:
                    s.settimeout(0.5)
                    s.sendall(b"GET /whoami HTTP/1.1\r\nHost: v\r\nConnection: close\r\n\r\n")
                    if s.recv(64).startswith(b"HTTP/1.1 200"):
                        ok_times.append(t)
            except OSError:
                pass
            time.sleep(max(0.0, 0.02 - (time.monotonic() - t)))

    arr.in_client(run)


def one_run(tmp: Path) -> dict[str, float]:
    with running_array(tmp, nodes=3, backends=2) as arr:
        sched = arr.scheduler()
        assert sched is not None
        table = arr.admin(sched, "/table")["assignments"]
        ports = [p for p in range(44000, 46000)
                 if table[arr.bucket(p)] != f"n{sched}"][:8]
        results: dict[int, int] = {}
        threads = [threading.Thread(target=transfer, args=(arr, p, results)) for p in ports]
        for t in threads:
            t.start()
        ok_times: list[float] = []
        stop = threading.Event()
        probe = threading.Thread(target=prober, args=(arr, stop, ok_times))
        probe.start()
        time.sleep(1.0)
        arr.link(sched, up=False)
        t0 = time.monotonic()  # after the link is down, not when we asked for it
        try:
            wait_until(lambda: any(t > t0 for t in ok_times), 15, "the VIP to answer again")
            first = min(t for t in ok_times if t > t0)
            for t in threads:
                t.join(90)
        finally:
            stop.set()
            probe.join(5)
            arr.link(sched, up=True)
        broken = sum(1 for p in ports if results.get(p) != SIZE)
        return {"gap_s": first - t0, "broken": broken, "transfers": len(ports)}


def main() -> int:
    p = argparse.ArgumentParser(prog="bench.failover")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default="bench/failover_results.json")
    a = p.parse_args()
    runs = []
    for i in range(a.runs):
        with tempfile.TemporaryDirectory() as d:
            r = one_run(Path(d))
        print(f"run {i + 1}: gap {r['gap_s'] * 1000:.0f} ms, broken transfers "
              f"{r['broken']}/{r['transfers']}", flush=True)
        runs.append(r)
    gaps = [r["gap_s"] for r in runs]
    result = [
        {"figure": "failover_gap_s", "unit": "s", "median": statistics.median(gaps),
         "min": min(gaps), "max": max(gaps), "runs": len(runs),
         "settings": {"ping_interval_s": 0.1, "ping_failures": 3}},
        {"figure": "failover_broken_transfers", "unit": "transfers",
         "total": sum(r["broken"] for r in runs),
         "of": sum(r["transfers"] for r in runs), "runs": len(runs)},
    ]
    Path(a.out).write_text(json.dumps(result, indent=1) + "\n")
    print(f"gap median {statistics.median(gaps) * 1000:.0f} ms (min {min(gaps) * 1000:.0f}, "
          f"max {max(gaps) * 1000:.0f}); broken transfers {result[1]['total']}/"
          f"{result[1]['of']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
