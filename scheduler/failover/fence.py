"""What a scheduler does with the fence's verdicts (election.py decides them).

A scheduler whose peers fall silent may be the one cut off: it holds its ARP answers
(HOLD_ARP) until it hears the network again (RESUME_ARP, with a fresh gratuitous ARP), and it
stands down when a peer shows a newer scheduler or its own checks fail (STAND_DOWN). Verdicts
from the role's heartbeat rounds are carried out in order, outside the round that made them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from scheduler.failover.election import Decision
from scheduler.scheduler_role import SchedulerRole

events = logging.getLogger("dlba.event")


class Fence:
    def __init__(self, name: str, role: Callable[[], SchedulerRole | None],
                 stand_down: Callable[[], Awaitable[None]]) -> None:
        self.name = name
        self.role = role
        self.stand_down = stand_down
        self.task: asyncio.Task[None] | None = None

    async def act(self, decision: Decision) -> None:
        role = self.role()
        if decision is Decision.STAND_DOWN and role is not None:
            await self.stand_down()
        elif decision is Decision.HOLD_ARP and role is not None and role.vip_owner is not None:
            events.warning("event=peers_silent node=%s action=hold_arp", self.name)
            role.vip_owner.hold(True)
        elif decision is Decision.RESUME_ARP and role is not None and role.vip_owner is not None:
            role.vip_owner.hold(False)
            with contextlib.suppress(OSError):
                await asyncio.to_thread(role.vip_owner.announce, role.mac)

    def act_soon(self, decision: Decision) -> None:
        """Act in a task of its own: standing down stops the role's task that called us."""
        previous = self.task

        async def act() -> None:
            if previous is not None:  # in order: a resume never overtakes a stand-down
                with contextlib.suppress(Exception):
                    await previous
            await self.act(decision)

        self.task = asyncio.ensure_future(act())
