"""One proxy worker process of a node: a gunicorn worker class that runs the proxy on uvloop.

The node's main process is the gunicorn master (dlba/proxy/arbiter.py). It starts each worker
as a fresh interpreter (`python -m dlba.proxy.worker`), handing it the listening sockets it
owns, gunicorn's heartbeat file and one end of the node's JSON-lines control channel
(dlba/proxy/worker_pool.py: state changes down, counters up). gunicorn's contract holds: the
worker touches its heartbeat file (`notify`) from its event loop, so a blocked loop stops
touching it and the master kills it after `[proxy] worker_timeout_s`; SIGTERM (and the control
channel's end) is a graceful stop, SIGQUIT/SIGINT a quick one.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from gunicorn.config import Config as GunicornConfig
from gunicorn.workers.base import Worker as GunicornWorker

from dlba.cdn.worker_link import worker_link
from dlba.config import Config, ConfigError, load_config, parse_config
from dlba.proxy.client_connection import client_protocols
from dlba.proxy.core_io import IDLE_TIMER, LINE
from dlba.proxy.core_session import ClientSession
from dlba.proxy.proxy_context import ProxyContext
from dlba.proxy.sockets import (
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
DRAIN_TICK_S = 0.02  # how often a stopping worker looks for requests to answer with a close
IDLE_CLOSE_S = 0.5  # a stopping worker closes keepalive connections idle this long


class Commands:
    """The worker's end of the control channel."""

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
        stop.set()  # the master is gone, or retires us: stop gracefully

    def send_stats(self, seq: int | None = None) -> None:
        if self.writer.is_closing():
            return
        doc = stats_json(self.ctx.stats, self.ctx.table, self.ctx.selector.learned, seq)
        doc["services"] = self.ctx.services.to_json()  # summed by the node (admin/api.py)
        self.writer.write(json.dumps(doc).encode() + b"\n")

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
            while learned.has_changes and not self.writer.is_closing():
                items = to_wire(learned.take_changes(SESSIONS_BATCH), now)
                self.writer.write(json.dumps({"op": "sessions", "items": items}).encode()
                                  + b"\n")


def drain_step(ctx: ProxyContext, now: float) -> None:
    """One look over a stopping worker's connections: a request whose response has not begun
    gets `Connection: close` on it, so its client learns to reconnect from the response itself;
    a keepalive connection idle for IDLE_CLOSE_S is closed. A response already under way is
    never cut (the wait in `ProxyWorker.serve` outlives it)."""
    keepalive = ctx.limits.keepalive_timeout_s
    ctx.drain()  # HTTP/2 connections: GOAWAY; their streams in flight finish, then they close
    drain_sessions([c.session for c in ctx.connections if c.session is not None], now,
                   keepalive)


def drain_sessions(sessions: Iterable[ClientSession], now: float, keepalive_s: float) -> None:
    """drain_step for HTTP/1 client sessions (pure: unit-tested with the Playbook)."""
    for s in sessions:
        if s.queue:
            for ex in s.queue:
                if not ex.response_started:
                    ex.client_keep_alive = False
        elif (s.state == LINE and s.parsing is None and not s.in_head and s.timer == IDLE_TIMER
              and now - (s.deadline - keepalive_s) >= IDLE_CLOSE_S):
            s.close()


class ProxyWorker(GunicornWorker):  # type: ignore[misc]
    """gunicorn's worker contract (age, heartbeat file, signals) around the proxy on uvloop.

    The master builds one of these for its bookkeeping (`Arbiter.spawn_worker`, which holds its
    heartbeat file); the worker process builds its own from the arguments it is started with."""

    args: argparse.Namespace
    sockets: list[socket.socket]

    def load_wsgi(self) -> None:
        """No WSGI application: the proxy is the application."""

    def init_signals(self) -> None:
        """Signals go to the event loop (`serve`), not to Python's handlers."""

    def run(self) -> None:
        import uvloop

        uvloop.run(self.serve())

    async def serve(self) -> None:
        args = self.args
        reader, writer = await asyncio.open_connection(sock=socket.socket(fileno=args.control))
        # The master sends its config first: after a live reload it differs from the file.
        async with asyncio.timeout(10):
            first = await reader.readline()
        msg = json.loads(first) if first else {}
        config: Config = (parse_config(msg["text"], Path(args.config))
                          if msg.get("op") == "config" else load_config(args.config))
        loop = asyncio.get_running_loop()
        ctx = ProxyContext(config, args.name, loop)
        ssl_ctx = tls_context(config)
        ring = shared_ticket_keys(ssl_ctx, ctx.secret)
        timeout = config.proxy.header_timeout_s
        servers = [await loop.create_server(client_protocols(ctx, ssl_ctx if tls else None,
                                                             timeout), sock=sock)
                   for sock, tls in zip(self.sockets, args.tls, strict=True)]
        stop = asyncio.Event()
        loop.add_signal_handler(signal.SIGTERM, stop.set)
        for sig in (signal.SIGQUIT, signal.SIGINT):
            loop.add_signal_handler(sig, os._exit, 0)
        loop.add_signal_handler(signal.SIGABRT, os._exit, 1)  # the master's timeout
        commands = Commands(ctx, writer)
        tasks = [asyncio.ensure_future(commands.read_commands(reader, stop)),
                 asyncio.ensure_future(commands.report()), asyncio.ensure_future(ctx.janitor()),
                 asyncio.ensure_future(commands.share_sessions()),
                 asyncio.ensure_future(rotate_ticket_keys(ring, ctx.secret)),
                 asyncio.ensure_future(self.heartbeat()),
                 asyncio.ensure_future(worker_link(ctx, args.name))]  # the CDN offload's
        await stop.wait()
        events.info("event=worker_draining node=%s pid=%d open=%d", args.name, os.getpid(),
                    ctx.stats.connections_open)
        for s in servers:
            s.close()  # our copy of the listening socket: the master's keeps the queue alive
        deadline = loop.time() + DRAIN_S
        while (ctx.connections or ctx.h2_connections) and loop.time() < deadline:
            drain_step(ctx, loop.time())
            await asyncio.sleep(DRAIN_TICK_S)
        commands.send_stats()  # the last counters, before the master forgets us
        await asyncio.sleep(0)
        for t in tasks:
            t.cancel()
        ctx.close()
        writer.close()

    async def heartbeat(self) -> None:
        """gunicorn's liveness: touched from the event loop, so a blocked loop misses it."""
        while True:
            self.notify()
            await asyncio.sleep(min(1.0, self.timeout / 2))


class InheritedTmp:
    """gunicorn's WorkerTmp over the heartbeat file the master opened (inherited fd)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def notify(self) -> None:
        now = time.monotonic()
        os.utime(self.fd, (now, now))

    def last_update(self) -> float:
        return os.fstat(self.fd).st_mtime

    def fileno(self) -> int:
        return self.fd

    def close(self) -> None:
        os.close(self.fd)


class WorkerLog:
    """What gunicorn's Worker calls on its `log`, onto our event log."""

    def close_on_exec(self) -> None:
        """Our handlers write to stderr, which the worker keeps."""

    def reopen_files(self) -> None:
        """Nothing to reopen: logs go to stderr."""


def worker_argv(config: Path, name: str, age: int, control: int, heartbeat: int,
                listeners: list[tuple[int, bool]], timeout: float, log_level: str) -> list[str]:
    """The command line the master starts a worker with (`main` reads it)."""
    argv = [sys.executable, "-m", "dlba.proxy.worker", "--config", str(config), "--name", name,
            "--age", str(age), "--control", str(control), "--heartbeat", str(heartbeat),
            "--timeout", str(timeout), "--log-level", log_level]
    for fd, tls in listeners:
        argv += ["--listen-fd", f"{fd}:{'tls' if tls else 'plain'}"]
    return argv


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="dlba.proxy.worker")
    p.add_argument("--config", required=True)
    p.add_argument("--name", required=True)
    p.add_argument("--age", type=int, default=0)
    p.add_argument("--control", type=int, required=True)
    p.add_argument("--heartbeat", type=int, required=True)
    p.add_argument("--timeout", type=float, default=10.0)
    p.add_argument("--listen-fd", action="append", default=[])
    p.add_argument("--log-level", default="INFO")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    fds = [item.split(":") for item in args.listen_fd]
    sockets = [socket.socket(fileno=int(fd)) for fd, _ in fds]
    for s in sockets:
        s.setblocking(False)
    args.tls = [kind == "tls" for _, kind in fds]
    cfg = GunicornConfig()
    worker = ProxyWorker(args.age, os.getppid(), sockets, None, args.timeout, cfg, WorkerLog())
    worker.tmp.close()  # the base class made one; the master watches the one it handed us
    worker.tmp = InheritedTmp(args.heartbeat)
    worker.args = args
    worker.init_process()  # gunicorn's: seed, close-on-exec, signals, then run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
