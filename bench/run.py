"""`make bench`: the DLBA node beside HAProxy and nginx on this machine (issue 7).

One nginx back end (1 worker, static /1k and /100k) behind each of: a DLBA node, HAProxy
(nbthread 2, http-reuse always) and nginx (2 workers, upstream keepalive); same cert (ECDSA
P-256), same back end, all on 127.0.0.1. The back end alone is measured too ("direct", the
ceiling). Runs are interleaved (figure by figure, run by run, proxies in rotating order) so
machine drift hits all alike; each figure reports the median and min-max of its runs.

Every rate figure is also divided by the CPU seconds (user+system) the proxy's whole process tree
spent during that run (read from /proc/<pid>/stat before and after), because this 2-core box is
shared and noisy: `ratio` is dlba/haproxy by wall clock, `ratio_cpu` by work per CPU-second.

    python -m bench.run [--quick] [--duration S] [--runs N] [--out bench/results.json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import h2, proxies
from bench.proxies import HOST, Server

HERE = Path(__file__).resolve().parent
PROXIES = ("dlba", "haproxy", "nginx")
ONE_PROC = "dlba_1proc"
ONE_THREAD = "haproxy_1thread"
CLOSE_LUA = 'wrk.headers["Connection"] = "close"\n'


# --- load generators ----------------------------------------------------------------------------

@dataclass
class Sample:
    work: float  # requests (or bytes) done
    wall: float  # seconds
    cpu: float  # proxy tree CPU seconds
    info: dict[str, Any] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.work / self.wall if self.wall > 0 else 0.0

    @property
    def per_cpu(self) -> float:
        return self.work / self.cpu if self.cpu > 0 else 0.0


def wrk(url: str, duration: float, conns: int, threads: int = 1,
        script: Path | None = None) -> tuple[float, float, dict[str, Any]]:
    """(requests, seconds, info) of one wrk run."""
    argv = ["wrk", f"-t{threads}", f"-c{conns}", f"-d{max(1, round(duration))}s", "--timeout", "5s"]
    if script is not None:
        argv += ["-s", str(script)]
    out = subprocess.run([*argv, url], capture_output=True, text=True,
                         timeout=duration + 30).stdout
    m = re.search(r"(\d+) requests in ([\d.]+)(m?s)", out)
    if not m:
        raise RuntimeError(f"wrk output not understood: {out!r}")
    secs = float(m.group(2)) / (1000 if m.group(3) == "ms" else 1)
    info: dict[str, Any] = {}
    e = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if e:
        info["socket_errors"] = sum(map(int, e.groups()))
    n = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if n:
        info["non_2xx"] = int(n.group(1))
    return float(m.group(1)), secs, info


# `openssl s_time -www PATH` sends "GET PATH HTTP/1.0\r\n\r\n" with no Host header, which a
# proxy forwards as an HTTP/1.1 request the back end rejects (400). PATH is sent verbatim, so it
# carries a complete HTTP/1.1 request head; the trailing " HTTP/1.0" lands in a dummy header.
STIME_REQ = "/1k HTTP/1.1\r\nHost: bench\r\nConnection: close\r\nX-Bench: x"


def s_time(port: int, duration: float, procs: int) -> tuple[float, float, dict[str, Any]]:
    """Full TLS handshakes: `openssl s_time -new` never offers a session (no resumption), one
    GET /1k (Connection: close) per connection; `procs` clients in parallel."""
    t = str(max(1, round(duration)))
    argv = ["openssl", "s_time", "-connect", f"{HOST}:{port}", "-new", "-www", STIME_REQ,
            "-time", t]
    t0 = time.perf_counter()
    ps = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
          for _ in range(procs)]
    conns, nbytes = 0.0, []
    for p in ps:
        out, _ = p.communicate(timeout=duration + 30)
        m = re.search(r"(\d+) connections in \S+ real seconds, (\d+) bytes read per conn", out)
        if m:
            conns += int(m.group(1))
            nbytes.append(int(m.group(2)))
    secs = time.perf_counter() - t0  # s_time prints whole seconds only
    if not nbytes:
        raise RuntimeError(f"openssl s_time output not understood on port {port}")
    # A full response is > 1024 bytes (1 KiB body + head); fewer means requests failed.
    return conns, secs, {"bytes_per_conn": min(nbytes)}


def openloop(port: int, rate: float, duration: float, procs: int) -> dict[str, Any]:
    argv = [sys.executable, "-m", "bench.openloop", "--port", str(port), "--rate", f"{rate:.1f}",
            "--duration", str(duration), "--procs", str(procs), "--conns", "16",
            "--drain", "5"]
    r = subprocess.run(argv, capture_output=True, text=True, timeout=duration + 60,
                       cwd=HERE.parent)
    if r.returncode != 0:
        raise RuntimeError(f"openloop failed: {r.stderr[-1000:]}")
    return dict(json.loads(r.stdout.strip().splitlines()[-1]))


def haproxy_info(srv: Server, work: Path) -> dict[str, str]:
    """HAProxy's `show info` over its stats socket (handshake counters for the verification)."""
    import socket as _s

    try:
        with _s.socket(_s.AF_UNIX) as s:
            s.settimeout(2)
            s.connect(str(work / "haproxy.sock"))
            s.sendall(b"show info\n")
            data = b""
            while chunk := s.recv(65536):
                data += chunk
    except OSError:
        return {}
    return dict(line.split(": ", 1) for line in data.decode().splitlines() if ": " in line)


def resumption_check(port: int, work: Path) -> str:
    """Would this listener resume a session a client offers? One `openssl s_client` connection
    saves its session (TLS 1.3 ticket, read after a full request), a second offers it back."""
    sess = work / f"sess-{port}.pem"
    req = "GET /1k HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n"
    base = ["openssl", "s_client", "-connect", f"{HOST}:{port}", "-ign_eof"]
    got = []
    for extra in (["-sess_out", str(sess)], ["-sess_in", str(sess)]):
        try:
            r = subprocess.run(base + extra, input=req, capture_output=True, text=True,
                               timeout=15)
            m = re.search(r"^(New|Reused), ", r.stdout, re.M)
            got.append(m.group(1) if m else "?")
        except subprocess.TimeoutExpired:
            got.append("timeout")
    return "resumes" if got[-1] == "Reused" else f"no resumption ({'/'.join(got)})"


# --- the bench ----------------------------------------------------------------------------------

@dataclass
class Figure:
    name: str
    unit: str
    per_cpu_unit: str
    scale: float = 1.0  # work units per request (e.g. MiB per 100 KiB response)
    samples: dict[str, list[Sample]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.a = args
        self.work = Path(tempfile.mkdtemp(prefix="dlba-bench-"))
        self.servers: dict[str, Server] = {}
        self.notes: list[str] = []
        self.figures: dict[str, Figure] = {}
        self.t0 = time.monotonic()

    def log(self, msg: str) -> None:
        print(f"[{time.monotonic() - self.t0:6.1f}s] {msg}", flush=True)

    # ---- setup
    def start(self) -> None:
        certs = proxies.make_certs(self.work)
        self.certs = certs
        be = proxies.start_backend(self.work, certs)
        self.servers["direct"] = be
        bp = be.ports["http"]
        self.servers["haproxy"] = proxies.start_haproxy(self.work, certs, bp)
        self.servers["nginx"] = proxies.start_nginx_proxy(self.work, certs, bp)
        self.servers["dlba"] = proxies.start_dlba(self.work, certs, bp, self.a.workers)
        self.notes += self.servers["dlba"].notes
        if self.a.workers != 1:
            # Beside the figure, not in it: a one-process node, where handshakes cost least per
            # CPU-second (see tls_handshakes' `one_process_node`).
            (self.work / "w1").mkdir()
            self.servers[ONE_PROC] = proxies.start_dlba(self.work / "w1", certs, bp, 1)
            # ... and its like: one process against one thread (each loses some 15 % per
            # CPU-second going to two, so w=1 against HAProxy's two threads would flatter it).
            (self.work / "t1").mkdir()
            self.servers[ONE_THREAD] = proxies.start_haproxy(self.work / "t1", certs, bp, 1)
        for name in self.servers:
            s = self.servers[name]
            self.log(f"{name}: pid {s.pid}, {s.nprocs()} process(es), ports {s.ports}")
        self._sanity()

    def _sanity(self) -> None:
        import ssl
        import urllib.request

        ctx = ssl.create_default_context(cafile=str(self.certs.ca))
        ctx.check_hostname = False
        for name, s in self.servers.items():
            for key, scheme in (("http", "http"), ("https", "https")):
                for path, size in (("/1k", 1024), ("/100k", 102400)):
                    url = f"{scheme}://{HOST}:{s.ports[key]}{path}"
                    with urllib.request.urlopen(url, timeout=5, context=ctx) as r:
                        body = r.read()
                    if r.status != 200 or len(body) != size:
                        raise RuntimeError(f"{name}: {url} -> {r.status}, {len(body)} bytes")
        # Which listeners would resume a session a client offers?
        checks = {}
        for name, s in self.servers.items():
            for key in ("https", "https_full"):
                if key in s.ports:
                    checks[f"{name}.{key}"] = resumption_check(s.ports[key], self.work)
        self.resumption = checks
        self.log(f"session offered back to each TLS listener: {checks}")

    def stop(self) -> None:
        for s in self.servers.values():
            s.stop()
        if not self.a.keep:
            shutil.rmtree(self.work, ignore_errors=True)

    # ---- measuring
    def order(self, run: int, targets: tuple[str, ...]) -> list[str]:
        k = run % len(targets)
        return list(targets[k:] + targets[:k])

    def measure(self, fig: Figure, targets: tuple[str, ...],
                go: Callable[[Server], tuple[float, float, dict[str, Any]]],
                probe_haproxy: bool = False) -> None:
        self.figures[fig.name] = fig
        for run in range(self.a.runs):
            for t in self.order(run, targets):
                srv = self.servers[t]
                if not srv.alive():
                    raise RuntimeError(f"{t} died; see {srv.log}")
                probe: dict[str, str] = {}
                timer = None
                if probe_haproxy and t == "haproxy":
                    # HAProxy's own view in mid-run: handshakes needing a key computation (full)
                    # per second, and the share of resumed sessions.
                    def grab(srv: Server = srv, probe: dict[str, str] = probe) -> None:
                        info = haproxy_info(srv, self.work)
                        for k in ("SslFrontendKeyRate", "SslFrontendSessionReuse_pct", "SslRate"):
                            if k in info:
                                probe[k] = info[k]
                    timer = threading.Timer(self.a.duration / 2, grab)
                    timer.start()
                c0 = srv.cpu()
                work, wall, info = go(srv)
                cpu = srv.cpu() - c0
                if timer is not None:
                    timer.join()
                    info = {**info, "haproxy_mid_run": dict(probe)}
                    fig.extra.setdefault("haproxy_mid_run", []).append(dict(probe))
                s = Sample(work * fig.scale, wall, cpu, info)
                fig.samples.setdefault(t, []).append(s)
                self.log(f"{fig.name:16s} run {run + 1} {t:8s} {s.rate:12.1f} {fig.unit:9s} "
                         f"cpu {cpu:5.2f}s  {s.per_cpu:10.1f} {fig.per_cpu_unit}"
                         + (f"  {info}" if info else ""))
                time.sleep(self.a.pause)

    def run_all(self) -> None:
        if self.a.h2_only:
            h2.run_h2(self)
            return
        # First, on fresh processes (same state for all): memory with idle keepalive clients.
        self.idle_rss()
        d = self.a.duration
        both = (*PROXIES, "direct")
        c = self.a.conns

        self.measure(Figure("http_rps", "req/s", "req/CPU-s"), both,
                     lambda s: wrk(f"http://{HOST}:{s.ports['http']}/1k", d, c))
        self.measure(Figure("https_rps", "req/s", "req/CPU-s"), both,
                     lambda s: wrk(f"https://{HOST}:{s.ports['https']}/1k", d, c))
        self.measure(Figure("throughput_100k", "MiB/s", "MiB/CPU-s", scale=100 / 1024), both,
                     lambda s: wrk(f"http://{HOST}:{s.ports['http']}/100k", d, c))

        hs = self.figures["tls_handshakes"] = Figure("tls_handshakes", "handshakes/s",
                                                     "handshakes/CPU-s")
        hs.extra["method"] = ("openssl s_time -new (client never offers a session: every "
                              "connection is a full TLS 1.3 ECDHE + ECDSA P-256 handshake) "
                              "against the no-ticket/no-cache listener, one GET /1k "
                              "(HTTP/1.0, close) per connection, "
                              f"{self.a.stime_procs} clients in parallel")

        def full(s: Server) -> tuple[float, float, dict[str, Any]]:
            return s_time(s.ports.get("https_full", s.ports["https"]), d, self.a.stime_procs)

        self.measure(hs, (*both, *((ONE_PROC, ONE_THREAD) if ONE_PROC in self.servers else ())),
                     full, probe_haproxy=True)

        lua = self.work / "close.lua"
        lua.write_text(CLOSE_LUA)
        rs = Figure("tls_resumed", "handshakes/s", "handshakes/CPU-s")
        rs.extra["method"] = ("wrk with `Connection: close` against the ticket-enabled listener "
                              "(wrk keeps its session across reconnects: resumed handshakes)")
        self.measure(rs, PROXIES,
                     lambda s: wrk(f"https://{HOST}:{s.ports['https']}/1k", d, c, script=lua),
                     probe_haproxy=True)

        peak = statistics.median(x.rate for x in self.figures["http_rps"].samples["haproxy"])
        for name, rate in (("p99_fixed_rate_ms", peak / 2), ("p99_1000rps_ms", 1000.0)):
            self.latency(name, rate)
        if shutil.which("h2load"):  # HTTP/2 rows (bench/h2.py)
            h2.run_h2(self)
        else:
            self.notes.append("h2load missing (apt nghttp2-client): no HTTP/2 rows")

    def latency(self, name: str, rate: float) -> None:
        fig = Figure(name, "ms", "req/CPU-s")
        fig.extra["rate"] = round(rate, 1)
        fig.extra["method"] = (f"bench/openloop.py: open loop at {rate:.0f} req/s over "
                               f"{self.a.openloop_procs} processes x 16 keepalive connections, "
                               "GET /1k, latency from the intended send time; requests still "
                               "unanswered 5 s after the end count with the latency reached. "
                               "`direct` (the back end alone) is the generator's own floor")
        self.figures[name] = fig
        for run in range(self.a.runs):
            for t in self.order(run, (*PROXIES, "direct")):
                srv = self.servers[t]
                c0 = srv.cpu()
                r = openloop(srv.ports["http"], rate, self.a.duration, self.a.openloop_procs)
                cpu = srv.cpu() - c0
                s = Sample(r["done"], self.a.duration, cpu, r)
                fig.samples.setdefault(t, []).append(s)
                self.log(f"{name:16s} run {run + 1} {t:8s} p50 {r['p50_ms']:8.2f} ms  p99 "
                         f"{r['p99_ms']:8.2f} ms  achieved {r['achieved_rate']:8.1f}/s  "
                         f"errors {r['errors']} timeouts {r['timeouts']}  cpu {cpu:5.2f}s")
                time.sleep(self.a.pause)

    def idle_rss(self) -> None:
        fig = Figure("idle_rss_mb", "MB", "")
        fig.extra["connections"] = self.a.idle_conns
        fig.extra["method"] = (f"RSS (sum of VmRSS over the process tree) while a helper process "
                               f"holds {self.a.idle_conns} idle HTTP/1.1 keepalive connections, "
                               "each after one GET /1k; measured first, on freshly started "
                               "processes (baseline_mb = before the connections)")
        self.figures[fig.name] = fig
        for t in PROXIES:
            srv = self.servers[t]
            base = srv.rss_mb()
            p = subprocess.Popen([sys.executable, "-m", "bench.idle", "--port",
                                  str(srv.ports["http"]), "--conns", str(self.a.idle_conns),
                                  "--hold", "150"], stdin=subprocess.PIPE,
                                 stdout=subprocess.PIPE, text=True, cwd=HERE.parent)
            try:
                assert p.stdout is not None and p.stdin is not None
                line = p.stdout.readline()
                got = json.loads(line) if line else {"open": 0, "ok": 0}
                time.sleep(1.0)
                rss = srv.rss_mb()
                alive = srv.alive()
            finally:
                if p.stdin is not None:
                    p.stdin.close()
                try:
                    p.wait(30)
                except subprocess.TimeoutExpired:
                    p.kill()
                    p.wait()
            info = {"baseline_mb": round(base, 1), "open": got["open"], "ok": got["ok"],
                    "kb_per_conn": round((rss - base) * 1024 / max(1, got["open"]), 2),
                    "alive": alive}
            fig.samples[t] = [Sample(rss, 1.0, 0.0, info)]
            self.log(f"idle_rss_mb      {t:8s} {rss:8.1f} MB (baseline {base:.1f} MB)  {info}")
            time.sleep(self.a.pause)

    # ---- results
    def results(self) -> list[dict[str, Any]]:
        out = []
        for fig in self.figures.values():
            e: dict[str, Any] = {"figure": fig.name, "unit": fig.unit}
            is_rate = fig.per_cpu_unit != "" and fig.unit != "ms"
            val: dict[str, float] = {}
            pcpu: dict[str, float] = {}
            mins: dict[str, float] = {}
            maxs: dict[str, float] = {}
            runs: dict[str, list[float]] = {}
            for t, ss in fig.samples.items():
                if fig.unit == "ms":
                    xs = [float(s.info["p99_ms"]) for s in ss]
                elif fig.unit == "MB":
                    xs = [s.work for s in ss]
                else:
                    xs = [s.rate for s in ss]
                runs[t] = [round(x, 2) for x in xs]
                val[t] = round(statistics.median(xs), 2)
                mins[t], maxs[t] = round(min(xs), 2), round(max(xs), 2)
                pcpu[t] = round(statistics.median(s.per_cpu for s in ss), 2)
            for t in PROXIES:
                e[t] = val.get(t)
            if "direct" in val:
                e["direct"] = val["direct"]
            e["ratio"] = round(val["dlba"] / val["haproxy"], 3) if val.get("haproxy") else None
            if is_rate:
                e["ratio_cpu"] = (round(pcpu["dlba"] / pcpu["haproxy"], 3)
                                  if pcpu.get("haproxy") else None)
                e["per_cpu_s"] = pcpu
                e["per_cpu_unit"] = fig.per_cpu_unit
            elif fig.unit == "ms":
                # latency has no work per CPU-second: ratio_cpu is the wall-clock ratio; the CPU
                # each proxy spent per 1000 requests at that rate is given beside it.
                e["ratio_cpu"] = e["ratio"]
                e["cpu_ms_per_1k_req"] = {t: round(1e6 / v, 1) for t, v in pcpu.items() if v}
                e["p50_ms"] = {t: round(statistics.median(float(s.info["p50_ms"]) for s in ss), 3)
                               for t, ss in fig.samples.items()}
                e["achieved_rate"] = {t: round(statistics.median(
                    float(s.info["achieved_rate"]) for s in ss), 1)
                    for t, ss in fig.samples.items()}
            else:
                e["ratio_cpu"] = e["ratio"]  # memory: nothing to divide by
                e["detail"] = {t: ss[0].info for t, ss in fig.samples.items()}
            e["min"], e["max"], e["runs"] = mins, maxs, runs
            if ONE_PROC in val and ONE_THREAD in val and is_rate:
                e["one_process_node"] = {
                    "note": "the node with [proxy] workers = 1 against HAProxy with nbthread 1, "
                            "measured in the same runs",
                    "rate": val[ONE_PROC], "per_cpu_s": pcpu[ONE_PROC],
                    "haproxy_1thread_rate": val[ONE_THREAD],
                    "haproxy_1thread_per_cpu_s": pcpu[ONE_THREAD],
                    "ratio_cpu": round(pcpu[ONE_PROC] / pcpu[ONE_THREAD], 3),
                    "runs": runs[ONE_PROC], "haproxy_1thread_runs": runs[ONE_THREAD]}
                for d in (e["per_cpu_s"], mins, maxs, runs):
                    d.pop(ONE_PROC, None)
                    d.pop(ONE_THREAD, None)
            e.update(fig.extra)
            out.append(e)
        return out


def print_table(res: list[dict[str, Any]], notes: list[str]) -> None:
    hdr = (f"{'figure':18s} {'unit':13s} {'dlba':>10s} {'haproxy':>10s} {'nginx':>10s} "
           f"{'direct':>10s} {'ratio':>7s} {'ratio_cpu':>9s}   dlba min-max")
    print("\n" + hdr + "\n" + "-" * len(hdr))
    for e in res:
        def f(v: Any) -> str:
            return f"{v:10.1f}" if isinstance(v, (int, float)) else f"{'-':>10s}"
        print(f"{e['figure']:18s} {e['unit']:13s} {f(e['dlba'])} {f(e['haproxy'])} "
              f"{f(e['nginx'])} {f(e.get('direct'))} {e['ratio']:7.3f} {e['ratio_cpu']:9.3f}"
              f"   {e['min']['dlba']}-{e['max']['dlba']}")
    print("\nper CPU-second of the proxy's process tree:")
    for e in res:
        if "per_cpu_s" in e:
            p = e["per_cpu_s"]
            print(f"  {e['figure']:18s} {e['per_cpu_unit']:17s} dlba {p.get('dlba', 0):10.1f}  "
                  f"haproxy {p.get('haproxy', 0):10.1f}  nginx {p.get('nginx', 0):10.1f}"
                  + (f"  direct {p['direct']:10.1f}" if "direct" in p else ""))
        if "one_process_node" in e:
            o = e["one_process_node"]
            print(f"  {'':18s} {'':17s} one-process node {o['per_cpu_s']:10.1f}  "
                  f"haproxy nbthread 1 {o['haproxy_1thread_per_cpu_s']:10.1f}  "
                  f"(ratio_cpu {o['ratio_cpu']:.3f})")
    for n in notes:
        print("note:", n)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="1 run per figure, 3 s (<= 3 min)")
    p.add_argument("--duration", type=float, help="seconds per measurement (default 8, quick 3)")
    p.add_argument("--runs", type=int, help="runs per figure and target (default 3, quick 1)")
    p.add_argument("--conns", type=int, default=50, help="wrk connections")
    p.add_argument("--idle-conns", type=int, default=10000)
    p.add_argument("--workers", type=int, default=2, help="[proxy] workers for the node")
    p.add_argument("--stime-procs", type=int, default=3)
    p.add_argument("--openloop-procs", type=int, default=2)
    p.add_argument("--pause", type=float, default=0.5, help="seconds between runs")
    p.add_argument("--out", default=str(HERE / "results.json"))
    p.add_argument("--keep", action="store_true", help="keep the work dir (configs, logs)")
    p.add_argument("--h2-only", action="store_true", help="only the HTTP/2 rows (bench/h2.py)")
    a = p.parse_args(argv)
    if a.duration is None:
        a.duration = 3.0 if a.quick else 8.0
    if a.runs is None:
        a.runs = 1 if a.quick else 3
    missing = proxies.tools_missing()
    if missing:
        print(f"bench: missing tools {missing} (make bench installs them)", file=sys.stderr)
        return 2
    want = 200_000
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))
    except (ValueError, OSError):
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    # The proxies run in their own sessions: stop them on SIGTERM too (SIGINT raises already).
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    b = Bench(a)
    b.log(f"work dir {b.work}; runs {a.runs} x {a.duration:g}s; cores {os.cpu_count()}")
    try:
        b.start()
        b.run_all()
        res = b.results()
    finally:
        b.stop()
    meta = {"notes": b.notes, "resumption_check": b.resumption,
            "duration_s": a.duration, "runs": a.runs, "wrk_conns": a.conns,
            "haproxy": _version(["haproxy", "-v"]), "nginx": _version(["nginx", "-v"]),
            "cores": os.cpu_count(), "elapsed_s": round(time.monotonic() - b.t0, 1)}
    for e in res:
        e.setdefault("notes", b.notes)
    Path(a.out).write_text(json.dumps(res, indent=1) + "\n")
    Path(a.out).with_name(Path(a.out).stem + "_meta.json").write_text(
        json.dumps(meta, indent=1) + "\n")
    print_table(res, b.notes)
    print(f"\nwrote {a.out} in {meta['elapsed_s']} s")
    return 0


def _version(argv: list[str]) -> str:
    try:
        r = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        return (r.stdout + r.stderr).splitlines()[0]
    except (OSError, IndexError, subprocess.TimeoutExpired):
        return ""


if __name__ == "__main__":
    sys.exit(main())
