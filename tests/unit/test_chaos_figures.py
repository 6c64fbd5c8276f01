"""The chaos soak's pure parts: its fault schedule and how records become figures."""

from __future__ import annotations

import itertools
import os
import socket
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from bench import chaos_figures as cf
from bench import chaos_growth as cg
from bench.chaos_schedule import KINDS, NODE_KINDS, REPAIR_S, SETTLE_S, make_schedule, tail_s


@given(st.floats(30, 3600), st.integers(0, 1000))
def test_schedule_is_deterministic_spaced_and_inside_the_run(duration: float, seed: int) -> None:
    s = make_schedule(duration, seed)
    assert s == make_schedule(duration, seed)
    for a, b in itertools.pairwise(s):
        assert b.at - a.at >= REPAIR_S[a.kind] + SETTLE_S[a.kind] - 1e-9
        assert not (a.kind in NODE_KINDS and b.kind in NODE_KINDS)
    if s:
        assert s[-1].at <= duration - tail_s(duration)


def test_a_60s_schedule_has_every_kind_of_fault() -> None:
    assert {f.kind for f in make_schedule(60, 1)} == set(KINDS)


def test_max_gap_counts_the_edges() -> None:
    assert cf.max_gap([1.0, 1.5, 4.0], 0.0, 5.0) == 2.5
    assert cf.max_gap([], 2.0, 5.0) == 3.0


TABLES = [{"t": 0.0, "version": 1, "assignments": ["n1", "n2"]}]


def transfer(sport: int, backend: str, ok: bool = False) -> dict[str, object]:
    return {"kind": "download", "t0": 10.0, "t1": 12.0, "sport": sport, "backend": backend,
            "ok": ok, "bytes": 5, "error": "body: EOF"}


def test_a_cut_transfer_is_excused_only_by_a_fault_on_its_node_or_back_end() -> None:
    # (client ip + sport) % 2 picks the node: 198.18.0.2 is even, so an even port is n1's.
    faults = [{"t": 11.0, "kind": "kill_worker", "node": "n2"},
              {"t": 11.5, "kind": "kill_backend", "backend": "b3", "repaired": 14.0}]
    v = cf.transfer_verdicts(
        [transfer(1001, "b1"), transfer(1000, "b3"), transfer(1000, "b1"),
         transfer(1000, "b1", ok=True), transfer(1000, "")], faults, TABLES)
    assert (v["ok"], v["not_started"], v["excused_node"], v["excused_backend"]) == (1, 1, 1, 1)
    assert [b["sport"] for b in v["broken"]] == [1000]


def test_a_session_may_leave_its_back_end_only_while_that_one_is_down() -> None:
    faults = [{"t": 20.0, "kind": "kill_backend", "backend": "b1", "repaired": 23.0}]
    ok = [[1, 1.0, "b1", 1, "http", True], [1, 21.0, "b2", 2, "http", False],
          [1, 40.0, "b1", 3, "http", False]]
    moved = [[2, 1.0, "b1", 1, "http", True], [2, 35.0, "b1", 2, "http", False],
             [2, 36.0, "b2", 3, "http", False], [2, 37.0, "b2", 4, "http", False]]
    s = cf.sessions_moved(ok + moved, faults)
    assert [m["session"] for m in s["moved"]] == [2]
    assert s["answered_elsewhere_while_home_down"] == 1


def test_failovers_and_two_schedulers() -> None:
    roles = [{"t": 0.0, "roles": {"n1": "server", "n2": "scheduler"}},
             {"t": 5.0, "roles": {"n1": "scheduler", "n2": None}},
             {"t": 9.0, "roles": {"n1": "scheduler", "n2": "scheduler"}},
             {"t": 9.5, "roles": {"n1": "scheduler", "n2": "server"}}]
    n, dual, _ = cf.failovers(roles)
    assert (n, dual) == (1, 0.5)


def test_figures_from_records() -> None:
    load = {"counts": {"session": {"requests": 3, "ok": 2, "retried": 0, "lost": 1, "failed": 0},
                       "upload": {"requests": 2, "ok": 1, "retried": 0, "lost": 0, "failed": 1}},
            "failures": [{"t": 3.0, "kind": "session", "scheme": "http", "why": "connection",
                          "attempts": ["3.5 sport=1001 head: TimeoutError"]}],
            "probes_ok": [1.0, 2.0], "probes_failed": 0, "transfers": [], "sessions": []}
    def sample(t: float, node: str, pid: int, rss_kb: float, fds: int, conns: int = 0
               ) -> dict[str, object]:
        return {"t": t, "node": node, "pid": pid, "rss_kb": rss_kb, "fds": fds,
                "socket_fds": conns, "conn_fds": conns, "client_conns": conns,
                "backend_conns": 0}

    # n1 holds 100 more connections at the end, each 2 descriptors' worth of nothing else.
    samples = [sample(t, "n1", 7, 1024 * t, 10 + int(t) + c, c)
               for t, c in ((1.0, 0), (6.0, 0), (9.0, 100))]
    samples += [sample(9.0, "n2", 8, 0, 0), sample(9.5, "n2", 9, 9e9, 999)]
    f = cf.figures(load, [], {"roles": [], "tables": TABLES, "samples": samples}, 10.0, 5.0)
    assert (f["requests"], f["lost_idempotent"], f["max_gap_s"]) == (5, 1, 5.0)
    # n2 was restarted: not counted. n1: 3 descriptors more besides its 100 new connections.
    assert (f["rss_growth_raw_mb"], f["fd_growth_raw"], f["fd_growth"]) == (3.0, 103, 3)
    assert f["rss_growth_mb"] is None  # 0 and 100 connections: no two samples match
    assert len(f["detail"]["samples"]["n1"]) == 3
    assert f["detail"]["failures"][0]["nodes"] == ["n2"]


# --- memory and descriptors, apart from the connections held (bench.chaos_growth) -----------

TCP = """  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout
   0: 0100007F:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 11 1
   1: 0100007F:0050 0200007F:9C40 01 00000000:00000000 00:00000000 00000000     0        0 12 1
   2: 0100007F:9C41 6501A8C6:1F90 01 00000000:00000000 00:00000000 00000000     0        0 13 1
   3: 0100007F:2328 0200007F:9C42 01 00000000:00000000 00:00000000 00000000     0        0 14 1
   4: 0100007F:0050 0200007F:9C43 08 00000000:00000000 00:00000000 00000000     0        0 15 1
   5: 0100007F:01BB 0200007F:9C44 06 00000000:00000000 03:00000000 00000000     0        0 0 1
"""


def test_descriptors_are_told_apart_by_the_sockets_they_are() -> None:
    est = cg.established_sockets([TCP])
    assert est == {12: (80, 40000), 13: (40001, 8080), 14: (9000, 40002)}
    targets = ["socket:[11]", "socket:[12]", "socket:[13]", "socket:[14]", "socket:[15]",
               "pipe:[99]", "anon_inode:[eventpoll]", "/dev/null"]
    # 15 is in CLOSE_WAIT: a descriptor still held for a closed connection, not a connection.
    assert cg.fd_counts(targets, est) == {"fds": 8, "socket_fds": 5, "conn_fds": 3,
                                          "client_conns": 1, "backend_conns": 1}


def test_a_real_connection_is_counted_from_proc() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        cli = socket.create_connection(srv.getsockname())
        acc, _ = srv.accept()
        with cli, acc:
            tables = [Path(f"/proc/self/net/{n}").read_text() for n in ("tcp", "tcp6")]
            targets = [os.readlink(f"/proc/self/fd/{fd}") for fd in os.listdir("/proc/self/fd")
                       if os.path.exists(f"/proc/self/fd/{fd}")]
            est = cg.established_sockets(tables)
            ours = {f"socket:[{os.fstat(s.fileno()).st_ino}]" for s in (cli, acc)}
            assert ours <= {f"socket:[{i}]" for i in est}
            c = cg.fd_counts(targets, est)
            assert c["conn_fds"] >= 2 and c["socket_fds"] >= 3  # the listener is not one


def node(ts: list[float], conns: list[int], leak_kb_s: float = 0.0, kb: float = 6.0,
         fds_per_s: float = 0.0) -> list[dict[str, object]]:
    """A node's samples: RSS = base + kb per connection (+ a leak), fds = 43 + connections."""
    return [{"t": t, "node": "n1", "pid": 1, "rss_kb": 150_000 + kb * c + leak_kb_s * t,
             "fds": 43 + c + int(fds_per_s * t), "socket_fds": c + 5, "conn_fds": c,
             "client_conns": c, "backend_conns": 0} for t, c in zip(ts, conns, strict=True)]


def test_the_crowd_piling_on_is_no_growth_but_a_leak_is() -> None:
    # The crowd arrives in the warm-up (0-15 s), then piles on after failovers and stays.
    ts = [float(t) for t in range(0, 602, 2)]
    conns = [min(3300, 220 * int(t)) if t <= 15 else 3300 if t < 200 else 10000 for t in ts]
    clean = cg.growth(node(ts, conns), 15.0, 600.0)["n1"]
    assert clean["rss_raw_mb"] > 35 and clean["fds_raw"] == 6700
    assert clean["kb_per_conn"] == 6.0 and clean["rss_mb"] == 0.0
    assert clean["fds_not_conn"] == 0 and clean["rss_endpoints_adjusted_mb"] == 0.0
    assert clean["rss_span"]["s"] > 180  # 16 s .. 198 s or 200 s .. 600 s
    leaky = cg.growth(node(ts, conns, leak_kb_s=10.0, fds_per_s=1.0), 15.0, 600.0)["n1"]
    assert leaky["rss_mb"] > 3.5 and leaky["fds_not_conn"] > 500  # 3.9 MB and 600 fds


@given(st.lists(st.integers(0, 12000), min_size=20, max_size=80),
       st.floats(1.0, 20.0), st.floats(0.0, 50.0))
def test_matched_counts_see_a_leak_whatever_the_connections_do(
        later: list[int], kb: float, leak_kb_s: float) -> None:
    ramp = [0, 1000, 2000, 3000]
    conns = [*ramp, 3000, *later, 3000]  # the window starts and ends at the same count
    ts = [2.0 * i for i in range(len(conns))]
    g = cg.growth(node(ts, conns, leak_kb_s=leak_kb_s, kb=kb), ts[len(ramp)], ts[-1])["n1"]
    span = g["rss_span"]
    assert span is not None and span["s"] == ts[-1] - ts[len(ramp)]
    # The ramp's slope takes in the leak of its 6 s: at most 6 * leak / 1000 KiB too much.
    slack_kb = 6 * leak_kb_s / 1000 * abs(span["conns"][1] - span["conns"][0]) + 2
    assert abs(g["rss_mb"] * 1024 - leak_kb_s * span["s"]) <= slack_kb + 0.06 * 1024


def test_a_node_restarted_or_without_samples_has_no_figures() -> None:
    restarted = [*node([20.0, 30.0], [5, 5]), {**node([40.0], [5])[0], "pid": 2}]
    assert cg.growth(restarted, 15.0, 60.0) == {}
    assert cg.growth(node([1.0, 20.0], [5, 5]), 15.0, 60.0) == {}  # one sample in the window
    assert cg.top({}, "rss_mb") is None
    assert cg.top({"n1": {"rss_mb": None}, "n2": {"rss_mb": -1.0}}, "rss_mb") == -1.0
