"""Active checks of back ends: an optional HTTP health check and HAProxy-style agent checks.

Both only feed the web server status table; the proxy itself already treats a failed connect
as a failed check, so these catch what a connect cannot: a back end that accepts connections
but answers 5xx to its health path, or one whose own agent asks to drain or be given less load.
"""

from __future__ import annotations

import asyncio
import logging

from dlba.config import BackendConfig
from dlba.proxy.proxy_context import ProxyContext
from dlba.scheduling.agent_check import parse_agent_reply

events = logging.getLogger("dlba.event")


async def http_health_once(host: str, port: int, path: str, timeout: float) -> bool:
    """One GET of the health path on its own connection; 2xx and 3xx are healthy."""
    try:
        async with asyncio.timeout(timeout):
            reader, writer = await asyncio.open_connection(host, port)
    except (TimeoutError, OSError):
        return False
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: dlba-health\r\n"
            "Connection: close\r\n\r\n".encode()
        )
        async with asyncio.timeout(timeout):
            line = await reader.readline()
        parts = line.split()
        return len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1][:1] in b"23"
    except (TimeoutError, OSError):
        return False
    finally:
        writer.close()


async def agent_once(host: str, port: int, timeout: float) -> str:
    """The agent's one-line reply (HAProxy agent-check: it answers and closes)."""
    async with asyncio.timeout(timeout):
        reader, writer = await asyncio.open_connection(host, port)
    try:
        async with asyncio.timeout(timeout):
            line = await reader.readline()
        return line.decode("ascii", "replace").strip()
    finally:
        writer.close()


class BackendChecks:
    """Runs one checking task per back end that asks for checks; restarted on reconfigure."""

    def __init__(self, ctx: ProxyContext) -> None:
        self.ctx = ctx
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.stop()
        limits = self.ctx.limits
        for b in self.ctx.config.backends:
            if b.health:
                self.tasks.append(
                    asyncio.ensure_future(self._health_loop(b, limits.health_interval_s))
                )
            if b.agent is not None:
                self.tasks.append(
                    asyncio.ensure_future(self._agent_loop(b, limits.agent_interval_s))
                )

    def stop(self) -> None:
        for t in self.tasks:
            t.cancel()
        self.tasks.clear()

    async def _health_loop(self, b: BackendConfig, interval: float) -> None:
        ctx = self.ctx
        timeout = min(interval, ctx.limits.connect_timeout_s)
        while True:
            ok = await http_health_once(b.address.host, b.address.port, b.health, timeout)
            if ctx.table.set_health(b.id, ok, ctx.loop.time()):
                events.warning(
                    "event=health_%s node=%s backend=%d address=%s path=%s",
                    "up" if ok else "down", ctx.node_name, b.id, b.address, b.health,
                )
            await asyncio.sleep(interval)

    async def _agent_loop(self, b: BackendConfig, interval: float) -> None:
        assert b.agent is not None
        ctx = self.ctx
        last = ""
        while True:
            try:
                line = await agent_once(b.agent.host, b.agent.port, ctx.limits.connect_timeout_s)
                report = parse_agent_reply(line)
            except (TimeoutError, OSError, ValueError) as e:
                # An unreachable agent changes nothing, as in HAProxy: the back end keeps its
                # last state and the normal checks still apply.
                if last != "error":
                    events.info("event=agent_error backend=%d reason=%r", b.id, str(e))
                last = "error"
            else:
                ctx.table.apply_agent(b.id, report)
                if line != last:
                    events.info("event=agent_report backend=%d reply=%r", b.id, line)
                last = line
            await asyncio.sleep(interval)  # a cancel here must end the loop (checks stopped)
