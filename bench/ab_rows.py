"""The rows `bench.ab` can A/B and its interleaved measuring loop.

Each row is one of `make bench`'s throughput figures with the same load driver (`bench.run`'s
wrk and openssl s_time wrappers) and the same accounting: user+system CPU of the target's whole
process tree (`bench.handshake_cost.counters`, /proc), so the figure is work per CPU-second.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from bench.h2 import h2load
from bench.handshake_cost import counters
from bench.proxies import HOST, Server
from bench.run import CLOSE_LUA, s_time, wrk


@dataclass(frozen=True)
class Load:
    duration: float
    conns: int
    stime_procs: int
    close_lua: Path  # wrk script adding `Connection: close` (resumed handshakes)


@dataclass(frozen=True)
class Row:
    name: str
    unit: str  # of the work counted: per CPU-second in the figures
    scale: float  # work units per request (MiB per 100 KiB response)
    drive: Callable[[Server, Load], tuple[float, float]]  # -> (requests, wall seconds)


def _wrk(listener: str, path: str, script: bool = False) -> Callable[[Server, Load],
                                                                     tuple[float, float]]:
    scheme = "http" if listener == "http" else "https"

    def go(srv: Server, ld: Load) -> tuple[float, float]:
        n, secs, _ = wrk(f"{scheme}://{HOST}:{srv.ports[listener]}{path}", ld.duration, ld.conns,
                         script=ld.close_lua if script else None)
        return n, secs

    return go


def _h2(conns: int, streams: int) -> Callable[[Server, Load], tuple[float, float]]:
    def go(srv: Server, ld: Load) -> tuple[float, float]:
        n, secs, _ = h2load(srv.ports["h2"], ld.duration, conns, streams)
        return n, secs

    return go


def _full_handshakes(srv: Server, ld: Load) -> tuple[float, float]:
    n, secs, _ = s_time(srv.ports["https_full"], ld.duration, ld.stime_procs)
    return n, secs


ROWS: dict[str, Row] = {r.name: r for r in (
    Row("http_rps", "req", 1.0, _wrk("http", "/1k")),
    Row("https_rps", "req", 1.0, _wrk("https", "/1k")),
    Row("throughput_100k", "MiB", 100 / 1024, _wrk("http", "/100k")),
    Row("tls_handshakes", "handshakes", 1.0, _full_handshakes),
    Row("tls_resumed", "handshakes", 1.0, _wrk("https", "/1k", script=True)),
    Row("h2_rps", "req", 1.0, _h2(4, 100)),
    Row("h2_rps_1stream", "req", 1.0, _h2(16, 1)),
)}


def parse_rows(spec: str) -> list[str]:
    """`all` or a comma-separated list of row names, in the given order."""
    if spec.strip() in ("", "all"):
        return list(ROWS)
    names = [s.strip() for s in spec.split(",") if s.strip()]
    bad = [n for n in names if n not in ROWS]
    if bad:
        raise ValueError(f"unknown rows {bad}; known: {', '.join(ROWS)}")
    return names


def write_close_lua(work: Path) -> Path:
    p = work / "close.lua"
    p.write_text(CLOSE_LUA)
    return p


@dataclass
class Sample:
    round: int
    work: float  # in the row's unit
    wall: float
    user: float  # CPU seconds of the process tree
    system: float
    switches: int

    @property
    def per_cpu(self) -> float:
        cpu = self.user + self.system
        return self.work / cpu if cpu > 0 else 0.0


def measure_once(row: Row, srv: Server, ld: Load, rnd: int) -> Sample:
    if not srv.alive():
        raise RuntimeError(f"{srv.name} died; see {srv.log}")
    u0, s0, x0 = counters(srv)
    n, wall = row.drive(srv, ld)
    u1, s1, x1 = counters(srv)
    return Sample(rnd, n * row.scale, wall, u1 - u0, s1 - s0, x1 - x0)


def loadavg() -> list[float]:
    try:
        return [float(x) for x in Path("/proc/loadavg").read_text().split()[:3]]
    except (OSError, ValueError):
        return []


def wait_for_load(limit: float, most: float = 120.0) -> float:
    """Wait (at most `most` seconds) until the 1-minute load average is below `limit`;
    returns it. limit <= 0: no waiting."""
    deadline = time.monotonic() + most
    while True:
        la = (loadavg() or [0.0])[0]
        if limit <= 0 or la < limit or time.monotonic() > deadline:
            return la
        time.sleep(5)


def warm_up(targets: dict[str, Server], rows: list[str], ld: Load, seconds: float) -> None:
    """One short untimed run of every row on every target: the first connections of a fresh
    process (back-end pool, caches, lazy imports) are not what a round should measure."""
    if seconds <= 0:
        return
    short = Load(seconds, ld.conns, ld.stime_procs, ld.close_lua)
    for rname in rows:
        for srv in targets.values():
            ROWS[rname].drive(srv, short)


def run_rounds(targets: dict[str, Server], rows: list[str], rounds: int, ld: Load,
               pause: float = 0.5, wait_load: float = 0.0, warmup: float = 1.0,
               ) -> tuple[dict[str, dict[str, list[Sample]]], list[list[float]]]:
    """Round by round, row by row, every target in rotating order (drift hits all alike).
    Returns samples[row][target] and the load average seen at the start of each round."""
    names = list(targets)
    warm_up(targets, rows, ld, warmup)
    out: dict[str, dict[str, list[Sample]]] = {r: {t: [] for t in names} for r in rows}
    loads = []
    for rnd in range(rounds):
        wait_for_load(wait_load)
        loads.append(loadavg())
        print(f"round {rnd + 1}/{rounds}  loadavg {' '.join(map(str, loads[-1]))}", flush=True)
        for i, rname in enumerate(rows):
            k = (rnd + i) % len(names)
            for t in names[k:] + names[:k]:
                row = ROWS[rname]
                s = measure_once(row, targets[t], ld, rnd)
                out[rname][t].append(s)
                cpu = s.user + s.system
                print(f"  {rname:16s} {t:14s} {s.work / s.wall:10.1f} {row.unit}/s "
                      f"{s.per_cpu:10.1f} {row.unit}/CPU-s  cpu {cpu:5.2f}s "
                      f"(user {100 * s.user / max(cpu, 1e-9):3.0f} %)  "
                      f"switches {s.switches / max(s.work, 1e-9):6.3f}/{row.unit}", flush=True)
                time.sleep(pause)
    return out, loads
