"""HTTP/2 figures of `make bench`: h2load (Debian's nghttp2-client) against the node, HAProxy
(`alpn h2,http/1.1`) and nginx (`listen ... ssl http2`), each proxying HTTP/1.1 to the same
back end, on a listener of its own with TLS session tickets as the HTTP/1.1 https listener.

* h2_rps: GET /1k, 4 connections x 100 concurrent streams (a browser-like multiplexed load);
* h2_rps_1stream: GET /1k, 16 connections x 1 stream (HTTP/2 framing cost without multiplexing);
* h2_p99_1000rps_ms: p99 latency at 1000 req/s (as the HTTP/1.1 row p99_1000rps_ms; a rate
  every proxy here sustains), 16 connections x `--rps` each, from h2load's per-request log.

Requests per CPU-second of each proxy's process tree, as the HTTP/1.1 rows.
"""

from __future__ import annotations

import re
import subprocess
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from bench.proxies import HOST, Server

if TYPE_CHECKING:
    from bench.run import Bench

TARGETS = ("dlba", "haproxy", "nginx")
H2_FIXED_RATE = 1000.0  # req/s


def h2load(port: int, duration: float, conns: int, streams: int, rps: float = 0.0,
           log: Path | None = None) -> tuple[float, float, dict[str, Any]]:
    """(requests done, seconds, info) of one h2load run over h2 (ALPN) to /1k."""
    argv = ["h2load", "-D", str(max(1, round(duration))), "-c", str(conns), "-m", str(streams),
            "-t", "1"]
    if duration >= 3:  # connections and pools warm before the measured seconds
        argv += ["--warm-up-time", "1"]
    if rps:
        argv += ["--rps", f"{rps / conns:.1f}"]
    if log is not None:
        argv += ["--log-file", str(log)]
    out = subprocess.run([*argv, f"https://{HOST}:{port}/1k"], capture_output=True, text=True,
                         timeout=duration + 60).stdout
    proto = re.search(r"Application protocol: (\S+)", out)
    m = re.search(r"finished in ([\d.]+)(m?s)", out)
    done = re.search(r"requests: \d+ total, \d+ started, (\d+) done, (\d+) succeeded, "
                     r"(\d+) failed, (\d+) errored, (\d+) timeout", out)
    if not proto or proto.group(1) != "h2" or not m or not done:
        raise RuntimeError(f"h2load did not speak h2 or its output is not understood: {out!r}")
    secs = float(m.group(1)) / (1000 if m.group(2) == "ms" else 1)
    failed = sum(int(x) for x in done.groups()[2:])
    info: dict[str, Any] = {"failed": failed} if failed else {}
    return float(done.group(2)), secs, info


def latencies_ms(log: Path) -> list[float]:
    """h2load's --log-file: start (us), status, request duration (us) per line."""
    out = []
    for line in log.read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 3 and parts[1].isdigit():
            out.append(int(parts[2]) / 1000)
    return sorted(out)


def pct(xs: list[float], q: float) -> float:
    return xs[min(len(xs) - 1, int(q * len(xs)))] if xs else 0.0


def run_h2(b: Bench) -> None:
    """The three figures, measured as bench.run measures the HTTP/1.1 ones."""
    from bench.run import ONE_PROC, ONE_THREAD, Figure, Sample

    d = b.a.duration
    # Beside the figure, as for handshakes: a one-process node against one HAProxy thread
    # (two workers and two threads each lose some CPU-seconds to sharing two cores).
    targets = (*TARGETS, *((ONE_PROC, ONE_THREAD) if ONE_PROC in b.servers else ()))
    f100 = Figure("h2_rps", "req/s", "req/CPU-s")
    f100.extra["method"] = "h2load -c 4 -m 100 (100 concurrent streams per connection), GET /1k"
    b.measure(f100, targets, lambda s: h2load(s.ports["h2"], d, 4, 100))
    f1 = Figure("h2_rps_1stream", "req/s", "req/CPU-s")
    f1.extra["method"] = "h2load -c 16 -m 1 (one stream at a time per connection), GET /1k"
    b.measure(f1, targets, lambda s: h2load(s.ports["h2"], d, 16, 1))

    rate = H2_FIXED_RATE
    lat = Figure("h2_p99_1000rps_ms", "ms", "req/CPU-s")
    lat.extra["rate"] = round(rate, 1)
    lat.extra["method"] = (f"h2load --rps over 16 connections (1 stream each) at {rate:.0f} "
                           "req/s in all, GET /1k; p99 of the per-request durations h2load logs")
    b.figures[lat.name] = lat
    for run in range(b.a.runs):
        for t in b.order(run, TARGETS):
            srv: Server = b.servers[t]
            with tempfile.TemporaryDirectory() as tmp:
                log = Path(tmp) / "h2load.log"
                c0 = srv.cpu()
                done, _, info = h2load(srv.ports["h2"], d, 16, 1, rps=rate, log=log)
                cpu = srv.cpu() - c0
                xs = latencies_ms(log)
            info = {**info, "p50_ms": round(pct(xs, 0.5), 3), "p99_ms": round(pct(xs, 0.99), 3),
                    "achieved_rate": round(done / d, 1)}
            lat.samples.setdefault(t, []).append(Sample(done, d, cpu, info))
            b.log(f"{lat.name:16s} run {run + 1} {t:8s} p50 {info['p50_ms']:8.2f} ms  p99 "
                  f"{info['p99_ms']:8.2f} ms  achieved {info['achieved_rate']:8.1f}/s  "
                  f"cpu {cpu:5.2f}s")
