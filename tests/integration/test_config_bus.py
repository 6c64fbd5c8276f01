"""The config bus with a real redis-server: push through it, polling, and redis going away."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import aiohttp
import pytest
import redis

from dlba.config import bus as config_bus
from dlba.config.push import push_main
from tests.integration.config_array import ConfigArray, config_array
from tests.integration.loopback import free_port


@pytest.fixture(autouse=True)
def _redis_installed() -> None:
    if shutil.which("redis-server") is None:
        pytest.fail("redis-server missing: `make install` installs it")


@dataclass
class RedisServer:
    port: int
    data: Path
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        # appendonly: a redis that comes back still knows the committed version
        self.proc = subprocess.Popen(
            ["redis-server", "--bind", "127.0.0.1", "--port", str(self.port), "--save", "",
             "--appendonly", "yes", "--dir", str(self.data)],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", self.port), 0.2).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("redis-server did not start")

    def kill(self) -> None:
        if self.proc is not None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)
            self.proc = None

    def client(self) -> redis.Redis:
        return redis.Redis.from_url(self.url, decode_responses=True)


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    data = tmp_path / "redis"
    data.mkdir()
    server = RedisServer(free_port(), data)
    server.start()
    try:
        yield server
    finally:
        server.kill()


@pytest.fixture(autouse=True)
def fast_poll(monkeypatch: pytest.MonkeyPatch) -> None:
    # the real timing knobs, shortened so the tests take seconds
    monkeypatch.setattr(config_bus, "POLL_S", 0.5)
    monkeypatch.setattr(config_bus, "RETRY_S", 0.2)


async def push(path: Path, *extra: str) -> int:
    return await asyncio.to_thread(push_main, [str(path), *extra])


async def wait_versions(arr: ConfigArray, want: int, timeout: float = 10.0) -> dict[str, int]:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        got = {n: node.config_version for n, node in arr.nodes.items()}
        if all(v == want for v in got.values()) or asyncio.get_running_loop().time() > deadline:
            return got
        await asyncio.sleep(0.05)


async def bus_up(arr: ConfigArray, timeout: float = 10.0) -> bool:
    deadline = asyncio.get_running_loop().time() + timeout
    while asyncio.get_running_loop().time() < deadline:
        buses = [n.reloader.bus for n in arr.nodes.values()]
        if all(b is not None and b.up for b in buses):
            return True
        await asyncio.sleep(0.05)
    return False


async def test_push_through_redis(tmp_path: Path, redis_server: RedisServer) -> None:
    async with config_array(tmp_path, redis=redis_server.url) as arr:
        assert await bus_up(arr)
        text = arr.render([arr.backend(3, "b3")], policy="weighted_rr")
        assert await push(arr.push_file(text)) == 0
        # the push returns once the version is committed in redis; nodes apply on the message
        assert await wait_versions(arr, 2) == {"n1": 2, "n2": 2, "n3": 2}
        for name in arr.names:
            assert await arr.whoami(name) == {"b3"}
        r = redis_server.client()
        assert r.get(config_bus.VERSION_KEY) == "2"
        assert r.hget(config_bus.TEXT_HASH, "text") == text
        assert r.hgetall(config_bus.NODES_HASH) == {"n1": "2", "n2": "2", "n3": "2"}


async def test_a_node_that_cannot_stage_aborts_the_bus_push(
    tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str],
) -> None:
    async with config_array(tmp_path, redis=redis_server.url) as arr:
        assert await bus_up(arr)
        arr.add_file("certs2/node.pem", arr.certs.node_cert, ["n1", "n3"])
        arr.add_file("certs2/node.key", arr.certs.node_key, ["n1", "n3"])
        text = arr.render([arr.backend(3, "b3")], tls_cert="certs2/node.pem",
                          tls_key="certs2/node.key")
        assert await push(arr.push_file(text)) == 2  # refused for its content
        err = capsys.readouterr().err
        assert "node n2" in err and "tls.cert" in err and "aborted" in err
        await asyncio.sleep(1.5)  # three polls: nobody picks anything up later either
        assert {n: node.config_version for n, node in arr.nodes.items()} == {
            "n1": 1, "n2": 1, "n3": 1}
        assert all(node.reloader.staged is None for node in arr.nodes.values())
        assert redis_server.client().get(config_bus.VERSION_KEY) is None


async def test_a_bus_refusal_lists_every_problem_of_the_node(
    tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str],
) -> None:
    async with config_array(tmp_path, redis=redis_server.url) as arr:
        assert await bus_up(arr)
        for name in ("n1", "n3"):  # n2 lacks the SNI pair; so does the pusher's own folder
            for ext, src in (("pem", arr.certs.node_cert), ("key", arr.certs.node_key)):
                shutil.copy(src, arr.node_dir(name) / "certs" / f"shop.{ext}")
        sni = ('[[tls.sni]]\nnames = ["shop.test"]\ncert = "certs/shop.pem"\n'
               'key = "certs/shop.key"\n')
        text = arr.render([arr.backend(3, "b3")]).replace("[persistence]", sni + "[persistence]")
        copy = tmp_path / "elsewhere" / "cluster.toml"
        copy.parent.mkdir()
        copy.write_text(text)
        assert await push(copy) == 2
        err = capsys.readouterr().err
        n2 = arr.node_dir("n2")
        problems = [line for line in err.splitlines() if "config error" in line]
        assert problems == [
            f"dlba config push: config error: node n2: {n2 / 'cluster.toml'}: {key}: "
            f"file not found: {n2 / 'certs' / f}"
            for key, f in (("tls.sni[0].cert", "shop.pem"), ("tls.sni[0].key", "shop.key"))
        ], err
        assert "aborted" in err
        await asyncio.sleep(1.5)  # three polls: nobody commits it later either
        assert {n: node.config_version for n, node in arr.nodes.items()} == {
            "n1": 1, "n2": 1, "n3": 1}
        assert all(node.reloader.staged is None for node in arr.nodes.values())


async def test_a_missed_message_is_picked_up_by_polling(
    tmp_path: Path, redis_server: RedisServer,
) -> None:
    async with config_array(tmp_path, n_nodes=2, redis=redis_server.url) as arr:
        assert await bus_up(arr)
        text = arr.render([arr.backend(4, "b4")])
        # A version committed without any message (a pusher that died before PUBLISH, or a
        # message lost while the node was reconnecting): only the poll can find it.
        r = redis_server.client()
        r.hset(config_bus.TEXT_HASH, "v7", text)
        r.set(config_bus.VERSION_KEY, 7)
        assert await wait_versions(arr, 7, timeout=5) == {"n1": 7, "n2": 7}
        assert await arr.whoami("n2") == {"b4"}


async def test_redis_down_keeps_traffic_and_catches_up(
    tmp_path: Path, redis_server: RedisServer, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING, logger="dlba.event")
    async with config_array(tmp_path, n_nodes=2, redis=redis_server.url) as arr:
        assert await bus_up(arr)
        assert await push(arr.push_file(arr.render([arr.backend(3, "b3")]))) == 0
        assert await wait_versions(arr, 2) == {"n1": 2, "n2": 2}
        redis_server.kill()
        # traffic goes on for a few seconds of retries, on the last good config
        async with aiohttp.ClientSession() as s:
            for i in range(60):
                async with s.get(arr.url(arr.names[i % 2]) + "/whoami") as resp:
                    assert resp.status == 200
                    assert resp.headers["X-Backend"] == "b3"
                await asyncio.sleep(0.03)
        down = [r for r in caplog.records if "event=config_bus_down" in r.getMessage()]
        # one line per node for the whole outage, not one per retry
        assert sorted(r.getMessage().split()[1] for r in down) == ["node=n1", "node=n2"]
        assert all("keeping_version=2" in r.getMessage() for r in down)
        # a push while redis is down changes nothing and says why
        assert await push(arr.push_file(arr.render([arr.backend(4, "b4")]))) == 1
        redis_server.start()
        assert await bus_up(arr)
        assert await push(arr.push_file(arr.render([arr.backend(4, "b4")]))) == 0
        assert await wait_versions(arr, 3) == {"n1": 3, "n2": 3}
        for name in arr.names:
            assert await arr.whoami(name) == {"b4"}


async def test_a_second_push_while_one_stages_is_refused(
    tmp_path: Path, redis_server: RedisServer, capsys: pytest.CaptureFixture[str],
) -> None:
    async with config_array(tmp_path, n_nodes=2, redis=redis_server.url) as arr:
        assert await bus_up(arr)
        # another pusher holds the stage (it waits for its acks)
        assert redis_server.client().set(config_bus.STAGE_KEY, 2, ex=30, nx=True)
        assert await push(arr.push_file(arr.render([arr.backend(3, "b3")]))) == 1
        assert "another push (version 2) is staging" in capsys.readouterr().err
        redis_server.client().delete(config_bus.STAGE_KEY)
        assert await push(arr.push_file(arr.render([arr.backend(3, "b3")]))) == 0
        assert await wait_versions(arr, 2) == {"n1": 2, "n2": 2}


async def test_stop_ends_the_watcher_even_when_a_cancel_is_swallowed() -> None:
    """redis-py waits for messages under asyncio.timeout; on Python 3.11 a cancel that lands as
    that timeout fires comes out as a timeout, which get_message swallows. stop() must still
    end the watcher (it once hung a node's shutdown in CI)."""
    watcher = config_bus.ConfigBusWatcher(cast(Any, None), "redis://127.0.0.1:1/0")
    swallowed = 0

    async def swallows_the_first_cancel() -> None:
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(0.05)
            except asyncio.CancelledError:
                if swallowed:
                    raise
                swallowed += 1

    watcher.task = asyncio.ensure_future(swallows_the_first_cancel())
    await asyncio.sleep(0.1)
    stopping = asyncio.ensure_future(watcher.stop())
    done, _ = await asyncio.wait({stopping}, timeout=5)  # (wait_for's own cancel would help)
    try:
        assert stopping in done, "stop() still waits for a watcher that ignored one cancel"
        assert watcher.task.done() and swallowed == 1
    finally:
        for t in (watcher.task, stopping, watcher.task):
            t.cancel()
            await asyncio.sleep(0)
