"""Failover figures (issue 4, point 6) on the namespace array made by `dlba up`.

Per run: a fresh 3-node array; slow transfers held open on the two non-scheduler nodes; a prober
opening a new connection to the VIP every 20 ms; then the scheduler's `front` link goes down,
or with --kill-process every process of the scheduler node gets SIGKILL (its kernel lives on).
Reported: the gap in service for new connections (failure -> first new connection answered;
with --kill-process, -> the first moment from which every new connection is answered, since
the dead node's share fails while the rest works) and the number of in-flight transfers broken
on the surviving nodes. Default settings: ping_interval_s = 0.1, ping_failures = 3.

    sudo .venv/bin/python -m bench.failover [--runs 3] [--kill-process]
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
from typing import Any

from tests.array.array_harness import CLIENT_IP, VIP, Array, running_array, wait_until
from tests.array.test_failover_process import kill_node

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


def prober(arr: Array, stop: threading.Event, ok_times: list[float],
           failed_times: list[float]) -> None:
    def run() -> None:
        while not stop.is_set():
            t = time.monotonic()
            ok = False
            try:
                with socket.create_connection((VIP, 80), timeout=0.2) as s:
                    s.settimeout(0.5)
                    s.sendall(b"GET /whoami HTTP/1.1\r\nHost: v\r\nConnection: close\r\n\r\n")
                    ok = s.recv(64).startswith(b"HTTP/1.1 200")
            except OSError:
                pass
            (ok_times if ok else failed_times).append(t)
            time.sleep(max(0.0, 0.02 - (time.monotonic() - t)))

    arr.in_client(run)


def one_run(tmp: Path, kill_process: bool = False) -> dict[str, float]:
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
        failed_times: list[float] = []
        stop = threading.Event()
        probe = threading.Thread(target=prober, args=(arr, stop, ok_times, failed_times))
        probe.start()
        time.sleep(1.0)
        if kill_process:
            kill_node(arr, f"n{sched}")
        else:
            arr.link(sched, up=False)
        t0 = time.monotonic()  # after the failure, not when we asked for it
        try:
            wait_until(lambda: any(t > t0 for t in ok_times), 15, "the VIP to answer again")
            if kill_process:
                # The dead node's buckets fail while the others answer: the gap ends at the
                # last failed probe (3 s of probes after it all succeeded).
                wait_until(lambda: time.monotonic() - max([t0, *failed_times]) > 3.0, 20,
                           "every new connection to be answered")
                first = max([t0, *(t for t in failed_times if t > t0)])
            else:
                first = min(t for t in ok_times if t > t0)
            for t in threads:
                t.join(90)
        finally:
            stop.set()
            probe.join(5)
            if not kill_process:
                arr.link(sched, up=True)
        broken = sum(1 for p in ports if results.get(p) != SIZE)
        return {"gap_s": first - t0, "broken": broken, "transfers": len(ports)}


def main() -> int:
    p = argparse.ArgumentParser(prog="bench.failover")
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--out", default="bench/failover_results.json")
    p.add_argument("--kill-process", action="store_true",
                   help="SIGKILL every process of the scheduler node instead of its link going "
                   "down (the kernel keeps answering)")
    a = p.parse_args()
    runs = []
    case = "kill_process" if a.kill_process else "link_down"
    for i in range(a.runs):
        with tempfile.TemporaryDirectory() as d:
            r = one_run(Path(d), a.kill_process)
        print(f"run {i + 1}: gap {r['gap_s'] * 1000:.0f} ms, broken transfers "
              f"{r['broken']}/{r['transfers']}", flush=True)
        runs.append(r)
    gaps = [r["gap_s"] for r in runs]
    suffix = "_kill_process" if a.kill_process else ""
    result: list[dict[str, Any]] = [
        {"figure": f"failover{suffix}_gap_s", "unit": "s", "case": case,
         "median": statistics.median(gaps), "min": min(gaps), "max": max(gaps),
         "runs": len(runs), "settings": {"ping_interval_s": 0.1, "ping_failures": 3}},
        {"figure": f"failover{suffix}_broken_transfers", "unit": "transfers", "case": case,
         "total": sum(r["broken"] for r in runs),
         "of": sum(r["transfers"] for r in runs), "runs": len(runs)},
    ]
    out = Path(a.out)
    # The other case's figures stay in the file beside this one's.
    kept: list[dict[str, Any]] = []
    if out.exists():
        kept = [f for f in json.loads(out.read_text())
                if f.get("case", "link_down") != case]
    out.write_text(json.dumps(kept + result, indent=1) + "\n")
    print(f"gap median {statistics.median(gaps) * 1000:.0f} ms (min {min(gaps) * 1000:.0f}, "
          f"max {max(gaps) * 1000:.0f}); broken transfers {result[1]['total']}/"
          f"{result[1]['of']}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
