"""Playbook (no sockets, the playbook's clock): requests beyond a back end's maxconn wait in the
pool's queue inside the proxy core, leave it by class when a slot frees, and a wait that runs
out is answered 503 with Retry-After."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from dlba.config.services import ClassConfig, PoolConfig, ServiceConfig
from dlba.proxy.proxy_context import ProxyContext
from dlba.services.tokens import make_token
from tests.unit.proxy.playbook import (
    Clock,
    Has,
    Playbook,
    Starts,
    connected,
    data,
    make_config,
    response,
)

SECRET = bytes(32)  # make_config's secret file: "00" * 32


class SoonClock(Clock):
    """The playbook's clock, plus the loop's call_soon (run when the test says)."""

    def __init__(self) -> None:
        super().__init__()
        self.soon: list[Callable[[], None]] = []

    def call_soon(self, f: Callable[[], None]) -> None:
        self.soon.append(f)

    def run_soon(self) -> None:
        soon, self.soon = self.soon, []
        for f in soon:
            f()


def get(token: str = "") -> bytes:
    extra = f"X-DLBA-Class: {token}\r\n" if token else ""
    return f"GET /x HTTP/1.1\r\nHost: a\r\n{extra}\r\n".encode()


def setup(tmp: Path) -> tuple[ProxyContext, SoonClock]:
    cfg = make_config(tmp, backends=1)
    cfg = dataclasses.replace(
        cfg, backends=(dataclasses.replace(cfg.backends[0], maxconn=1),),
        pools=(PoolConfig("default", queue_timeout_s=2.0),),
        services=(ServiceConfig("svc", ("192.0.2.0/24",), ports=(80,)),),
        classes=(ClassConfig("gold", 0, token=True),))
    clock = SoonClock()
    return ProxyContext(cfg, "n1", cast(Any, clock)), clock


def test_a_freed_slot_goes_to_the_higher_class_and_a_wait_runs_out(tmp_path: Path) -> None:
    ctx, clock = setup(tmp_path)
    first, low, high = (Playbook(ctx, clock) for _ in range(3))
    first >> data(get()) << ("open", 1) >> connected("b1") << ("b_write", "b1", Starts(b"GET"))
    low >> data(get())  # the slot is taken: it waits
    high >> data(get(make_token(SECRET, "gold", 10**10)))
    low.idle()
    high.idle()
    first >> response("b1") << ("write", Has(b"200")) << ("b_release", "b1")
    clock.run_soon()  # the freed slot: gold, which came later, goes first
    high << ("open", 1)
    low.idle()
    clock.now += 2.5
    ctx.services.tick(clock.now)
    low << ("write", Has(b"503", b"Retry-After: 2\r\n")) << ("close",)
    view = ctx.services.to_json()["pools"]["default"]
    assert view["classes"]["default"]["shed"] == 1 and view["classes"]["gold"]["shed"] == 0
    assert view["slots_used"] == 1 and view["queue_depth"] == 0


def test_a_client_that_leaves_frees_its_place_and_its_slot(tmp_path: Path) -> None:
    ctx, clock = setup(tmp_path)
    first, waiting = Playbook(ctx, clock), Playbook(ctx, clock)
    first >> data(get()) << ("open", 1)
    waiting >> data(get())
    waiting.session.client_closed()  # gone while it waits
    first.session.client_closed()  # gone while connecting: its slot frees on the next tick
    ctx.services.tick(clock.now)
    view = ctx.services.to_json()["pools"]["default"]
    assert view["slots_used"] == 0
    third = Playbook(ctx, clock)
    third >> data(get()) << ("open", 1)
