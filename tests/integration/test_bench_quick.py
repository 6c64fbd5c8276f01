"""Issue 7: `bench/` runs (QUICK with a short duration) and writes well-formed results.

This is not a performance test: no figure is compared with a target here. It checks that the
harness starts the back end and the three proxies, measures every figure, and writes
`results.json` with the six names outside checks read, positive numbers and
ratio = dlba / haproxy.
"""

from __future__ import annotations

import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
FIGURES = {"http_rps", "https_rps", "tls_handshakes", "throughput_100k", "p99_fixed_rate_ms",
           "idle_rss_mb"}

pytestmark = pytest.mark.timeout(170)


def test_bench_quick_writes_well_formed_results(tmp_path: Path) -> None:
    missing = [t for t in ("haproxy", "nginx", "wrk", "openssl") if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: `make test` and `make bench` install them")
    out = tmp_path / "results.json"
    r = subprocess.run(
        [PYTHON, "-m", "bench.run", "--quick", "--duration", "1", "--idle-conns", "1000",
         "--pause", "0.2", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=160,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert isinstance(res, list)
    by_name = {e["figure"]: e for e in res}
    assert set(by_name) >= FIGURES, sorted(by_name)
    for name in FIGURES:
        e = by_name[name]
        assert isinstance(e["unit"], str) and e["unit"]
        for key in ("dlba", "haproxy", "nginx", "ratio", "ratio_cpu"):
            v = e[key]
            assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (name, key, v)
        assert e["ratio"] == pytest.approx(e["dlba"] / e["haproxy"], rel=0.01, abs=0.002), e
        for key in ("min", "max"):
            assert set(e[key]) >= {"dlba", "haproxy", "nginx"}
            assert e["min"]["dlba"] <= e["dlba"] <= e["max"]["dlba"]
        assert len(e["runs"]["dlba"]) >= 1
    # The rate figures are also given per CPU-second of each proxy's process tree.
    for name in ("http_rps", "https_rps", "tls_handshakes", "throughput_100k"):
        e = by_name[name]
        p = e["per_cpu_s"]
        assert all(p[t] > 0 for t in ("dlba", "haproxy", "nginx"))
        assert e["ratio_cpu"] == pytest.approx(p["dlba"] / p["haproxy"], rel=0.01, abs=0.002)
    # The table is printed.
    assert "ratio_cpu" in r.stdout and "http_rps" in r.stdout
    one = by_name["tls_handshakes"]["one_process_node"]  # workers = 1 against nbthread 1
    assert one["per_cpu_s"] > 0 and one["haproxy_1thread_per_cpu_s"] > 0
    assert one["ratio_cpu"] == pytest.approx(
        one["per_cpu_s"] / one["haproxy_1thread_per_cpu_s"], rel=0.01)
