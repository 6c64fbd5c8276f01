"""The node's latency histogram: each observation lands in the bucket Prometheus's `le`
bounds give it (the first bound at or above it; above the last: +Inf)."""

from __future__ import annotations

from bisect import bisect_left

from hypothesis import given
from hypothesis import strategies as st

from dlba.proxy.node_stats import LATENCY_BUCKETS, LatencyHistogram


@given(st.lists(st.one_of(st.floats(0.0, 10.0), st.sampled_from(LATENCY_BUCKETS)),
                max_size=50))
def test_every_observation_lands_in_its_le_bucket(values: list[float]) -> None:
    h = LatencyHistogram()
    expected = [0] * (len(LATENCY_BUCKETS) + 1)
    for v in values:
        h.observe(v)
        expected[bisect_left(LATENCY_BUCKETS, v)] += 1
    assert h.counts == expected and h.count == len(values)
    assert h.cumulative()[-1] == ("+Inf", len(values))
