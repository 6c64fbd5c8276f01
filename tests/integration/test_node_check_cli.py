"""`dlba node --config FILE --name NAME --check` as a real process on a standalone config.

Checks and exits without starting: nothing listens on the config's ports afterwards; a bad
config or a missing node name exits 2 naming the config as the missing piece.
"""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.loopback import free_port, make_certs, write_config

pytestmark = pytest.mark.timeout(60)

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable


def node_check(config: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([PYTHON, "-m", "dlba", "node", "--config", str(config), "--name", name,
                           "--check"], capture_output=True, text=True, timeout=30, check=False)


def test_standalone_config_is_ready_and_nothing_starts(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    http_port = free_port()
    config = write_config(tmp_path, certs, [(1, "127.0.0.1:8080")], http_port=http_port,
                          https_port=free_port(), admin_port=free_port())
    r = node_check(config, "n1")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "ok   config: valid"
    assert any(line.startswith("ok   capabilities:") for line in lines)
    assert lines[-1] == "dlba node --check: node n1 ready"
    with socket.socket() as s:  # it checked and left: the proxy port is still free
        s.bind(("127.0.0.1", http_port))


def test_missing_piece_is_named_with_exit_2(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    config = write_config(tmp_path, certs, [(1, "127.0.0.1:8080")], http_port=free_port(),
                          https_port=free_port(), admin_port=free_port())
    certs.admin_token.unlink()
    r = node_check(config, "n7")
    assert r.returncode == 2
    assert r.stdout.splitlines()[0] == "FAIL config: 2 problem(s)"
    assert "admin.token_file" in r.stdout and "no node named 'n7'" in r.stdout
    assert r.stderr.strip() == "dlba node --check: not ready: config"
