"""The heartbeat's sockets: the node's responder and the follower's pinger (asyncio UDP).

Codec and verdict live in `scheduler.failover.heartbeat`; this module only moves datagrams. The
responder runs on the node process's event loop, so it answers exactly while the process that
schedules, syncs and supervises the proxy runs: `kill -9`, a crash or a SIGSTOP silence it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

from scheduler.failover.heartbeat import (
    Answer,
    HeartbeatError,
    Ping,
    decode,
    encode_answer,
    encode_ping,
)

log = logging.getLogger("dlba.heartbeat")


@dataclass(frozen=True)
class SelfState:
    """What this node's answer says about it, read at the moment a ping arrives."""

    name: str
    term: int
    scheduler: bool
    proxy_ok: bool


class HeartbeatResponder(asyncio.DatagramProtocol):
    def __init__(self, key: bytes, state: Callable[[], SelfState]) -> None:
        self.key = key
        self.state = state
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's UDP transport is not a subclass of asyncio's: no isinstance check.
        self.transport = cast(asyncio.DatagramTransport, transport)

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        try:
            msg = decode(self.key, data)
        except HeartbeatError:
            return  # not ours or forged: no answer, no log line per packet
        if not isinstance(msg, Ping) or self.transport is None:
            return
        s = self.state()
        self.transport.sendto(
            encode_answer(self.key, Answer(msg.nonce, s.name, s.term, s.scheduler, s.proxy_ok)),
            addr,
        )


async def serve_heartbeat(
    host: str, port: int, key: bytes, state: Callable[[], SelfState]
) -> asyncio.DatagramTransport:
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(
        lambda: HeartbeatResponder(key, state), local_addr=(host, port),
        family=socket.AF_INET,
    )
    return transport


class _PingerProtocol(asyncio.DatagramProtocol):
    def __init__(self, key: bytes) -> None:
        self.key = key
        self.waiters: dict[bytes, asyncio.Future[Answer]] = {}

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        with contextlib.suppress(HeartbeatError):
            msg = decode(self.key, data)
            if isinstance(msg, Answer):
                fut = self.waiters.pop(msg.nonce, None)
                if fut is not None and not fut.done():
                    fut.set_result(msg)

    def error_received(self, exc: Exception) -> None:
        pass  # an ICMP error for one ping: that ping times out


class Pinger:
    """One UDP socket; `ping()` sends a heartbeat and waits for its answer or the timeout."""

    def __init__(self, key: bytes) -> None:
        self.key = key
        self.transport: asyncio.DatagramTransport | None = None
        self.protocol = _PingerProtocol(key)

    async def ping(self, address: str, port: int, timeout: float) -> Answer | None:
        loop = asyncio.get_running_loop()
        if self.transport is None:
            self.transport, _ = await loop.create_datagram_endpoint(
                lambda: self.protocol, family=socket.AF_INET)
        nonce = os.urandom(8)
        fut: asyncio.Future[Answer] = loop.create_future()
        self.protocol.waiters[nonce] = fut
        try:
            self.transport.sendto(encode_ping(self.key, Ping(nonce)), (address, port))
            async with asyncio.timeout(timeout):
                return await fut
        except (TimeoutError, OSError):
            return None
        finally:
            self.protocol.waiters.pop(nonce, None)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None
