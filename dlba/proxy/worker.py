"""One proxy worker process of a node (see dlba/proxy/worker_pool.py):
`python -m dlba.proxy.worker`."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import logging
import signal
import socket
import sys
from pathlib import Path
from typing import Any

from dlba.config import ConfigError, load_config, parse_config
from dlba.proxy.proxy_context import ProxyContext
from dlba.proxy.sockets import (
    open_proxy_listener,
    proxy_addresses,
    rotate_ticket_keys,
    setup_logging,
    shared_ticket_keys,
    tls_context,
)
from dlba.proxy.worker_pool import SESSIONS_BATCH, SESSIONS_S, STATS_S, stats_json
from dlba.scheduling.agent_check import AgentReport
from dlba.scheduling.learned_sessions import from_wire, to_wire

events = logging.getLogger("dlba.event")
DRAIN_S = 30.0  # how long a stopping worker lets its open connections finish


class Worker:
    def __init__(self, ctx: ProxyContext, writer: asyncio.StreamWriter) -> None:
        self.ctx = ctx
        self.writer = writer

    def handle(self, msg: dict[str, Any]) -> None:
        table, op = self.ctx.table, msg.get("op")
        if op == "admin":
            table.set_admin(int(msg["id"]), msg["action"])
        elif op == "health":
            table.set_health(int(msg["id"]), bool(msg["ok"]), self.ctx.loop.time())
        elif op == "agent":
            table.apply_agent(int(msg["id"]), AgentReport(**msg["report"]))
        elif op == "sessions":
            now = self.ctx.loop.time()
            self.ctx.selector.learned.merge(from_wire(msg["items"], now, SESSIONS_BATCH), now)
        elif op == "report":
            self.send_stats(int(msg["seq"]))
        elif op == "config":
            try:
                config = parse_config(msg["text"], self.ctx.config.path)
            except ConfigError as e:
                events.warning("event=worker_config_refused reason=%r", str(e))
                return
            if config.text != self.ctx.config.text:
                self.ctx.apply(config)

    async def read_commands(self, reader: asyncio.StreamReader, stop: asyncio.Event) -> None:
        while line := await reader.readline():
            try:
                self.handle(json.loads(line))
            except (ValueError, KeyError, TypeError) as e:
                events.warning("event=worker_bad_command reason=%r", str(e))
        stop.set()  # the supervisor is gone: so are we

    def send_stats(self, seq: int | None = None) -> None:
        self.writer.write(json.dumps(stats_json(
            self.ctx.stats, self.ctx.table, self.ctx.selector.learned, seq)).encode() + b"\n")

    async def report(self) -> None:
        while True:
            self.send_stats()
            await asyncio.sleep(STATS_S)

    async def share_sessions(self) -> None:
        """The session ids this worker learned go to the node process, in batches."""
        while True:
            await asyncio.sleep(SESSIONS_S)
            learned = self.ctx.selector.learned
            now = self.ctx.loop.time()
            learned.expire(now)
            while learned.has_changes:
                items = to_wire(learned.take_changes(SESSIONS_BATCH), now)
                self.writer.write(json.dumps({"op": "sessions", "items": items}).encode()
                                  + b"\n")


async def run_worker(args: argparse.Namespace) -> None:
    reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=args.control))
    # The supervisor sends its config first: after a live reload it differs from the file.
    first = await asyncio.wait_for(reader.readline(), 10)
    msg = json.loads(first) if first else {}
    if msg.get("op") == "config":
        config = parse_config(msg["text"], Path(args.config))
    else:
        config = load_config(args.config)
    loop = asyncio.get_running_loop()
    ctx = ProxyContext(config, args.name, loop)
    ssl_ctx = tls_context(config)
    ring = shared_ticket_keys(ssl_ctx, ctx.secret)
    servers = []
    node = config.node(args.name)
    for addr, tls in proxy_addresses(node):
        servers.append(await open_proxy_listener(ctx, addr, ssl_ctx if tls else None,
                                                 config.proxy.header_timeout_s))
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    worker = Worker(ctx, writer)
    tasks = [asyncio.ensure_future(worker.read_commands(reader, stop)),
             asyncio.ensure_future(worker.report()), asyncio.ensure_future(ctx.janitor()),
             asyncio.ensure_future(worker.share_sessions()),
             asyncio.ensure_future(rotate_ticket_keys(ring, ctx.secret))]
    await stop.wait()
    for s in servers:
        s.close()  # no new connections; the open ones finish (graceful restart)
    deadline = loop.time() + DRAIN_S
    while ctx.stats.connections_open > 0 and loop.time() < deadline:
        await asyncio.sleep(0.1)
    for t in tasks:
        t.cancel()
    ctx.close()
    with contextlib.suppress(Exception):
        writer.close()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dlba.proxy.worker")
    p.add_argument("--config", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--index", type=int, default=0)
    p.add_argument("--control", type=int, required=True)
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    import uvloop

    uvloop.run(run_worker(args))
    return 0


if __name__ == "__main__":
    sys.exit(main())
