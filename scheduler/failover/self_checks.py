"""This node's own fitness, checked at the start of every round of the agent.

Two checks: its proxy serves (dlba/proxy/proxy_health.py) and its front link is up (admin
state and carrier). The election decides what a failed check means (a scheduler stands down,
a server is no candidate); this shell reads the checks and logs each change once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from dlba.proxy.proxy_health import ProxyHealth
from scheduler.failover.election import Decision, Election
from scheduler.vip_owner import link_running

events = logging.getLogger("dlba.event")


class SelfChecks:
    def __init__(self, name: str, proxy_health: Callable[[], ProxyHealth]) -> None:
        self.name = name
        self.proxy_health = proxy_health
        self.front: str | None = None  # our front interface's name, once known
        self.proxy_ok = True  # the last results, for the log's transitions
        self.link_ok = True

    def proxy(self, election: Election, now: float) -> Decision:
        health = self.proxy_health()
        if health.healthy != self.proxy_ok:
            self.proxy_ok = health.healthy
            if health.healthy:
                events.info("event=proxy_healthy node=%s", self.name)
            else:
                events.warning("event=proxy_unhealthy node=%s reason=%r", self.name,
                               health.reason)
        return election.on_service_health(health.healthy, now)

    def link(self, election: Election, now: float) -> tuple[bool, Decision]:
        """Whether the front link is up (one ioctl: cheap enough for every round), and the
        election's verdict on it."""
        up = self.front is None or link_running(self.front)
        if up != self.link_ok:
            self.link_ok = up
            events.warning("event=front_link_%s node=%s interface=%s", "up" if up else "down",
                           self.name, self.front)
        return up, election.on_link_state(up, now)
