"""The agent's own checks and a scheduler's fence actions, without a network."""

from __future__ import annotations

import asyncio
import logging
from typing import cast

import pytest

from dlba.proxy.proxy_health import ProxyHealth
from scheduler.failover.election import Decision, Election
from scheduler.failover.fence import Fence
from scheduler.failover.self_checks import SelfChecks
from scheduler.scheduler_role import SchedulerRole


def a_scheduler() -> Election:
    e = Election("10.0.0.3", ping_failures=2)
    assert e.on_peer_views([], 0.0) is Decision.TAKE_OVER
    return e


def test_an_unfit_proxy_stands_a_scheduler_down_and_is_logged_once(
        caplog: pytest.LogCaptureFixture) -> None:
    health = [ProxyHealth(False, "no worker")]
    checks = SelfChecks("n3", lambda: health[0])
    e = a_scheduler()
    with caplog.at_level(logging.INFO, logger="dlba.event"):
        assert checks.proxy(e, 1.0) is Decision.KEEP
        assert checks.proxy(e, 2.0) is Decision.STAND_DOWN
        health[0] = ProxyHealth(True)
        assert checks.proxy(e, 3.0) is Decision.KEEP
    logged = [r.getMessage() for r in caplog.records]
    assert logged == ["event=proxy_unhealthy node=n3 reason='no worker'",
                      "event=proxy_healthy node=n3"]


def test_a_front_link_that_is_gone_is_down_and_stands_a_scheduler_down() -> None:
    checks = SelfChecks("n3", lambda: ProxyHealth(True))
    e = a_scheduler()
    assert checks.link(e, 1.0) == (True, Decision.KEEP)  # no front known yet: up
    checks.front = "dlba-nosuchif0"
    assert checks.link(e, 2.0) == (False, Decision.STAND_DOWN)
    assert not checks.link_ok


class FakeOwner:
    def __init__(self) -> None:
        self.calls: list[object] = []

    def hold(self, on: bool) -> None:
        self.calls.append(("hold", on))

    def announce(self, mac: bytes) -> None:
        self.calls.append(("announce", mac))


class FakeRole:
    def __init__(self) -> None:
        self.vip_owner = FakeOwner()
        self.mac = b"\x02\x00\x00\x00\x00\x03"


def test_fence_verdicts_run_in_order_and_stand_down_only_a_scheduler() -> None:
    role: list[FakeRole | None] = [FakeRole()]
    owner = cast(FakeRole, role[0]).vip_owner
    stood_down: list[int] = []

    async def stand_down() -> None:
        await asyncio.sleep(0.01)  # a slow stand-down must not be overtaken
        owner.calls.append("stand_down")
        stood_down.append(1)
        role[0] = None

    async def run() -> None:
        fence = Fence("n3", lambda: cast(SchedulerRole | None, role[0]), stand_down)
        fence.act_soon(Decision.HOLD_ARP)
        fence.act_soon(Decision.STAND_DOWN)
        fence.act_soon(Decision.RESUME_ARP)  # no role any more: nothing to resume
        assert fence.task is not None
        await fence.task
        await fence.act(Decision.STAND_DOWN)  # a server: nothing to stand down

    asyncio.run(run())
    assert owner.calls == [("hold", True), "stand_down"]
    assert stood_down == [1]
