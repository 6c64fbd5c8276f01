"""The top-level certs/ folder: `dlba certs init`'s default output, its secrets git-ignored."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable
MADE = ["ca.pem", "ca.key", "node.pem", "node.key", "cluster.key", "admin.token"]


def test_certs_init_writes_to_certs_by_default(tmp_path: Path) -> None:
    r = subprocess.run([PYTHON, "-m", "dlba", "certs", "init"], cwd=tmp_path, capture_output=True,
                       text=True, timeout=60, check=False, env={"PYTHONPATH": str(ROOT)})
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in (tmp_path / "certs").iterdir()) == sorted(MADE)


def test_only_the_readme_of_certs_is_tracked() -> None:
    readme = (ROOT / "certs" / "README.md").read_text()
    assert all(name in readme for name in MADE)
    paths = [f"certs/{name}" for name in [*MADE, "README.md"]]
    r = subprocess.run(["git", "check-ignore", "--no-index", *paths], cwd=ROOT,
                       capture_output=True, text=True, timeout=30, check=False)
    assert sorted(r.stdout.split()) == sorted(f"certs/{n}" for n in MADE)
