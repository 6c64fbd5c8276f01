"""Issue 2, point 1: `dlba node --config FILE --name NAME` as a real process.

A valid config serves plain HTTP and TLS on loopback in front of a real demo back end; every
kind of bad config exits 2 with one stderr line naming the file, the key and the reason, and
starts nothing.
"""

from __future__ import annotations

import asyncio
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import aiohttp
import pytest

from dlba.demo_backend import bound_port, start_demo_backend
from dlba.tls.certs import CertPaths
from tests.integration.loopback import free_port, make_certs, write_config

pytestmark = pytest.mark.timeout(120)

ROOT = Path(__file__).resolve().parents[2]
PYTHON = str(ROOT / ".venv" / "bin" / "python") if (ROOT / ".venv").exists() else sys.executable


def node_cmd(config: Path, name: str = "n1") -> list[str]:
    return [PYTHON, "-m", "dlba", "node", "--config", str(config), "--name", name]


async def wait_for_port(port: int, proc: asyncio.subprocess.Process, deadline_s: float) -> None:
    deadline = time.monotonic() + deadline_s
    while True:
        if proc.returncode is not None:
            raise AssertionError(f"node exited early with {proc.returncode}")
        try:
            _, w = await asyncio.open_connection("127.0.0.1", port)
        except OSError:
            if time.monotonic() > deadline:
                raise AssertionError(f"port {port} not open after {deadline_s} s") from None
            await asyncio.sleep(0.05)
            continue
        w.close()
        return


async def stop(proc: asyncio.subprocess.Process) -> int:
    if proc.returncode is None:
        os.kill(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 10)
        except TimeoutError:
            os.kill(proc.pid, signal.SIGKILL)
            await proc.wait()
            raise AssertionError("node did not stop on SIGTERM") from None
    return proc.returncode if proc.returncode is not None else -1


async def test_valid_config_serves_http_and_tls(tmp_path: Path) -> None:
    certs = make_certs(tmp_path / "certs")
    backend = await start_demo_backend("b1", "127.0.0.1", 0)
    try:
        http_port, https_port, admin_port = free_port(), free_port(), free_port()
        config = write_config(
            tmp_path, certs, [(1, f"127.0.0.1:{bound_port(backend)}")], http_port=http_port,
            https_port=https_port, admin_port=admin_port,
        )
        proc = await asyncio.create_subprocess_exec(
            *node_cmd(config), stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE,
        )
        try:
            await wait_for_port(http_port, proc, 20)
            await wait_for_port(https_port, proc, 20)
            from dlba.tls import context as tls

            client_ssl = tls.client_context(certs.ca_cert)
            timeout = aiohttp.ClientTimeout(total=10)
            async with aiohttp.ClientSession(timeout=timeout) as s:
                async with s.get(f"http://127.0.0.1:{http_port}/whoami") as r:
                    assert r.status == 200 and await r.text() == "b1"
                    assert r.headers["X-Backend"] == "b1"
                async with s.get(f"https://127.0.0.1:{https_port}/bytes/5000",
                                 ssl=client_ssl) as r:
                    assert r.status == 200 and len(await r.read()) == 5000
                async with s.get(f"https://localhost:{https_port}/whoami", ssl=client_ssl) as r:
                    assert await r.text() == "b1"
                async with s.get(f"http://127.0.0.1:{admin_port}/healthz") as r:
                    assert r.status == 200
        finally:
            rc = await stop(proc)
            assert proc.stderr is not None
            err = (await proc.stderr.read()).decode()
        assert rc == 0, err
        assert "event=node_started node=n1" in err
        # an ordinary start is news, not something to look into
        assert "INFO dlba.event event=node_started node=n1" in err
        assert "WARNING dlba.event" not in err, err
    finally:
        await backend.cleanup()


# --- bad configs --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def certs(tmp_path_factory: pytest.TempPathFactory) -> CertPaths:
    return make_certs(tmp_path_factory.mktemp("certs"))


def base_config(certs: CertPaths) -> str:
    return f"""
[cluster]
secret_file = "{certs.cluster_key}"

[[nodes]]
name = "n1"
address = "127.0.0.1"
listen = ["127.0.0.1:{free_port()}"]
listen_tls = ["127.0.0.1:{free_port()}"]

[tls]
cert = "{certs.node_cert}"
key = "{certs.node_key}"

[scheduling]
policy = "least_conn"

[admin]
listen = "127.0.0.1:{free_port()}"
token_file = "{certs.admin_token}"

[[backends]]
id = 1
address = "127.0.0.1:18081"

[[backends]]
id = 2
address = "127.0.0.1:18082"
"""


def one_replace(text: str, old: str, new: str) -> str:
    assert text.count(old) == 1, old
    return text.replace(old, new)


# name -> (edit of the base config text, key, words of the reason)
BAD = {
    "unknown-top-level-key": (lambda t: "colour = 1\n" + t, "colour", "unknown key"),
    "unknown-nested-key": (
        lambda t: one_replace(t, 'address = "127.0.0.1:18082"',
                              'address = "127.0.0.1:18082"\nwieght = 5'),
        "backends[1].wieght", "unknown key"),
    "unknown-section-key": (
        lambda t: one_replace(t, 'policy = "least_conn"', 'policy = "least_conn"\npolcy = 1'),
        "scheduling.polcy", "unknown key"),
    "wrong-type": (
        lambda t: one_replace(t, 'name = "n1"', 'name = "n1"\nweight = "heavy"'),
        "nodes[0].weight", "expected int"),
    "wrong-type-list": (
        lambda t: one_replace(t, '[tls]', '[proxy]\ntrusted_proxies = "127.0.0.1"\n\n[tls]'),
        "proxy.trusted_proxies", "list"),
    "bad-node-address": (
        lambda t: one_replace(t, 'address = "127.0.0.1"\n', 'address = "127.0.0.300"\n'),
        "nodes[0].address", "not an IPv4 address"),
    "bad-backend-address": (
        lambda t: one_replace(t, '"127.0.0.1:18082"', '"no port here"'),
        "backends[1].address", "host:port"),
    "bad-port": (
        lambda t: one_replace(t, '"127.0.0.1:18081"', '"127.0.0.1:70000"'),
        "backends[0].address", "bad port"),
    "missing-cert-file": (
        lambda t: re.sub(r'\ncert = "[^"]*"', '\ncert = "nowhere.pem"', t),
        "tls.cert", "file not found"),
    "unknown-policy": (
        lambda t: one_replace(t, 'policy = "least_conn"', 'policy = "random_guess"'),
        "scheduling.policy", "random_guess"),
    "duplicate-backend-id": (
        lambda t: one_replace(t, "id = 2", "id = 1"), "backends[1].id", "duplicate"),
    "pinned-port-unknown-node": (
        lambda t: t + '\n[[ports]]\nport = 8443\nrule = "node:n7"\n', "ports[0].rule", "n7"),
    "not-toml": (lambda t: "this is { not toml\n", "-", "not valid TOML"),
    "negative-timeout": (
        lambda t: t + "\n[proxy]\nheader_timeout_s = -1\n", "proxy.header_timeout_s", "> 0"),
}


def run_node(config: Path, name: str = "n1") -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        node_cmd(config, name), capture_output=True, text=True, timeout=60, cwd=ROOT,
    )


def assert_one_line_error(proc: subprocess.CompletedProcess[str], file: Path, key: str,
                          reason: str) -> None:
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert str(file) in line, line
    assert f": {key}: " in line, line
    assert reason in line, line


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_exits_2_with_one_line(tmp_path: Path, certs: CertPaths, case: str) -> None:
    edit, key, reason = BAD[case]
    base = base_config(certs)
    text = edit(base)
    assert text != base, "the edit changed nothing"
    config = tmp_path / f"{case}.toml"
    config.write_text(text)
    proc = run_node(config)
    assert_one_line_error(proc, config, key, reason)


def test_the_base_config_of_the_bad_cases_is_valid(tmp_path: Path, certs: CertPaths) -> None:
    # Without this, every bad case above could pass for an unrelated reason.
    from dlba.config import load_config

    config = tmp_path / "good.toml"
    config.write_text(base_config(certs))
    cfg = load_config(config)
    assert cfg.node("n1").address == "127.0.0.1"


def test_unknown_node_name_exits_2(tmp_path: Path, certs: CertPaths) -> None:
    config = tmp_path / "node.toml"
    config.write_text(base_config(certs))
    proc = run_node(config, "n9")
    assert_one_line_error(proc, config, "nodes", "n9")


def test_missing_config_file_exits_2(tmp_path: Path) -> None:
    config = tmp_path / "absent.toml"
    proc = run_node(config)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and str(config) in lines[0], proc.stderr
