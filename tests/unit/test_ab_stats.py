"""bench.ab's figures: per-round ratios against the first tree and the reference, and names."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bench.ab_rows import ROWS, parse_rows
from bench.ab_stats import (
    format_row,
    paired_ratios,
    spread,
    summarise_row,
    unique_names,
    verdict,
)

rates = st.floats(min_value=1.0, max_value=1e6, allow_nan=False)


def test_ratios_are_taken_within_each_round() -> None:
    # Drift that doubles every figure in round 2 cancels in the per-round ratio.
    runs = {"old": [100.0, 200.0, 110.0], "new": [110.0, 220.0, 121.0],
            "haproxy": [200.0, 400.0, 220.0]}
    s = summarise_row(runs, ["old", "new"], "haproxy")
    assert s["vs_first"]["new"]["median"] == pytest.approx(1.1)
    assert s["vs_first"]["new"]["min"] == pytest.approx(1.1)
    assert s["vs_first"]["new"]["verdict"] == "higher in every round"
    assert s["vs_ref"]["old"]["median"] == pytest.approx(0.5)
    assert s["vs_ref"]["new"]["max"] == pytest.approx(0.55)
    assert s["per_cpu_s"] == {"old": 110.0, "new": 121.0, "haproxy": 220.0}
    assert "old" not in s["vs_first"] and "haproxy" not in s["vs_ref"]


def test_verdict_says_when_rounds_disagree() -> None:
    assert verdict(spread([0.97, 1.02, 1.01]), 3) == "rounds disagree: within this run's noise"
    assert verdict(spread([0.9, 0.95, 0.9]), 3) == "lower in every round"
    assert verdict(spread([0.9]), 1) == "1 round(s): too few to judge"


@given(st.lists(st.tuples(rates, rates), min_size=1, max_size=12))
def test_spread_brackets_its_median(pairs: list[tuple[float, float]]) -> None:
    r = paired_ratios([a for a, _ in pairs], [b for _, b in pairs])
    s = spread(r)
    assert len(r) == len(pairs)
    assert s.low <= s.median <= s.high


@given(st.lists(rates, min_size=1, max_size=8))
def test_a_tree_against_itself_is_one(xs: list[float]) -> None:
    s = summarise_row({"a": xs, "b": list(xs), "haproxy": xs}, ["a", "b"], "haproxy")
    assert s["vs_first"]["b"]["min"] == s["vs_first"]["b"]["max"] == 1.0
    assert any("x1.000" in line for line in format_row("r", "req/CPU-s", s, ["a", "b"], "h"))


def test_an_aa_run_gets_distinct_names() -> None:
    assert unique_names(["HEAD", "HEAD", "x", "HEAD"]) == ["HEAD", "HEAD#2", "x", "HEAD#3"]


def test_rows_parse() -> None:
    assert parse_rows("all") == list(ROWS)
    assert set(ROWS) >= {"http_rps", "https_rps", "throughput_100k", "tls_handshakes"}
    assert parse_rows("tls_handshakes, http_rps") == ["tls_handshakes", "http_rps"]
    with pytest.raises(ValueError, match="unknown rows"):
        parse_rows("http_rps,nope")
