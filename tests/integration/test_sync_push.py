"""The scheduler's table sync when a peer does not answer: the push says so, and the scheduler
sends that peer the whole table at its next maintenance instead of waiting for a later change
to show the peer its gap (a takeover before that change would have used a stale table)."""

from __future__ import annotations

import asyncio
import socket
from pathlib import Path

import aiohttp
from aiohttp import web

from dlba.config import parse_config
from scheduler.failover.sync_messages import SyncDelta, SyncMessage, SyncSnapshot
from scheduler.failover.table_sync import push_message
from scheduler.scheduler_role import SchedulerRole
from tests.unit.test_config import FILES, config_text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def push_to(urls: list[str], msg: SyncMessage) -> bool:
    async with aiohttp.ClientSession() as session:
        return await push_message(session, urls, msg, {})


def test_push_reports_a_peer_that_did_not_answer() -> None:
    got: list[dict[str, object]] = []

    async def sync(request: web.Request) -> web.Response:
        got.append(await request.json())
        return web.json_response({"ok": True})

    async def main() -> tuple[bool, bool]:
        app = web.Application()
        app.router.add_post("/sync", sync)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        try:
            msg = SyncSnapshot(1, 3, (0, 1, None), (True, True), None, ("n1", "n2"))
            live = f"http://127.0.0.1:{port}"
            dead = f"http://127.0.0.1:{free_port()}"  # nothing listens there
            return await push_to([live], msg), await push_to([live, dead], msg)
        finally:
            await runner.cleanup()

    answered, with_dead = asyncio.run(main())
    assert answered is True and with_dead is False
    assert len(got) == 2  # the live peer took both


def role(tmp_path: Path, pushes: list[SyncMessage], answers: list[bool]) -> SchedulerRole:
    (tmp_path / "certs").mkdir()
    for name in FILES:
        (tmp_path / "certs" / name).write_text("00ff\n")
    text = config_text(
        cluster='[cluster]\nsecret_file = "certs/cluster.key"\nvip = "10.0.0.100"\n',
        nodes='[[nodes]]\nname = "n1"\naddress = "10.0.0.11"\n'
              '[[nodes]]\nname = "n2"\naddress = "10.0.0.12"\n')
    config = parse_config(text, tmp_path / "dlba.toml")

    async def push(msg: SyncMessage) -> bool:
        pushes.append(msg)
        return answers.pop(0)

    return SchedulerRole(config, "n1", "token", push=push)


def test_a_peer_that_missed_a_change_gets_the_whole_table_next_time(tmp_path: Path) -> None:
    pushes: list[SyncMessage] = []
    r = role(tmp_path, pushes, [True, False, True])
    r.table.fill(0.0)

    async def main() -> None:
        await r.push_now()  # the first push of a term: the whole table, answered
        r.table.node_joined(1, 0.0)  # n2 takes idle buckets: a change
        assert r.table.rebalance(100.0, idle_s=1.0) > 0
        await r.push_now()  # a change, not answered by a peer
        await r.push_now()  # nothing changed since: still the whole table again
        await r.push_now()  # answered last time: nothing to send

    asyncio.run(main())
    assert [type(m) for m in pushes] == [SyncSnapshot, SyncDelta, SyncSnapshot]
    last = pushes[-1]
    assert isinstance(last, SyncSnapshot)
    assert list(last.assignments) == r.table.assignments()
