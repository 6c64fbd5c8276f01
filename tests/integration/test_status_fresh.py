"""`dlba status` right after traffic counts it: with `[proxy] workers = 2` the node asks its
workers for their counters when asked for its status, instead of showing their last periodic
report (which lagged up to a report interval behind)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

from tests.integration.test_node_workers import admin, burst, node

__all__ = ["node"]  # the fixture, shared with the workers' tests
ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable


def cli_status(node: dict[str, object], *flags: str) -> str:
    out = subprocess.run(
        [PYTHON, "-m", "dlba", "status", *flags, "--admin",
         f"http://127.0.0.1:{node['admin']}", "--token", str(node["token"])],
        capture_output=True, text=True, timeout=30, check=True,
        env={**os.environ, "COLUMNS": "80", "LINES": "50"})
    return out.stdout


async def test_status_counts_the_requests_just_served(node: dict[str, object]) -> None:
    total = 0
    for n in (37, 1, 64):
        await burst(node["http"], n)
        total += n
        st: Any = admin(node, "/status")  # at once: no waiting for the workers' next report
        assert st["nodes"][0]["hits"] == total
        assert sum(b["hits"] for b in st["backends"]) == total
    await burst(node["http"], 9)
    doc = json.loads(cli_status(node, "--json"))
    assert sum(b["hits"] for b in doc["backends"]) == total + 9
    assert [b["state"] for b in doc["backends"]] == ["up", "up"]
    admin(node, "/backends/1/disable", "POST")
    admin(node, "/backends/2/drain", "POST")
    text = cli_status(node)
    assert "state=disabled" in text and "state=draining" in text, text
    assert max(len(line) for line in text.splitlines()) <= 80, text
