"""The hub's decision: every fresh node report and this node's own figures, stale reports and
workers of other nodes left out; the decider is the scheduler, else the first node; figures,
choices and counters kept per virtual service."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from aiohttp import ClientSession, web

from dlba.cdn.chooser import Choice
from dlba.cdn.hub import STALE_S, CdnHub, choices_from_wire
from dlba.cdn.popularity import Figure
from dlba.cdn.runtime import CdnRuntime, service_settings
from dlba.cdn.settings import CdnConfig, CdnOverride


def _service(name: str, **cdn: Any) -> SimpleNamespace:
    return SimpleNamespace(name=name, cdn=CdnOverride(**cdn))


def _hub(scheduler: str | None = None, services: tuple[SimpleNamespace, ...] = ()
         ) -> tuple[CdnHub, CdnRuntime]:
    cfg = CdnConfig(enabled=True, types=("*.css", "*.png"), top=2)
    config = SimpleNamespace(cdn=cfg, services=services or (_service("default"),),
                             nodes=[SimpleNamespace(name="n1"), SimpleNamespace(name="n2")])
    rt = CdnRuntime(cfg, service_settings(config))  # type: ignore[arg-type]
    ctx: Any = SimpleNamespace(config=config, cdn=rt)
    return CdnHub(ctx, "n1", "token", lambda: scheduler), rt


def test_decide_merges_fresh_reports_only() -> None:
    hub, rt = _hub()
    assert hub.decider() == "n1"
    rt.services["default"].sample("/local.css", 100, True)
    now = time.monotonic()
    d = "default"
    hub.reports["node:n2"] = (now, {d: [Figure("/peer.png", 500, 5, 0, True),
                                        Figure("/local.css", 50, 1, 0, True)]}, {})
    hub.reports["node:n3"] = (now - STALE_S - 1, {d: [Figure("/gone.css", 9000, 9, 0, True)]},
                              {})
    hub.reports["worker:7"] = (now, {d: [Figure("/w.css", 120, 1, 0, True)]},
                               {d: {"rewritten": 3}})
    hub.reports["node:n1"] = (now, {d: [Figure("/self.css", 9000, 1, 0, True)]}, {})  # old self
    choices = hub.decide()
    assert [(f.path, f.bytes) for f in choices[d].objects] == [("/peer.png", 500),
                                                               ("/local.css", 150)]
    hub._adopt(choices)
    assert rt.services[d].choice.version == choices[d].version
    assert hub.counters()[d]["rewritten"] == 3


def test_the_scheduler_decides_and_a_private_object_never_goes() -> None:
    hub, rt = _hub(scheduler="n2")
    assert hub.decider() == "n2"
    rt.services["default"].sample("/a.css", 10_000, False)
    rt.services["default"].sample("/b.css", 10, True)
    assert [f.path for f in hub.decide()["default"].objects] == ["/b.css"]


def test_each_service_chooses_from_its_own_figures_with_its_own_settings() -> None:
    """One path on two services is two objects; a service's types and top are its own; a
    service with the offload off has no choice; the answer on the wire round-trips."""
    shop, api, off = (_service("shop"), _service("api", types=("*.png",), top=1,
                                                   base="https://img.test"),
                      _service("off", enabled=False))
    hub, rt = _hub(services=(shop, api, off))
    now = time.monotonic()
    hub.reports["node:n2"] = (now, {
        "shop": [Figure("/x.css", 900, 3, 0, True), Figure("/y.png", 10, 1, 0, True)],
        "api": [Figure("/x.css", 5000, 9, 0, True), Figure("/y.png", 20, 1, 0, True),
                Figure("/z.png", 30, 1, 0, True)],
        "off": [Figure("/x.css", 9000, 9, 0, True)]}, {})
    rt.services["shop"].sample("/only-shop.png", 50, True)
    choices = hub.decide()
    assert set(choices) == {"shop", "api"}
    assert [f.path for f in choices["shop"].objects] == ["/x.css", "/only-shop.png"]
    assert [(f.path, f.bytes) for f in choices["api"].objects] == [("/z.png", 30)]
    hub._adopt(choices)
    assert rt.services["api"].map_url("/z.png", "/", "h") == ("https://img.test/z.png", "/z.png")
    assert rt.services["shop"].map_url("/z.png", "/", "h") is None
    assert rt.services["off"].choice.objects == ()
    wire = {k: c.to_wire() for k, c in choices.items()}
    assert {k: c.paths for k, c in choices_from_wire(wire).items()} == {
        k: c.paths for k, c in choices.items()}
    view = hub.status()
    assert [(s["service"], s["enabled"], len(s["objects"])) for s in view["services"]] == [
        ("shop", True, 2), ("api", True, 1), ("off", False, 0)]
    assert view["services"][1]["objects"][0]["cdn_url"] == "https://img.test/z.png"
    assert {(o["service"], o["path"]) for o in view["objects"]} == {
        ("shop", "/x.css"), ("shop", "/only-shop.png"), ("api", "/z.png")}
    metrics = {(s.name, tuple(s.labels.values())): s.value
               for m in hub.metrics() for s in m.samples}
    assert metrics[("dlba_cdn_chosen_objects", ("n1", "api"))] == 1
    assert metrics[("dlba_cdn_sampled_total", ("n1", "shop"))] == 1


async def test_reports_and_answers_of_the_release_before_services_are_understood() -> None:
    """Rolling upgrade: a node (or draining worker) of the previous release posts its figures
    alone and reads `choice`; a decider of the previous release answers `choice` alone. Both
    mean the first service. Over a real HTTP server on 127.0.0.1."""
    hub, _ = _hub(services=(_service("shop"), _service("api")))
    hub._adopt({"shop": Choice((Figure("/a.css", 10, 1, 0, True),))})
    old_answer = {"ok": True, "choice": Choice((Figure("/old.css", 5, 1, 0, True),)).to_wire()}
    posted: list[Any] = []

    async def old_decider(request: web.Request) -> web.Response:
        posted.append(await request.json())
        return web.json_response(old_answer)

    app = web.Application()
    app.router.add_post("/cdn/report", hub._report)
    app.router.add_post("/old/cdn/report", old_decider)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        async with ClientSession() as s:
            old_report = {"source": "node:n2", "figures": [["/x.css", 7, 1, 0, True]]}
            async with s.post(f"http://127.0.0.1:{port}/cdn/report", json=old_report) as r:
                assert r.status == 200
                answer = await r.json()
            assert Choice.from_wire(answer["choice"]).paths == {"/a.css"}
            assert set(answer["choices"]) == {"shop"}
            assert [f.path for f in hub.reports["node:n2"][1]["shop"]] == ["/x.css"]

            hub.session = s
            config: Any = hub.ctx.config
            config.admin_url = lambda _i: f"http://127.0.0.1:{port}/old"
            choices = await hub._post("n2", {"shop": [Figure("/y.css", 3, 1, 0, True)]})
            assert choices is not None and choices["shop"].paths == {"/old.css"}
            assert posted[0]["figures"] == [["/y.css", 3, 1, 0, True]]
    finally:
        await runner.cleanup()
