"""`python -m bench.ab` runs a tiny A/A (this tree twice, 1 round, 1 s per row) and writes
well-formed figures for every row. Not a performance test: no figure is compared with a target.
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
ROWS = {"http_rps", "https_rps", "throughput_100k", "tls_handshakes", "tls_resumed", "h2_rps",
        "h2_rps_1stream"}

pytestmark = pytest.mark.timeout(150)


def test_bench_ab_aa_smoke_run_writes_every_row(tmp_path: Path) -> None:
    missing = [t for t in ("haproxy", "nginx", "wrk", "openssl", "h2load")
               if shutil.which(t) is None]
    if missing:
        pytest.fail(f"{', '.join(missing)} missing: `make test` and `make bench` install them")
    out = tmp_path / "ab.json"
    r = subprocess.run(
        [PYTHON, "-m", "bench.ab", f"old={ROOT}", f"new={ROOT}", "--no-build", "--rounds", "1",
         "--duration", "1", "--pause", "0.1", "--warmup", "0", "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=140,
    )
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    res = json.loads(out.read_text())
    assert set(res["trees"]) == {"old", "new"}
    assert res["trees"]["old"]["path"] == res["trees"]["new"]["path"] == str(ROOT)
    assert len(res["loadavg"]["rounds"]) == 1
    by_row = {e["row"]: e for e in res["rows"]}
    assert set(by_row) == ROWS
    for name, e in by_row.items():
        assert e["unit"].endswith("/CPU-s")
        for t in ("old", "new", "haproxy"):
            v = e["per_cpu_s"][t]
            assert isinstance(v, (int, float)) and math.isfinite(v) and v > 0, (name, t, v)
            assert len(e["runs"][t]) == 1 and e["rate_per_s"][t][0] > 0
        vs = e["vs_first"]["new"]
        assert vs["median"] == pytest.approx(e["runs"]["new"][0] / e["runs"]["old"][0],
                                             rel=0.01)
        assert set(e["vs_ref"]) == {"old", "new"}
    # The summary is printed, row by row, and says this was an A/A run.
    assert "vs old" in r.stdout and "vs haproxy" in r.stdout and "tls_handshakes" in r.stdout
    assert "A/A run" in r.stdout
