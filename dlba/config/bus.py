"""The config bus: redis carries the array's config, with the same stage/commit rule as a
direct push (every node runs the new version or none does).

Keys (one redis database per array):
  dlba:config:version       committed version (integer)
  dlba:config               hash: `v<N>` = text of version N, `text` = the committed text
  dlba:config:stage         the version being staged (expires with the push's deadline)
  dlba:config:acks:<N>      hash: node name -> "ok" or the node's one-line reason
  dlba:config:nodes         hash: node name -> the version it runs (written at every look, so a
                            redis that restarted empty still learns how far the array got)
  channel dlba:config       a hint that something changed ({"op": "stage"|"commit"|"abort"})

A node treats every message only as "look now", and also looks every `poll_s` seconds: a lost
message (the node was reconnecting) only delays it. Redis being down never touches traffic:
the node keeps its last good config, says so once, and retries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import redis.asyncio as aioredis
from redis.exceptions import RedisError

if TYPE_CHECKING:
    from dlba.config.reload import ConfigReloader

events = logging.getLogger("dlba.event")

VERSION_KEY = "dlba:config:version"
TEXT_HASH = "dlba:config"
STAGE_KEY = "dlba:config:stage"
NODES_HASH = "dlba:config:nodes"
CHANNEL = "dlba:config"
POLL_S = 3.0
RETRY_S = 1.0
IO_TIMEOUT_S = 2.0


def acks_key(version: int) -> str:
    return f"dlba:config:acks:{version}"


def connect(url: str) -> aioredis.Redis:
    return aioredis.Redis.from_url(
        url, socket_timeout=IO_TIMEOUT_S, socket_connect_timeout=IO_TIMEOUT_S,
        decode_responses=True,
    )


class ConfigBusWatcher:
    """A node following the bus: stages what is being staged, commits what was committed."""

    def __init__(self, reloader: ConfigReloader, url: str, poll_s: float | None = None) -> None:
        self.reloader = reloader
        self.url = url
        self.poll_s = POLL_S if poll_s is None else poll_s
        self.task: asyncio.Task[None] | None = None
        self.up: bool | None = None  # None: not yet known
        self.refused: set[int] = set()  # versions this node could not run: said once
        self.stopping = False

    @property
    def name(self) -> str:
        return self.reloader.node.name

    def start(self) -> None:
        self.task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        # One cancel is not enough: redis-py waits for messages under asyncio.timeout, and on
        # Python 3.11 a cancel that lands as that timeout fires becomes a TimeoutError, which
        # get_message swallows (seen: a node's stop hanging in CI). So: a flag the loops check,
        # and a cancel repeated until the task is done.
        self.stopping = True
        task = self.task
        while task is not None and not task.done():
            task.cancel()
            await asyncio.wait({task}, timeout=0.5)

    def _state(self, up: bool, reason: str = "") -> None:
        if up == self.up:
            return
        self.up = up
        version = self.reloader.node.config_version
        if up:
            events.info("event=config_bus_up node=%s url=%s version=%d", self.name,
                           self.url, version)
        else:
            # One line per outage, not one per retry.
            events.warning("event=config_bus_down node=%s url=%s reason=%r keeping_version=%d",
                           self.name, self.url, reason, version)

    async def _run(self) -> None:
        while not self.stopping:
            client = connect(self.url)
            pubsub = client.pubsub()
            try:
                await pubsub.subscribe(CHANNEL)
                self._state(True)
                await self.sync(client)
                loop = asyncio.get_running_loop()
                next_poll = loop.time() + self.poll_s
                while not self.stopping:
                    wait = max(0.0, next_poll - loop.time())
                    msg = await pubsub.get_message(ignore_subscribe_messages=True, timeout=wait)
                    if msg is not None or loop.time() >= next_poll:
                        await self.sync(client)
                        if msg is None:
                            next_poll = loop.time() + self.poll_s
            except (RedisError, OSError) as e:
                self._state(False, str(e) or type(e).__name__)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                with contextlib.suppress(RedisError, OSError):
                    await client.aclose()
            if not self.stopping:
                await asyncio.sleep(RETRY_S)

    async def sync(self, client: aioredis.Redis) -> None:
        """Look at the bus once: commit a newer committed version, ack a pending stage."""
        from dlba.config.reload import StageError

        node = self.reloader.node
        committed = int(await client.get(VERSION_KEY) or 0)
        if committed > node.config_version and committed not in self.refused:
            text = await client.hget(TEXT_HASH, f"v{committed}") or await client.hget(
                TEXT_HASH, "text")
            try:
                staged = self.reloader.staged
                if staged is None or staged.version != committed:
                    self.reloader.stage(str(text or ""), committed)
                await self.reloader.commit(committed)
            except StageError as e:
                # The array committed it but it cannot run here: stay on the last good one.
                self.refused.add(committed)
                events.warning("event=config_refused node=%s version=%d reason=%r", self.name,
                               committed, str(e))
        await client.hset(NODES_HASH, self.name, node.config_version)
        pending = await client.get(STAGE_KEY)
        if pending is None:
            staged = self.reloader.staged
            if staged is not None and staged.version > committed:
                self.reloader.abort()  # the push gave up on it
            return
        version = int(pending)
        if version <= node.config_version or await client.hexists(acks_key(version), self.name):
            return
        text = await client.hget(TEXT_HASH, f"v{version}")
        if text is None:
            return  # the pusher holds the stage but has not written the text yet: next look
        try:
            self.reloader.stage(str(text), version)
            answer = "ok"
        except StageError as e:
            answer = str(e)
        await client.hset(acks_key(version), self.name, answer)


class BusBusy(Exception):
    """Another push holds the stage; nothing was changed."""


@dataclass
class BusPushResult:
    version: int
    failed: dict[str, str]  # node -> reason (missing acks included)


async def push_via_bus(url: str, text: str, nodes: list[str], deadline_s: float = 10.0,
                       poll_s: float = 0.1) -> BusPushResult:
    """Stage `text` on every node named in `nodes` through redis, then commit, or abort when
    one refuses or does not answer within the deadline. Raises RedisError/OSError when redis
    cannot be reached (nothing was changed then)."""
    client = connect(url)
    try:
        committed = int(await client.get(VERSION_KEY) or 0)
        staging = int(await client.get(STAGE_KEY) or 0)
        running = [int(v) for v in (await client.hgetall(NODES_HASH)).values()]
        # Nodes start at version 1 from their file, so the first bus version is 2.
        version = max(committed, staging, 1, *running) + 1
        ttl = max(1, int(deadline_s) + 5)
        # NX: the stage key is also the lock, so two pushes never stage the same version.
        if not await client.set(STAGE_KEY, version, ex=ttl, nx=True):
            holder = await client.get(STAGE_KEY)
            raise BusBusy(f"another push (version {holder!s}) is staging; try again")
        async with client.pipeline(transaction=True) as p:
            p.hset(TEXT_HASH, f"v{version}", text)
            p.delete(acks_key(version))
            await p.execute()
        await client.publish(CHANNEL, json.dumps({"op": "stage", "version": version}))
        end = time.monotonic() + deadline_s
        acks: dict[str, str] = {}
        while time.monotonic() < end:
            acks = {str(k): str(v) for k, v in (await client.hgetall(acks_key(version))).items()}
            if any(acks.get(n, "ok") != "ok" for n in nodes) or all(n in acks for n in nodes):
                break
            await asyncio.sleep(poll_s)
        failed = {n: acks[n] for n in nodes if n in acks and acks[n] != "ok"}
        failed |= {n: f"no answer within {deadline_s:g} s" for n in nodes if n not in acks}
        if failed:
            async with client.pipeline(transaction=True) as p:
                p.delete(STAGE_KEY, acks_key(version))
                p.hdel(TEXT_HASH, f"v{version}")
                await p.execute()
            await client.publish(CHANNEL, json.dumps({"op": "abort", "version": version}))
            return BusPushResult(version, failed)
        async with client.pipeline(transaction=True) as p:
            p.hset(TEXT_HASH, "text", text)
            p.set(VERSION_KEY, version)
            p.delete(STAGE_KEY, acks_key(version))
            p.hdel(TEXT_HASH, f"v{version - 5}")  # a few old versions stay for a look back
            await p.execute()
        await client.publish(CHANNEL, json.dumps({"op": "commit", "version": version}))
        return BusPushResult(version, {})
    finally:
        with contextlib.suppress(RedisError, OSError):
            await client.aclose()
