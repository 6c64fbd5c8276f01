"""The chaos soak's memory and descriptor figures, told apart from the connections a node holds:
pure functions, no I/O.

A node's descriptors and RSS follow the connections it holds (the idle crowd piles onto the node
that is never killed), so raw growth says more about where the crowd sits than about leaks.
Each sample (bench.chaos_array.Monitor) therefore carries, beside RSS and descriptors, how many
of those descriptors are ESTABLISHED TCP sockets of the node's namespace. What each figure
means: bench/README.md ("Chaos soak").
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

ESTABLISHED = "01"  # st column of /proc/net/tcp
CLIENT_PORTS = (80, 443)  # the VIP's listeners: a socket with this local port is a client's
BACKEND_PORT = 8080
MATCH_FRAC, MATCH_MIN = 0.02, 20  # "same connection count": within 2 % or 20 connections


def established_sockets(tables: Iterable[str]) -> dict[int, tuple[int, int]]:
    """inode -> (local port, remote port) of the ESTABLISHED sockets listed in the texts of
    /proc/PID/net/tcp and tcp6 (the sockets of PID's network namespace)."""
    out: dict[int, tuple[int, int]] = {}
    for text in tables:
        for line in text.splitlines()[1:]:
            f = line.split()
            if len(f) < 10 or f[3] != ESTABLISHED or f[9] == "0":
                continue
            out[int(f[9])] = (int(f[1].rsplit(":", 1)[1], 16), int(f[2].rsplit(":", 1)[1], 16))
    return out


def fd_counts(fd_targets: Iterable[str], est: dict[int, tuple[int, int]]) -> dict[str, int]:
    """Counts over the readlink() targets of every descriptor of a node's processes:
    all, sockets, established TCP sockets (`conn_fds`), and of those the clients' (local port
    80/443) and the back ends' (remote port 8080)."""
    c = {"fds": 0, "socket_fds": 0, "conn_fds": 0, "client_conns": 0, "backend_conns": 0}
    for target in fd_targets:
        c["fds"] += 1
        if not target.startswith("socket:["):
            continue
        c["socket_fds"] += 1
        ports = est.get(int(target[8:-1]))
        if ports is None:
            continue
        c["conn_fds"] += 1
        if ports[0] in CLIENT_PORTS:
            c["client_conns"] += 1
        elif ports[1] == BACKEND_PORT:
            c["backend_conns"] += 1
    return c


def matched(a: int, b: int) -> bool:
    return abs(a - b) <= max(MATCH_MIN, MATCH_FRAC * max(a, b))


def kb_per_conn(ramp: list[dict[str, Any]]) -> float | None:
    """RSS KiB per held connection: least-squares slope of RSS on established connections over
    the warm-up, while the idle crowd connects (too short a time for a leak to weigh). None
    when the connection count moved by less than 100 there."""
    if len(ramp) < 2:
        return None
    xs: list[float] = [s["conn_fds"] for s in ramp]
    ys: list[float] = [s["rss_kb"] for s in ramp]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    sxx = sum((x - mx) ** 2 for x in xs)
    if max(xs) - min(xs) < 100 or sxx == 0:
        return None
    return max(0.0, sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx)


def longest_matched_span(ss: list[dict[str, Any]]) -> tuple[int, int] | None:
    """Indexes (i, j), i < j, of the two samples furthest apart in time whose connection counts
    match (`matched`); None when no two do."""
    best: tuple[float, int, int] | None = None
    for i, a in enumerate(ss):
        for j in range(len(ss) - 1, i, -1):
            span = ss[j]["t"] - a["t"]
            if best is not None and span <= best[0]:
                break
            if matched(a["conn_fds"], ss[j]["conn_fds"]):
                best = (span, i, j)
                break
    return None if best is None else (best[1], best[2])


def node_growth(ss: list[dict[str, Any]], start: float, end: float) -> dict[str, Any] | None:
    """One node's figures over the window [start, end] (the warm-up's end to the end of the
    load, while the idle crowd is there); None with fewer than two samples in it."""
    w = [s for s in ss if start <= s["t"] <= end]
    if len(w) < 2:
        return None
    first, last = w[0], w[-1]
    k = kb_per_conn([s for s in ss if s["t"] <= start])
    out: dict[str, Any] = {
        "rss_raw_mb": round((last["rss_kb"] - first["rss_kb"]) / 1024, 1),
        "fds_raw": last["fds"] - first["fds"],
        "fds_not_conn": (last["fds"] - last["conn_fds"]) - (first["fds"] - first["conn_fds"]),
        "from_t": first["t"], "to_t": last["t"],
        "first": {k_: first.get(k_) for k_ in ("rss_kb", "main_rss_kb", "fds", "conn_fds",
                                               "client_conns", "backend_conns")},
        "last": {k_: last.get(k_) for k_ in ("rss_kb", "main_rss_kb", "fds", "conn_fds",
                                             "client_conns", "backend_conns")},
        "kb_per_conn": None if k is None else round(k, 2),
        "rss_endpoints_adjusted_mb": None if k is None else round(
            (last["rss_kb"] - first["rss_kb"] - k * (last["conn_fds"] - first["conn_fds"]))
            / 1024, 1),
    }
    pair = longest_matched_span(w)
    if pair is None:
        out.update(rss_mb=None, rss_span=None)
        return out
    a, b = w[pair[0]], w[pair[1]]
    d_kb = b["rss_kb"] - a["rss_kb"] - (k or 0.0) * (b["conn_fds"] - a["conn_fds"])
    out.update(rss_mb=round(d_kb / 1024, 1), rss_span={
        "from_t": a["t"], "to_t": b["t"], "s": round(b["t"] - a["t"], 1),
        "conns": [a["conn_fds"], b["conn_fds"]], "rss_kb": [a["rss_kb"], b["rss_kb"]],
        # the main process's part (no connections: no adjustment), where the control plane runs
        "main_rss_kb": [a.get("main_rss_kb"), b.get("main_rss_kb")]})
    return out


def growth(samples: list[dict[str, Any]], start: float, end: float) -> dict[str, Any]:
    """Per node whose main process lived through the whole run (a restarted one starts again
    from nothing): `node_growth` over [start, end]."""
    per: dict[str, list[dict[str, Any]]] = {}
    for s in samples:
        per.setdefault(s["node"], []).append(s)
    out: dict[str, Any] = {}
    for node, ss in per.items():
        if len({s["pid"] for s in ss}) == 1 and (g := node_growth(ss, start, end)) is not None:
            out[node] = g
    return out


def top(per_node: dict[str, Any], key: str) -> Any:
    """The largest figure `key` over the nodes (None when no node has one)."""
    vals = [g[key] for g in per_node.values() if g.get(key) is not None]
    return max(vals, default=None)


def series(samples: list[dict[str, Any]]) -> dict[str, list[str]]:
    """Every sample, compact: per node one line "t rss_kb fds socket_fds conn_fds client_conns
    backend_conns pid main_rss_kb" each, so the figures can be computed again from the results
    file."""
    keys = ("t", "rss_kb", "fds", "socket_fds", "conn_fds", "client_conns", "backend_conns",
            "pid", "main_rss_kb")
    out: dict[str, list[str]] = {}
    for s in samples:
        out.setdefault(s["node"], []).append(" ".join(str(s.get(k, "")) for k in keys))
    return out
