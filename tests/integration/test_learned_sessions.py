"""A session id issued by a back end is learned by the node that saw it issued and honoured by
every node within a second, over HTTP and HTTPS, without the persistence cookie; also when the
nodes run `[proxy] workers = 2` (learned in one worker, used by the other workers and nodes),
and by a node that starts later (it pulls what its peers know)."""

from __future__ import annotations

import asyncio
import ssl
from pathlib import Path

import aiohttp

from dlba.config import load_config
from dlba.node import NodeRuntime
from dlba.scheduling.cookie_injection import find_cookie
from dlba.scheduling.hash_ring import HashRing
from tests.integration.config_array import ConfigArray, config_array

BACKENDS = ("b1", "b2", "b3")


def _client(arr: ConfigArray) -> aiohttp.ClientSession:
    # A new connection per request (the kernel spreads them over workers), no cookie jar: the
    # client sends exactly the cookies the test names, never DLBASERVER.
    tls = ssl.create_default_context(cafile=str(arr.certs.ca_cert))
    conn = aiohttp.TCPConnector(force_close=True, ssl=tls)
    return aiohttp.ClientSession(connector=conn, cookie_jar=aiohttp.DummyCookieJar())


def _https(arr: ConfigArray, name: str) -> str:
    return f"https://{arr.address(name)}:{arr.ports[name].https}"


async def _login_off_the_ring(arr: ConfigArray, s: aiohttp.ClientSession, name: str
                              ) -> tuple[str, str]:
    """Log in over HTTPS until the back end that issued the session is not the one the
    session-id hash ring picks for it (there, the old code would be right by luck)."""
    ring = HashRing({i + 1: 100 for i in range(len(BACKENDS))})
    for _ in range(40):
        async with s.get(_https(arr, name) + "/login") as r:
            assert r.status == 200
            issuer = r.headers["X-Backend"]
            sid = find_cookie("; ".join(r.headers.getall("Set-Cookie")).replace(
                ", ", "; "), "JSESSIONID")
        assert sid
        if f"b{ring.get(sid)}" != issuer:
            return sid, issuer
    raise AssertionError("every login landed where the ring hashes it")


async def _every_node_sends_it_home(arr: ConfigArray, s: aiohttp.ClientSession, sid: str,
                                    issuer: str, names: list[str], repeat: int) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 1.0  # "every node knows it within a second"
    while True:
        seen: dict[str, str] = {}
        for name in names:
            for base in (arr.url(name), _https(arr, name)):
                for k in range(repeat):
                    async with s.get(base + "/whoami", headers={"Cookie": f"JSESSIONID={sid}"}
                                     ) as r:
                        seen[f"{base} #{k}"] = r.headers["X-Backend"]
            async with s.get(arr.url(name) + f"/whoami;jsessionid={sid}") as r:
                seen[f"{name} url"] = r.headers["X-Backend"]
        wrong = {k: v for k, v in seen.items() if v != issuer}
        if not wrong:
            return
        assert loop.time() < deadline, f"issued by {issuer}, but: {wrong}"
        await asyncio.sleep(0.05)


async def test_a_learned_session_reaches_its_issuer_through_every_node(tmp_path: Path) -> None:
    async with config_array(tmp_path, n_nodes=3, backend_names=BACKENDS,
                            initial=(1, 2, 3)) as arr, _client(arr) as s:
        sid, issuer = await _login_off_the_ring(arr, s, "n1")
        await _every_node_sends_it_home(arr, s, sid, issuer, arr.names, repeat=1)
        status = await arr.admin("n2", "/status")
        assert status["learned_sessions"] >= 1
        async with aiohttp.ClientSession() as a, a.get(
            arr.admin_url("n1") + "/metrics", headers={"Authorization": f"Bearer {arr.token}"}
        ) as r:
            text = await r.text()
        assert 'dlba_learned_session_selections_total{node="n1"}' in text
        assert 'dlba_sessions_learned_total{node="n1"}' in text


async def test_workers_share_learned_sessions_and_a_late_node_pulls_them(
    tmp_path: Path,
) -> None:
    async with config_array(tmp_path, n_nodes=3, backend_names=BACKENDS, initial=(1, 2, 3),
                            start=[]) as arr:
        for name in arr.names:  # every node with two proxy worker processes
            path = arr.node_dir(name) / "cluster.toml"
            path.write_text(path.read_text().replace("[proxy]\n", "[proxy]\nworkers = 2\n"))
        for name in ("n1", "n2"):
            node = NodeRuntime(load_config(arr.node_dir(name) / "cluster.toml"), name)
            await node.start()
            arr.nodes[name] = node

        async def ready(*names: str) -> None:
            for name in names:
                while not all(w["ready"] for w in (await arr.admin(name, "/status"))["workers"]):
                    await asyncio.sleep(0.1)

        await asyncio.wait_for(ready("n1", "n2"), 15)
        async with _client(arr) as s:
            sid, issuer = await _login_off_the_ring(arr, s, "n2")
            await _every_node_sends_it_home(arr, s, sid, issuer, ["n1", "n2"], repeat=4)
            late = NodeRuntime(load_config(arr.node_dir("n3") / "cluster.toml"), "n3")
            await late.start()
            arr.nodes["n3"] = late

            async def n3_knows() -> None:
                while (await arr.admin("n3", "/status"))["learned_sessions"] < 1:
                    await asyncio.sleep(0.1)

            await asyncio.wait_for(n3_knows(), 10)
            await asyncio.wait_for(ready("n3"), 15)
            await _every_node_sends_it_home(arr, s, sid, issuer, ["n3"], repeat=4)
