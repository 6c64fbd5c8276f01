"""The chaos soak's pure parts: its fault schedule and how records become figures."""

from __future__ import annotations

import itertools

from hypothesis import given
from hypothesis import strategies as st

from bench import chaos_figures as cf
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
    samples = [{"t": t, "node": "n1", "pid": 7, "rss_kb": 1024 * t, "fds": 10 + t}
               for t in (1.0, 6.0, 9.0)] + [{"t": 9.0, "node": "n2", "pid": 8, "rss_kb": 0,
                                             "fds": 0}, {"t": 9.5, "node": "n2", "pid": 9,
                                                         "rss_kb": 9e9, "fds": 999}]
    f = cf.figures(load, [], {"roles": [], "tables": TABLES, "samples": samples}, 10.0, 5.0)
    assert (f["requests"], f["lost_idempotent"], f["max_gap_s"]) == (5, 1, 5.0)
    assert (f["rss_growth_mb"], f["fd_growth"]) == (3.0, 3)  # n2 was restarted: not counted
    assert f["detail"]["failures"][0]["nodes"] == ["n2"]
