"""A proxy worker process's side of the CDN offload (shell): every SHARE_S it posts its sampled
figures and counters (per service) to its own node's admin API (`POST /cdn/report`, see
dlba/cdn/hub.py) and takes the array's choices from the answer. Over the admin API rather
than the worker's control channel: the hub already takes the same report from peer nodes, so
there is one path to test."""

from __future__ import annotations

import asyncio
import contextlib
import os

import aiohttp

from dlba.cdn.hub import POST_TIMEOUT_S, SHARE_S, choices_from_wire, figures_wire
from dlba.cdn.runtime import CdnRuntime
from dlba.config import ConfigError
from dlba.proxy.proxy_context import ProxyContext


async def worker_link(ctx: ProxyContext, name: str) -> None:
    async with aiohttp.ClientSession() as session:
        while True:
            await asyncio.sleep(SHARE_S)
            rt = ctx.cdn
            if isinstance(rt, CdnRuntime):
                with contextlib.suppress(aiohttp.ClientError, TimeoutError, ValueError,
                                         KeyError, ConfigError, OSError):
                    await _report(session, ctx, rt, name)


async def _report(session: aiohttp.ClientSession, ctx: ProxyContext, rt: CdnRuntime,
                  name: str) -> None:
    config = ctx.config
    index = [n.name for n in config.nodes].index(name)
    body = {"source": f"worker:{os.getpid()}",
            "services": figures_wire(rt.figures(), rt.counters())}
    async with session.post(
        config.admin_url(index) + "/cdn/report", json=body,
        headers={"Authorization": f"Bearer {config.read_admin_token()}"},
        timeout=aiohttp.ClientTimeout(total=POST_TIMEOUT_S),
    ) as r:
        if r.status == 200:
            rt.set_choices(choices_from_wire((await r.json())["choices"]))
