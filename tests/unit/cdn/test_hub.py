"""The hub's decision: every fresh node report and this node's own figures, stale reports and
workers of other nodes left out; the decider is the scheduler, else the first node."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from dlba.cdn.hub import STALE_S, CdnHub
from dlba.cdn.popularity import Figure
from dlba.cdn.runtime import CdnRuntime
from dlba.cdn.settings import CdnConfig


def _hub(scheduler: str | None = None) -> tuple[CdnHub, CdnRuntime]:
    cfg = CdnConfig(enabled=True, types=("*.css", "*.png"), top=2)
    rt = CdnRuntime(cfg)
    config = SimpleNamespace(cdn=cfg, nodes=[SimpleNamespace(name="n1"),
                                             SimpleNamespace(name="n2")])
    ctx: Any = SimpleNamespace(config=config, cdn=rt)
    return CdnHub(ctx, "n1", "token", lambda: scheduler), rt


def test_decide_merges_fresh_reports_only() -> None:
    hub, rt = _hub()
    assert hub.decider() == "n1"
    rt.sample("/local.css", 100, True)
    now = time.monotonic()
    hub.reports["node:n2"] = (now, [Figure("/peer.png", 500, 5, 0, True),
                                    Figure("/local.css", 50, 1, 0, True)], {})
    hub.reports["node:n3"] = (now - STALE_S - 1, [Figure("/gone.css", 9000, 9, 0, True)], {})
    hub.reports["worker:7"] = (now, [Figure("/w.css", 120, 1, 0, True)], {"rewritten": 3})
    hub.reports["node:n1"] = (now, [Figure("/self.css", 9000, 1, 0, True)], {})  # old self
    choice = hub.decide()
    assert [(f.path, f.bytes) for f in choice.objects] == [("/peer.png", 500),
                                                           ("/local.css", 150)]
    hub._adopt(choice)
    assert rt.choice.version == choice.version and hub.counters()["rewritten"] == 3


def test_the_scheduler_decides_and_a_private_object_never_goes() -> None:
    hub, rt = _hub(scheduler="n2")
    assert hub.decider() == "n2"
    rt.sample("/a.css", 10_000, False)
    rt.sample("/b.css", 10, True)
    assert [f.path for f in hub.decide().objects] == ["/b.css"]
