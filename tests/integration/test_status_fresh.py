"""`dlba status` right after traffic counts it: with `[proxy] workers = 2` the node asks its
workers for their counters when asked for its status, instead of showing their last periodic
report (which lagged up to a report interval behind)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.test_node_workers import admin, burst, node

__all__ = ["node"]  # the fixture, shared with the workers' tests
ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable


def cli_status(node: dict[str, object]) -> dict[str, Any]:
    out = subprocess.run(
        [PYTHON, "-m", "dlba", "status", "--json", "--admin",
         f"http://127.0.0.1:{node['admin']}", "--token", str(node["token"])],
        capture_output=True, text=True, timeout=30, check=True)
    doc: dict[str, Any] = json.loads(out.stdout)
    return doc


async def test_status_counts_the_requests_just_served(node: dict[str, object]) -> None:
    total = 0
    for n in (37, 1, 64):
        await burst(node["http"], n)
        total += n
        st: Any = admin(node, "/status")  # at once: no waiting for the workers' next report
        assert st["nodes"][0]["hits"] == total
        assert sum(b["hits"] for b in st["backends"]) == total
    await burst(node["http"], 9)
    doc = cli_status(node)
    assert sum(b["hits"] for b in doc["backends"]) == total + 9
