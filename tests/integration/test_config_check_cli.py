"""`dlba config check FILE` as a real process: validates without applying, like `nginx -t`.

Valid: exit 0, one "ok" line. Invalid: exit 2, every problem on its own stderr line naming the
file, the key and the reason, node-side files (secret, certificates) included.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.loopback import make_certs, write_config

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable


def check(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "dlba", "config", "check", *args],
                          capture_output=True, text=True, timeout=30, check=False)


def valid_config(tmp_path: Path) -> Path:
    certs = make_certs(tmp_path / "certs")
    return write_config(tmp_path, certs, [(1, "127.0.0.1:8080")], http_port=18080,
                        https_port=18443, admin_port=19000)


def test_valid_config_prints_one_ok_line(tmp_path: Path) -> None:
    config = valid_config(tmp_path)
    r = check(str(config))
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip().splitlines() == [f"{config}: ok"]
    r = check(str(config), "--name", "n1")
    assert r.returncode == 0, r.stderr


def test_every_problem_on_its_own_line_node_files_included(tmp_path: Path) -> None:
    config = valid_config(tmp_path)
    text = config.read_text()
    # Three problems at once: a bad weight, a missing secret file, a key that is not this cert's.
    (tmp_path / "certs" / "cluster.key").unlink()
    other = make_certs(tmp_path / "other")
    text = text.replace(f'key = "{tmp_path}/certs/node.key"', f'key = "{other.node_key}"')
    text += "weight = -3\n"
    config.write_text(text)
    r = check(str(config))
    assert r.returncode == 2
    assert r.stdout == ""
    lines = r.stderr.strip().splitlines()
    keys = {line.split(": ")[1] for line in lines}
    assert all(line.startswith(f"{config}: ") for line in lines), lines
    assert {"cluster.secret_file", "backends[0].weight", "tls.cert"} <= keys, lines
    assert len(lines) == 3, lines


def test_unknown_node_name_and_unreadable_file(tmp_path: Path) -> None:
    config = valid_config(tmp_path)
    r = check(str(config), "--name", "n9")
    assert r.returncode == 2
    assert "n9" in r.stderr and r.stderr.count("\n") == 1, r.stderr
    r = check(str(tmp_path / "missing.toml"))
    assert r.returncode == 2
    assert f"{tmp_path / 'missing.toml'}: -: cannot read" in r.stderr
