"""The chaos soak's figures from its records: pure functions, no I/O.

Inputs: the load generator's records (bench.chaos_load), the faults that happened (with the
node or back end each hit and when it was repaired), the monitor's role changes, client-table
snapshots and memory samples (bench.chaos_array.Monitor; their figures: bench.chaos_growth).
What each figure counts is in bench/README.md ("Chaos soak").
"""

from __future__ import annotations

import bisect
import ipaddress
import itertools
from typing import Any

from bench import chaos_growth

CLIENT_IP = int(ipaddress.IPv4Address("198.18.0.2"))
IDEMPOTENT = ("keepalive_http", "keepalive_https", "newconn_http", "newconn_https", "session",
              "download")
NODE_FAULTS = ("kill_node", "kill_scheduler", "kill_worker", "scheduler_link")
SLACK_S = 1.0  # a fault's effect on a connection may show a little after the fault
BACKEND_GRACE_S = 6.0  # after a back end's restart, until the nodes' health checks see it


def max_gap(ok_times: list[float], start: float, end: float) -> float:
    """Longest stretch of [start, end] without a successful new connection."""
    points = [start, *sorted(t for t in ok_times if start <= t <= end), end]
    return max(b - a for a, b in itertools.pairwise(points))


def owner_at(tables: list[dict[str, Any]], t: float, sport: int) -> str | None:
    """The node owning the bucket of (client, sport) in the last table seen before `t`
    (the first one when none was)."""
    if not tables or sport <= 0:
        return None
    i = max(0, bisect.bisect_right([x["t"] for x in tables], t) - 1)
    a = tables[i]["assignments"]
    return a[(CLIENT_IP + sport) % len(a)] if a else None


def _hits(fault: dict[str, Any], t0: float, t1: float) -> bool:
    return bool(t0 - SLACK_S <= fault["t"] <= t1 + SLACK_S) or bool(
        fault["t"] <= t0 and fault.get("repaired", fault["t"]) >= t0 - SLACK_S)


def transfer_verdicts(transfers: list[dict[str, Any]], faults: list[dict[str, Any]],
                      tables: list[dict[str, Any]]) -> dict[str, Any]:
    """Failed transfers split into excused (their node or back end was hit while they ran)
    and broken (neither was: the figure that must be 0)."""
    out: dict[str, Any] = {"total": len(transfers), "ok": 0, "not_started": 0,
                           "excused_node": 0, "excused_backend": 0, "broken": [],
                           "failed_samples": []}
    for x in transfers:
        if x["ok"]:
            out["ok"] += 1
            continue
        if len(out["failed_samples"]) < 30:
            out["failed_samples"].append(x)
        if not x["backend"]:  # no response head / no upgrade: never a transfer in flight
            out["not_started"] += 1
            continue
        node = owner_at(tables, x["t0"], x["sport"])
        during = [f for f in faults if _hits(f, x["t0"], x["t1"])]
        if any(f["kind"] in NODE_FAULTS and f.get("node") == node for f in during):
            out["excused_node"] += 1
        elif any(f["kind"] == "kill_backend" and f.get("backend") == x["backend"]
                 for f in during):
            out["excused_backend"] += 1
        else:
            out["broken"].append({**x, "node": node})
    return out


def backend_down(faults: list[dict[str, Any]]) -> dict[str, list[tuple[float, float]]]:
    """Per back end, the windows from its kill to its restart plus the health grace."""
    out: dict[str, list[tuple[float, float]]] = {}
    for f in faults:
        if f["kind"] == "kill_backend" and f.get("backend"):
            end = f.get("repaired", f["t"] + 1e9) + BACKEND_GRACE_S
            out.setdefault(f["backend"], []).append((f["t"], end))
    return out


def sessions_moved(obs: list[list[Any]], faults: list[dict[str, Any]]) -> dict[str, Any]:
    """Sessions answered by another back end than the one that logged them in (issued their
    JSESSIONID) although that one was up all the while since the session's previous answer.
    While their back end is down (killed, until its restart plus the health grace) a session
    may be answered elsewhere (a failover, counted apart); it must come home afterwards."""
    down = backend_down(faults)
    home: dict[int, str] = {}
    prev: dict[int, float] = {}
    moved: dict[int, dict[str, Any]] = {}
    failed_over = 0
    for sid, t, backend, sport, scheme, login in sorted(obs, key=lambda o: (o[0], o[1])):
        if login or sid not in home:
            home[sid] = backend
        elif backend != home[sid]:
            if any(a <= t and b >= prev[sid] for a, b in down.get(home[sid], [])):
                failed_over += 1
            elif sid not in moved:
                moved[sid] = {"session": sid, "t": t, "home": home[sid], "to": backend,
                              "sport": sport, "scheme": scheme, "previous_t": prev[sid]}
        prev[sid] = t
    return {"sessions": len(home), "moved": list(moved.values()),
            "answered_elsewhere_while_home_down": failed_over}


def failovers(roles: list[dict[str, Any]]) -> tuple[int, float, list[dict[str, Any]]]:
    """(scheduler changes, seconds with two nodes claiming the role, the changes)."""
    changes: list[dict[str, Any]] = []
    last: str | None = None
    dual = 0.0
    for i, r in enumerate(roles):
        sched = [n for n, role in r["roles"].items() if role == "scheduler"]
        if len(sched) > 1 and i + 1 < len(roles):
            dual += roles[i + 1]["t"] - r["t"]
        if len(sched) == 1 and sched[0] != last:
            if last is not None:
                changes.append({"t": r["t"], "from": last, "to": sched[0]})
            last = sched[0]
    return len(changes), round(dual, 3), changes


def figures(load: dict[str, Any], faults: list[dict[str, Any]], monitor: dict[str, Any],
            duration: float, warmup: float) -> dict[str, Any]:
    counts = load["counts"]
    t = transfer_verdicts(load["transfers"], faults, monitor["tables"])
    s = sessions_moved(load["sessions"], faults)
    n_failovers, dual_s, changes = failovers(monitor["roles"])
    g = chaos_growth.growth(monitor["samples"], warmup, duration)
    failures = []
    for f in load["failures"][:100]:  # each attempt's node, from its source port
        nodes = []
        for a in f["attempts"]:
            when, _, rest = a.partition(" ")
            sport = int(rest.split()[0].removeprefix("sport=")) if rest.startswith("sport=") else 0
            nodes.append(owner_at(monitor["tables"], float(when), sport))
        failures.append({**f, "nodes": nodes})
    return {
        "requests": sum(c["requests"] for c in counts.values()),
        "lost_idempotent": sum(counts.get(k, {}).get("lost", 0) for k in IDEMPOTENT),
        "broken_transfers": len(t["broken"]),
        "sessions_moved": len(s["moved"]),
        "failovers": n_failovers,
        "max_gap_s": round(max_gap(load["probes_ok"], warmup, duration), 3),
        "rss_growth_mb": chaos_growth.top(g, "rss_mb"),
        "fd_growth": chaos_growth.top(g, "fds_not_conn"),
        "rss_growth_raw_mb": chaos_growth.top(g, "rss_raw_mb"),
        "fd_growth_raw": chaos_growth.top(g, "fds_raw"),
        "dual_scheduler_s": dual_s,
        "detail": {
            "counts": counts, "transfers": {k: v for k, v in t.items() if k != "broken"},
            "broken": t["broken"][:50], "sessions": s, "scheduler_changes": changes,
            "growth_per_node": g, "samples": chaos_growth.series(monitor["samples"]),
            "probes_ok": len(load["probes_ok"]),
            "probes_failed": load["probes_failed"], "failures": failures,
        },
    }
