"""Balancing policies: never a non-accepting back end, least_conn picks a minimum, smooth WRR
is exactly proportional over a cycle, response_time tries the untried first, p2c is the lighter
of two, url_hash is stable."""

from __future__ import annotations

import random
from collections import Counter
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlba.config import BackendConfig, HostPort
from dlba.scheduling.policies import POLICY_NAMES, WeightedRoundRobin, make_policy
from dlba.scheduling.web_server_status_table import WebServerStatus, WebServerStatusTable


def rows_from(specs: list[tuple[int, int, str]]) -> list[WebServerStatus]:
    """specs: (weight, open_connections, mode) with mode in up/drain/down/zero."""
    cfg = [BackendConfig(i + 1, HostPort(f"10.0.0.{i + 1}", 80), max(1, w))
           for i, (w, _, _) in enumerate(specs)]
    t = WebServerStatusTable(cfg, 1, 1.0, 8.0)
    for row, (_, open_, mode) in zip(t.rows, specs, strict=True):
        row.open_connections = open_
        if mode == "drain":
            t.set_admin(row.id, "drain")
        elif mode == "down":
            t.on_connect_failure(row.id, 0.0)
        elif mode == "zero":
            row.agent_weight_pct = 0
    return t.rows


row_specs = st.lists(
    st.tuples(st.integers(1, 50), st.integers(0, 20),
              st.sampled_from(["up", "up", "up", "drain", "down", "zero"])),
    min_size=1, max_size=8)


def load(r: WebServerStatus) -> Fraction:
    return Fraction(r.open_connections + 1, r.effective_weight)


@given(row_specs, st.sampled_from(POLICY_NAMES), st.integers(0, 2**32), st.text(max_size=20))
def test_never_picks_non_accepting(specs: list[tuple[int, int, str]], name: str, seed: int,
                                   key: str) -> None:
    rows = rows_from(specs)
    policy = make_policy(name, random.Random(seed))
    for _ in range(5):
        chosen = policy.choose(rows, key)
        if any(r.accepts_new for r in rows):
            assert chosen is not None and chosen.accepts_new
        else:
            assert chosen is None


@given(row_specs)
def test_least_conn_picks_a_minimum(specs: list[tuple[int, int, str]]) -> None:
    rows = rows_from(specs)
    accepting = [r for r in rows if r.accepts_new]
    policy = make_policy("least_conn")
    chosen = policy.choose(rows, "")
    if not accepting:
        assert chosen is None
        return
    assert chosen is not None
    assert load(chosen) == min(load(r) for r in accepting)


def test_least_conn_rotates_ties() -> None:
    rows = rows_from([(10, 0, "up")] * 3)
    policy = make_policy("least_conn")
    picks = Counter(policy.choose(rows, "").id for _ in range(30))  # type: ignore[union-attr]
    assert set(picks.values()) == {10}


@given(st.lists(st.integers(1, 20), min_size=1, max_size=6), st.integers(1, 3))
def test_weighted_rr_exact_over_cycle(weights: list[int], cycles: int) -> None:
    rows = rows_from([(w, 0, "up") for w in weights])
    policy = make_policy("weighted_rr")
    picks = Counter(policy.choose(rows, "").id for _ in range(sum(weights) * cycles))  # type: ignore[union-attr]
    assert picks == Counter({r.id: r.weight * cycles for r in rows})


def test_weighted_rr_is_smooth() -> None:
    rows = rows_from([(5, 0, "up"), (1, 0, "up"), (1, 0, "up")])
    policy = WeightedRoundRobin()
    seq = [policy.choose(rows, "").id for _ in range(7)]  # type: ignore[union-attr]
    assert seq == [1, 1, 2, 1, 3, 1, 1]


def test_response_time_prefers_untried_then_fastest() -> None:
    rows = rows_from([(10, 0, "up"), (10, 0, "up"), (10, 0, "up")])
    for r, ms in zip(rows[:2], (50.0, 5.0), strict=True):
        r.avg_response_ms, r.responses = ms, 3
    policy = make_policy("response_time")
    assert policy.choose(rows, "") is rows[2]
    rows[2].avg_response_ms, rows[2].responses = 20.0, 1
    assert policy.choose(rows, "") is rows[1]
    # Load counts too: 5 ms with 9 open is worse than 20 ms idle.
    rows[1].open_connections = 9
    assert policy.choose(rows, "") is rows[2]


@given(row_specs, st.integers(0, 2**32))
def test_p2c_never_picks_the_most_loaded_of_distinct_loads(
        specs: list[tuple[int, int, str]], seed: int) -> None:
    rows = rows_from(specs)
    accepting = [r for r in rows if r.accepts_new]
    chosen = make_policy("p2c", random.Random(seed)).choose(rows, "")
    if len(accepting) >= 2:
        assert chosen is not None
        worst = max(load(r) for r in accepting)
        if sum(load(r) == worst for r in accepting) == 1:
            assert load(chosen) < worst


def test_p2c_is_deterministic_with_a_seeded_rng() -> None:
    rows = rows_from([(10, i, "up") for i in range(5)])
    a = [make_policy("p2c", random.Random(7)).choose(rows, "") for _ in range(3)]
    b = [make_policy("p2c", random.Random(7)).choose(rows, "") for _ in range(3)]
    assert a == b


@given(st.lists(st.text(min_size=1, max_size=30), min_size=1, max_size=30))
def test_url_hash_is_stable_per_key(keys: list[str]) -> None:
    rows = rows_from([(10, 0, "up")] * 4)
    p1, p2 = make_policy("url_hash"), make_policy("url_hash")
    for k in keys:
        c1, c2 = p1.choose(rows, k), p2.choose(list(reversed(rows)), k)
        assert c1 is not None and c2 is not None and c1.id == c2.id


def test_unknown_policy() -> None:
    with pytest.raises(ValueError):
        make_policy("random")
