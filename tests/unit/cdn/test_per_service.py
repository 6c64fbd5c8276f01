"""CDN offload per virtual service (pure parts): `[services.cdn]` read and checked with every
problem named by file and key, each service inheriting what it does not set from `[cdn]`; a
request's service by the VIP dialled; figures, choice, base and cached pages kept per service."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from dlba.cdn.chooser import Choice
from dlba.cdn.page_filter import PageFilter, SampleFilter
from dlba.cdn.popularity import Figure
from dlba.cdn.runtime import CdnRuntime, runtime_for, service_settings
from dlba.cdn.settings import CdnConfig, CdnOverride, per_service
from dlba.config import ConfigErrors, parse_config
from dlba.config.services import ServiceConfig
from dlba.services.routing import ServiceRouter

BASE = ('[[nodes]]\nname = "n1"\naddress = "127.0.0.1"\nlisten_tls = []\n'
        '[[backends]]\nid = 1\naddress = "127.0.0.1:8080"\n[cluster]\nvip = "10.0.0.1"\n')
GLOBAL = '[cdn]\nenabled = true\nbase = "https://g.test"\ntop = 7\ntypes = ["*.css"]\n'


def _services(*tables: str) -> str:
    out = ""
    for i, extra in enumerate(tables):
        out += (f'[[services]]\nname = "s{i}"\nvips = ["10.0.0.{i + 1}"]\nports = [80]\n'
                f"{extra}\n")
    return out


def test_services_inherit_cdn_and_override_their_own_keys(tmp_path: Path) -> None:
    cfg = parse_config(BASE + GLOBAL + _services(
        "", '[services.cdn]\nbase = "https://s1.test"\ntop = 2\n',
        '[services.cdn]\nenabled = false\n', '[services.cdn]\ntypes = ["*.png", "*.js"]\n'),
        tmp_path / "c.toml", check_files=False)
    got = service_settings(cfg)
    g = cfg.cdn
    assert got["s0"] == g  # nothing of its own: [cdn] as it is
    assert got["s1"] == CdnConfig(True, "https://s1.test", ("*.css",), 2, g.sample, g.cache_mb)
    assert got["s2"].enabled is False and got["s2"].base == "https://g.test"
    assert got["s3"].types == ("*.png", "*.js") and got["s3"].top == 7


def test_todays_configs_read_as_before(tmp_path: Path) -> None:
    """No [[services]]: the implicit service "default" with [cdn] exactly; no [cdn]: off."""
    cfg = parse_config(BASE + GLOBAL, tmp_path / "c.toml", check_files=False)
    assert service_settings(cfg) == {"default": cfg.cdn}
    assert cfg.services[0].cdn == CdnOverride()
    off = parse_config(BASE, tmp_path / "c.toml", check_files=False)
    assert runtime_for(off, None) is None
    assert per_service(CdnConfig(), []) == {"default": CdnConfig()}


def test_one_service_on_while_cdn_is_off_makes_a_runtime(tmp_path: Path) -> None:
    cfg = parse_config(BASE + _services("", "[services.cdn]\nenabled = true\n"),
                       tmp_path / "c.toml", check_files=False)
    rt = runtime_for(cfg, None)
    assert isinstance(rt, CdnRuntime)
    assert [(n, s.cfg.enabled) for n, s in rt.services.items()] == [("s0", False), ("s1", True)]


def test_services_cdn_checks_name_file_key_and_reason(tmp_path: Path) -> None:
    path = tmp_path / "c.toml"
    with pytest.raises(ConfigErrors) as e:
        parse_config(BASE + _services(
            '[services.cdn]\nbase = "ftp://x"\ntop = 0\ntypes = "*.css"\nsample = 0.5\n',
            '[services.cdn]\nenabled = "yes"\ntypes = [""]\n', 'cdn = 3\n'),
            path, check_files=False)
    problems = {p.key: p.reason for p in e.value.problems}
    assert set(problems) == {
        "services[0].cdn.base", "services[0].cdn.top", "services[0].cdn.types",
        "services[0].cdn.sample",  # array-wide only: an unknown key in a service
        "services[1].cdn.enabled", "services[1].cdn.types", "services[2].cdn"}
    assert "ftp://x" in problems["services[0].cdn.base"]
    assert problems["services[0].cdn.sample"] == "unknown key"
    assert problems["services[2].cdn"] == "expected a table"
    assert all(p.file == str(path) for p in e.value.problems)


# --- the runtime: a request's service, its choice, base and pages --------------------------

def _runtime() -> CdnRuntime:
    g = CdnConfig(enabled=True, base="https://g.test", sample=1.0)
    return CdnRuntime(g, {"shop": g, "api": CdnOverride(base="https://api-cdn.test").apply(g)},
                      rng=lambda: 0.0)


def _router() -> ServiceRouter:
    return ServiceRouter([ServiceConfig("shop", ("10.0.0.1",), (80,), ()),
                          ServiceConfig("api", ("10.0.0.2",), (80,), ())])


def _ex(router: ServiceRouter, vip: str, target: bytes) -> Any:
    io = SimpleNamespace(local_address=lambda: (vip, 80))
    client = SimpleNamespace(io=io, scheme=b"http", peer_ip="192.0.2.7", closing=False)
    ctx = SimpleNamespace(services=SimpleNamespace(router=router), hsts=b"")
    return SimpleNamespace(method=b"GET", upgrade=False, target=target, client=client, ctx=ctx,
                           headers=[(b"Host", b"www.test")], cdn=None, client_keep_alive=True,
                           http11=True)


def _page(rt: CdnRuntime, router: ServiceRouter, vip: str) -> tuple[PageFilter, bytes]:
    ex = _ex(router, vip, b"/page")
    assert rt.on_request(ex) is None
    f = ex.cdn
    assert isinstance(f, PageFilter)
    f.head(200, b"OK", [(b"Content-Type", b"text/html"), (b"Cache-Control", b"max-age=60")],
           False, True)
    return f, f.body(b'<img src="/a.png">') + f.finish()


def test_each_service_samples_chooses_rewrites_and_caches_its_own() -> None:
    rt, router = _runtime(), _router()
    ex = _ex(router, "10.0.0.2", b"/a.png")
    rt.on_request(ex)
    assert isinstance(ex.cdn, SampleFilter) and ex.cdn.rt is rt.services["api"]
    ex.cdn.head(200, b"OK", [], False, True)
    ex.cdn.body(b"x" * 100)
    ex.cdn.finish()
    figures = rt.figures()
    assert figures["shop"] == [] and [f.path for f in figures["api"]] == ["/a.png"]

    a_png = Choice((Figure("/a.png", 100, 1, 0, True),))
    rt.set_choices({"shop": a_png, "api": a_png})
    f_shop, shop_body = _page(rt, router, "10.0.0.1")
    f_api, api_body = _page(rt, router, "10.0.0.2")
    assert shop_body == b'<img src="https://g.test/a.png">'
    assert api_body == b'<img src="https://api-cdn.test/a.png">'
    assert f_shop.key != f_api.key and rt.cache.pages == 2  # same Host and path, two pages

    hit = rt.on_request(_ex(router, "10.0.0.2", b"/page"))
    assert hit is not None and hit.endswith(api_body) and b"X-Dlba-Cdn: hit" in hit
    assert rt.services["api"].cache_hits == 1 and rt.services["shop"].cache_hits == 0

    # A new choice for shop drops shop's pages only.
    rt.set_choices({"shop": Choice((Figure("/b.png", 1, 1, 0, True),)), "api": a_png})
    assert rt.cache.pages == 1
    assert rt.cache.get(f_api.key, []) is not None and rt.cache.get(f_shop.key, []) is None
    # A service left out of the choices has nothing chosen (its pages go untouched).
    rt.set_choices({"shop": a_png})
    assert rt.services["api"].chosen == {} and rt.cache.get(f_api.key, []) is None


def test_reconfigure_keeps_what_did_not_change() -> None:
    rt, router = _runtime(), _router()
    a_png = Choice((Figure("/a.png", 100, 1, 0, True),))
    rt.set_choices({"shop": a_png, "api": a_png})
    f_shop, _ = _page(rt, router, "10.0.0.1")
    f_api, _ = _page(rt, router, "10.0.0.2")
    shop = rt.services["shop"]
    g = rt.cfg
    rt.configure(g, {"shop": g, "api": CdnOverride(base="https://new.test").apply(g)})
    assert rt.services["shop"] is shop and shop.choice is a_png
    assert rt.cache.get(f_shop.key, []) is not None  # shop's settings stayed
    assert rt.cache.get(f_api.key, []) is None  # api's base moved: its pages were wrong
    rt.configure(g, {"shop": g})  # api removed
    assert list(rt.services) == ["shop"] and rt.cache.pages == 1
    off = _ex(router, "10.0.0.1", b"/page")
    rt.configure(g, {"shop": CdnOverride(enabled=False).apply(g)})
    assert rt.on_request(off) is None and off.cdn is None


def test_unknown_vip_falls_back_like_the_router() -> None:
    rt, router = _runtime(), _router()
    ex = _ex(router, "127.0.0.1", b"/a.png")
    rt.on_request(ex)
    assert ex.cdn.rt is rt.services["shop"]  # the first service with that port, as routing
