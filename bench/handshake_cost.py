"""Where a full TLS handshake's CPU goes: user and system time and context switches per
connection, for the node with 1 and with N worker processes beside HAProxy with 1 and 2
threads (issue 7, point 4).

    python -m bench.handshake_cost [--rounds 4] [--duration 5] [--workers 2]

Same load as the `tls_handshakes` figure (`openssl s_time -new`, 3 clients, GET /1k, close),
targets interleaved round by round; prints each run and the medians. Not part of `make bench`:
it answers "why is the figure what it is", not "what is the figure".
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

from bench import proxies
from bench.proxies import Server
from bench.run import s_time


def counters(srv: Server) -> tuple[float, float, int]:
    """(user s, system s, context switches) of the process tree, reaped children included."""
    user, system = proxies.tree_times(srv.pid)
    switches = 0
    for pid in proxies.tree_pids(srv.pid):
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if "ctxt_switches" in line:
                    switches += int(line.split()[1])
        except OSError:
            pass
    return user, system, switches


Row = tuple[float, float, float, float]  # handshakes/CPU-s, user µs, sys µs, switches per conn


def measure_rounds(targets: dict[str, Server], rounds: int, duration: float,
                   stime_procs: int) -> dict[str, list[Row]]:
    """The full-handshake load on every target, round by round in rotating order (drift hits
    all alike); prints each run."""
    rows: dict[str, list[Row]] = {k: [] for k in targets}
    names = list(targets)
    for r in range(rounds):
        for name in names[r % len(names):] + names[:r % len(names)]:
            srv = targets[name]
            u0, s0, x0 = counters(srv)
            n, secs, _ = s_time(srv.ports["https_full"], duration, stime_procs)
            u1, s1, x1 = counters(srv)
            row = (n / ((u1 - u0) + (s1 - s0)), 1e6 * (u1 - u0) / n,
                   1e6 * (s1 - s0) / n, (x1 - x0) / n)
            rows[name].append(row)
            print(f"{name:12s} {n / secs:6.0f} hs/s {row[0]:6.0f} hs/CPU-s  user {row[1]:5.0f}"
                  f" us  sys {row[2]:4.0f} us  context switches {row[3]:4.2f} per connection",
                  flush=True)
            time.sleep(0.5)
    return rows


def print_medians(rows: dict[str, list[Row]], ref: str) -> None:
    print("\nmedians:")
    ref_rate = statistics.median(x[0] for x in rows[ref])
    for name, rs in rows.items():
        med = [statistics.median(x[i] for x in rs) for i in range(4)]
        print(f"  {name:12s} {med[0]:6.0f} hs/CPU-s (x{med[0] / ref_rate:.2f} {ref})  user "
              f"{med[1]:5.0f} us  sys {med[2]:4.0f} us  switches {med[3]:4.2f}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.handshake_cost")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--duration", type=float, default=5)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--stime-procs", type=int, default=3)
    p.add_argument("--bare", action="store_true",
                   help="also a bare uvloop TLS server (bench/bare_tls.py): the floor")
    a = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="dlba-hs-"))
    certs = proxies.make_certs(work)
    be = proxies.start_backend(work, certs)
    targets: dict[str, Server] = {}
    try:
        for w in sorted({1, a.workers}):
            (work / f"w{w}").mkdir()
            targets[f"dlba w={w}"] = proxies.start_dlba(work / f"w{w}", certs, be.ports["http"], w)
        if a.bare:
            port = proxies.free_port()
            argv = [sys.executable, str(Path(__file__).with_name("bare_tls.py")), str(port),
                    str(certs.cert), str(certs.key), str(a.workers)]
            proc, log = proxies._spawn("bare", argv, work)
            targets[f"bare w={a.workers}"] = proxies._started(
                "bare", proc, {"https_full": port}, log)
        for t in (1, 2):
            (work / f"h{t}").mkdir()
            targets[f"haproxy t={t}"] = proxies.start_haproxy(work / f"h{t}", certs,
                                                             be.ports["http"], t)
        rows = measure_rounds(targets, a.rounds, a.duration, a.stime_procs)
        print_medians(rows, "haproxy t=2")
    finally:
        for s in targets.values():
            s.stop()
        be.stop()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
