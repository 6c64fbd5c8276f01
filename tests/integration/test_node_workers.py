"""`[proxy] workers = 2`: two proxy processes share the listeners; the node's admin API sums
their counters, sends state changes to both, and replaces a worker that dies."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.integration.loopback import (
    free_port,
    make_certs,
    node_processes,
    wait_port,
    write_config,
)

REPO = Path(__file__).resolve().parents[2]


def children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False)
    return [int(x) for x in out.stdout.split()]


@pytest.fixture
def node(tmp_path: Path) -> Iterator[dict[str, object]]:
    certs = make_certs(tmp_path / "certs")
    bports = [free_port(), free_port()]
    hport, sport, aport = free_port(), free_port(), free_port()
    cfg = write_config(
        tmp_path, certs, [(1, f"127.0.0.1:{bports[0]}"), (2, f"127.0.0.1:{bports[1]}")],
        http_port=hport, https_port=sport, admin_port=aport,
        extra="[proxy]\nworkers = 2\n",
    )
    with node_processes(cfg, bports, [hport, aport], stop_wait_s=15) as pid:
        yield {"pid": pid, "http": hport, "https": sport, "admin": aport,
               "token": certs.admin_token.read_text().strip(), "ca": certs.ca_cert,
               "tmp": tmp_path}


def admin(node: dict[str, object], path: str, method: str = "GET") -> dict[str, object]:
    req = urllib.request.Request(f"http://127.0.0.1:{node['admin']}{path}", method=method,
                                 headers={"Authorization": f"Bearer {node['token']}"})
    with urllib.request.urlopen(req, timeout=5) as r:
        result: dict[str, object] = json.loads(r.read())
        return result


async def burst(port: object, n: int) -> list[str]:
    async def one(s: aiohttp.ClientSession) -> str:
        async with s.get(f"http://127.0.0.1:{port}/whoami") as r:
            assert r.status == 200
            return await r.text()

    # separate connections, so the kernel spreads them over both workers
    conn = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession(connector=conn) as s:
        return list(await asyncio.gather(*(one(s) for _ in range(n))))


async def wait_for_hits(node: dict[str, object], n: int) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while True:
        st = admin(node, "/status")
        if st["nodes"][0]["hits"] == n:  # type: ignore[index]
            return st
        assert loop.time() < deadline, st["nodes"]
        await asyncio.sleep(0.1)


async def test_two_workers_share_the_load_and_report_to_the_node(
    node: dict[str, object]
) -> None:
    pid = node["pid"]
    assert isinstance(pid, int)
    workers = children(pid)
    assert len(workers) == 2
    await burst(node["http"], 200)
    st = await wait_for_hits(node, 200)
    backends = st["backends"]
    assert isinstance(backends, list)
    assert sum(b["hits"] for b in backends) == 200
    # a state change made on the node's admin API reaches every worker
    admin(node, "/backends/1/disable", "POST")
    await asyncio.sleep(0.3)
    assert set(await burst(node["http"], 60)) == {"b2"}
    # a worker that dies is replaced, and service never stops
    os.kill(workers[0], signal.SIGKILL)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10

    def replaced() -> bool:
        ws = admin(node, "/status")["workers"]
        assert isinstance(ws, list)
        return all(w["ready"] for w in ws) and workers[0] not in [w["pid"] for w in ws]

    while not replaced():
        assert loop.time() < deadline, "worker not replaced"
        await asyncio.sleep(0.1)
    assert len(children(pid)) == 2
    assert set(await burst(node["http"], 40)) == {"b2"}


def test_tls_sessions_resume_on_every_worker(node: dict[str, object]) -> None:
    """One ticket, many new connections spread over two worker processes: every one resumes
    (each worker with its own OpenSSL key would fail about half of them)."""
    tmp = node["tmp"]
    assert isinstance(tmp, Path)
    sess = tmp / "sess.pem"
    addr = f"127.0.0.1:{node['https']}"
    base = ["openssl", "s_client", "-connect", addr, "-CAfile", str(node["ca"]), "-tls1_3",
            "-ign_eof"]
    # a request, so the connection lives until the TLS 1.3 ticket has arrived
    req = b"GET /whoami HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    first = subprocess.run([*base, "-sess_out", str(sess)], input=req, capture_output=True,
                           timeout=20, check=False)
    assert first.returncode == 0 and sess.exists(), first.stderr[-500:]
    reused = 0
    for _ in range(12):
        r = subprocess.run([*base, "-sess_in", str(sess)], input=req, capture_output=True,
                           timeout=20, check=False)
        reused += b"Reused, TLSv1.3" in r.stdout
    assert reused == 12, reused


async def test_listener_change_replaces_workers_gracefully(node: dict[str, object]) -> None:
    """A pushed config that moves the HTTP listener: new workers serve the new port, the old
    ones finish the request they are serving and exit."""
    tmp = node["tmp"]
    assert isinstance(tmp, Path)
    old_port, new_port = node["http"], free_port()
    before = {w["pid"] for w in admin(node, "/status")["workers"]}  # type: ignore[union-attr]
    text = (tmp / "node.toml").read_text().replace(f"127.0.0.1:{old_port}",
                                                    f"127.0.0.1:{new_port}")
    async with aiohttp.ClientSession() as s:
        slow = asyncio.ensure_future(s.get(f"http://127.0.0.1:{old_port}/slow?ms=1500"))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5
        while not any(b["open_connections"]  # type: ignore[index]
                      for b in admin(node, "/status")["backends"]):  # type: ignore[union-attr]
            assert loop.time() < deadline, "the slow request never reached a back end"
            await asyncio.sleep(0.05)

        def push() -> dict[str, object]:
            req = urllib.request.Request(
                f"http://127.0.0.1:{node['admin']}/config", data=text.encode(), method="PUT",
                headers={"Authorization": f"Bearer {node['token']}"})
            with urllib.request.urlopen(req, timeout=10) as r:
                result: dict[str, object] = json.loads(r.read())
                return result

        assert (await asyncio.to_thread(push))["config_version"] == 2
        resp = await slow
        assert resp.status == 200 and b"1500" in await resp.read()
        await wait_port(new_port)
        assert len(await burst(new_port, 20)) == 20
    deadline = loop.time() + 10
    while True:
        ws = admin(node, "/status")["workers"]
        assert isinstance(ws, list)
        now = {w["pid"] for w in ws}
        if not now & before and all(w["ready"] for w in ws):
            break
        assert loop.time() < deadline, ws
        await asyncio.sleep(0.1)
    with pytest.raises(aiohttp.ClientError):
        await burst(old_port, 1)
