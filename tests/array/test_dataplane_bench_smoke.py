"""Smoke test of bench/dataplane_pps.py: a very short run end to end, well-formed JSON, clean-up.

Not a performance test: the figures are only checked to be there, finite and positive.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
from pyroute2 import netns

from tests.array.conftest import require_root

pytestmark = pytest.mark.array

ROOT = Path(__file__).resolve().parents[2]
REQUIRED = {
    "ebpf_pps",
    "afpacket_pps",
    "routing_pps",
    "ebpf_ratio",
    "afpacket_ratio",
    "ebpf_cpu_per_100k",
    "afpacket_cpu_per_100k",
    "bpf_ns_per_packet",
}
POSITIVE = {"ebpf_pps", "afpacket_pps", "routing_pps", "ebpf_ratio", "afpacket_ratio"}


def bench_namespaces() -> set[str]:
    return {n for n in netns.listnetns() if n.startswith("dlbp")}


def test_dataplane_bench_runs_and_writes_figures(tmp_path: Path) -> None:
    require_root()
    before = bench_namespaces()
    out = tmp_path / "dataplane_results.json"
    cmd = [sys.executable, "-m", "bench.dataplane_pps", "--duration", "0.4", "--runs", "1"]
    res = subprocess.run(
        [*cmd, "--bpf-repeat", "1000", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    assert bench_namespaces() <= before, "the bench left namespaces behind"

    figures = json.loads(out.read_text())
    assert isinstance(figures, list)
    by_name = {f["figure"]: f for f in figures}
    assert len(by_name) == len(figures), "duplicate figure names"
    assert set(by_name) >= REQUIRED, REQUIRED - set(by_name)
    for f in figures:
        assert isinstance(f["unit"], str) and f["unit"]
        assert isinstance(f["runs"], int) and f["runs"] >= 1
        if "value" in f:
            values = [f["value"]]
        else:
            values = [f["median"], f["min"], f["max"]]
            assert f["min"] <= f["median"] <= f["max"], f
        assert all(isinstance(v, int | float) and math.isfinite(v) for v in values), f
        if f["figure"] in POSITIVE:
            assert min(values) > 0, f
    assert "ebpf_pps" in res.stdout  # the table was printed
