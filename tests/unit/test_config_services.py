"""dlba/config/services.py: [[services]], [[pools]], [[classes]], pool/maxconn on back ends;
today's single-VIP file as one implicit service, every problem named by key and reason."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from dlba.config import ConfigError, parse_config
from dlba.config.services import DEFAULT_POOL, host_matches
from tests.unit.test_config import FILES, config_text

BASE = config_text(cluster='[cluster]\nvip = "198.18.0.100"\nsecret_file = "certs/cluster.key"\n')

FULL = BASE + '''
[[pools]]
name = "web"
policy = "url_hash"
url_hash_paths = ["/static/"]
health = "/health"
queue_timeout_s = 2

[[pools]]
name = "api"

[[backends]]
id = 4
address = "10.0.1.104:8080"
pool = "web"
maxconn = 50

[[backends]]
id = 5
address = "10.0.1.105:8080"
pool = "api"

[[services]]
name = "shop"
vips = ["198.18.0.100", "198.18.0.112/28"]
ports = [80, 443]
tls_ports = [443]
pool = "web"
hsts = false
redirect_https = true
cookie = "SHOP"

[[services.routes]]
host = "static.example.test"
path_prefix = "/static/"
pool = "default"

[[services.routes]]
host = "*.api.example.test"
pool = "api"

[[services.certs]]
names = ["static.example.test"]
cert = "certs/node.pem"
key = "certs/node.key"

[[services]]
name = "api"
vips = ["198.18.0.200"]
ports = [8443]
tls_ports = [8443]
pool = "api"

[[classes]]
name = "gold"
priority = 0
vips = ["198.18.0.112/30"]
pools = ["web"]
weight = 300

[[classes]]
name = "bronze"
priority = 2
sources = ["10.9.0.0/16"]
token = true
'''


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "certs").mkdir()
    for name in FILES:
        (tmp_path / "certs" / name).write_text("00ff\n")
    return tmp_path


def problems(folder: Path, text: str) -> list[tuple[str, str]]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, folder / "dlba.toml")
    return [(p.key, p.reason) for p in info.value.problems]


def test_single_vip_file_is_one_implicit_service_and_the_default_pool(folder: Path) -> None:
    cfg = parse_config(BASE, folder / "dlba.toml")
    (svc,) = cfg.services
    assert svc.implicit and svc.vips == ("198.18.0.100",) and svc.pool == DEFAULT_POOL
    assert svc.ports == ()  # every port the [[ports]] rules take, as before
    assert [p.name for p in cfg.pools] == [DEFAULT_POOL]
    assert cfg.pools[0].policy == cfg.scheduling.policy
    assert all(b.pool == DEFAULT_POOL and b.maxconn == 0 for b in cfg.backends)
    assert cfg.vip_addresses() == ("198.18.0.100",)
    assert cfg.classes == ()


def test_every_key_is_read(folder: Path) -> None:
    cfg = parse_config(FULL, folder / "dlba.toml")
    shop, api = cfg.services
    assert shop.vips == ("198.18.0.100", "198.18.0.112/28")
    assert (shop.hsts, shop.redirect_https, shop.cookie) == (False, True, "SHOP")
    assert api.hsts and api.cookie == "DLBASERVER"  # [tls] hsts and [persistence] cookie
    assert api.ports == api.tls_ports == (8443,)
    assert len(cfg.vip_addresses()) == 1 + 16 + 1
    assert shop.route("static.example.test", "/static/a.css") == DEFAULT_POOL
    assert shop.route("static.example.test", "/index") == "web"
    assert shop.route("x.api.example.test:443", "/") == "api"
    assert shop.certs[0].cert == folder / "certs" / "node.pem"
    web = cfg.pool("web")
    assert web is not None and (web.policy, web.health, web.queue_timeout_s) == (
        "url_hash", "/health", 2.0)
    assert [b.id for b in cfg.pool_backends("web")] == [4]
    assert cfg.backend(4) is not None and cfg.backend(4).maxconn == 50  # type: ignore[union-attr]
    gold, bronze = cfg.classes
    assert (gold.priority, gold.vips, gold.pools, gold.weight) == (0, ("198.18.0.112/30",),
                                                                  ("web",), 300)
    assert (bronze.sources, bronze.token, bronze.pools) == (("10.9.0.0/16",), True, ())
    assert ("services[0].certs[0].cert", shop.certs[0].cert) in cfg.files()


@pytest.mark.parametrize(("old", "new", "key", "reason"), [
    ('vips = ["198.18.0.200"]', 'vips = ["198.18.0.0/23"]', "services[1].vips",
     "wider than /24"),
    ('vips = ["198.18.0.200"]', 'vips = ["198.18.0.201/28"]', "services[1].vips",
     "not an IPv4 address or prefix"),
    ('vips = ["198.18.0.200"]', 'vips = ["::1"]', "services[1].vips", "not an IPv4"),
    ('vips = ["198.18.0.200"]', "vips = []", "services[1].vips", "at least one VIP"),
    ("ports = [8443]", "ports = [0]", "services[1].ports", "not a port: 0"),
    ("ports = [8443]", "ports = [8443, 8443]", "services[1].ports", "listed twice"),
    ("tls_ports = [8443]", "tls_ports = [9443]", "services[1].tls_ports", "not in ports"),
    ('pool = "api"\n\n[[classes]]', 'pool = "nope"\n\n[[classes]]', "services[1].pool",
     "no pool named 'nope'"),
    ('host = "*.api.example.test"', 'host = "a*.b"', "services[0].routes[1].host",
     "expected a host name"),
    ('path_prefix = "/static/"', 'path_prefix = "static"', "services[0].routes[0].path_prefix",
     "starting with '/'"),
    ('host = "*.api.example.test"\npool = "api"', 'pool = "api"', "services[0].routes[1].host",
     "needs host, path_prefix or both"),
    ('host = "*.api.example.test"\npool = "api"', 'host = "a.b"\npool = "x"',
     "services[0].routes[1].pool", "no pool named 'x'"),
    ('names = ["static.example.test"]\n', "", "services[0].certs[0].names", "missing"),
    ('cookie = "SHOP"', 'cookie = "a b"', "services[0].cookie", "not a cookie name"),
    ('name = "api"\n\n[[backends]]', 'name = "web"\n\n[[backends]]', "pools[1].name",
     "duplicate value 'web'"),
    ('policy = "url_hash"', 'policy = "random"', "pools[0].policy", "expected one of"),
    ("queue_timeout_s = 2", "queue_timeout_s = -1", "pools[0].queue_timeout_s", ">= 0"),
    ('health = "/health"', 'health = "health"', "pools[0].health", "starting with '/'"),
    ('pool = "web"\nmaxconn = 50', 'pool = "webb"\nmaxconn = 50', "backends[1].pool",
     "no pool named 'webb'"),
    ("maxconn = 50", "maxconn = -1", "backends[1].maxconn", ">= 0"),
    ('vips = ["198.18.0.200"]\nports = [8443]', 'vips = ["198.18.0.112"]\nports = [80, 8443]',
     "services[1].vips", "198.18.0.112:80 is already served by service 'shop'"),
    ('vips = ["198.18.0.100", "198.18.0.112/28"]', 'vips = ["198.18.0.112/28"]', "cluster.vip",
     "198.18.0.100 is not a VIP of any service"),
    ('vips = ["198.18.0.112/30"]', 'vips = ["198.18.0.96/27"]', "classes[0].vips",
     "not inside a service's VIPs"),
    ("priority = 0", "priority = -1", "classes[0].priority", "between 0"),
    ("priority = 0\n", "", "classes[0].priority", "missing"),
    ('pools = ["web"]', 'pools = ["gone"]', "classes[0].pools", "no pool named 'gone'"),
    ('sources = ["10.9.0.0/16"]', 'sources = ["10.9.0.0/66"]', "classes[1].sources",
     "not a network"),
    ("weight = 300", "weight = 0", "classes[0].weight", "must be > 0"),
    ('name = "bronze"', 'name = "gold"', "classes[1].name", "duplicate value 'gold'"),
    ("token = true", "tokn = true", "classes[1].tokn", "unknown key"),
])
def test_bad_value_is_named(folder: Path, old: str, new: str, key: str, reason: str) -> None:
    assert FULL.count(old) >= 1, old
    found = problems(folder, FULL.replace(old, new, 1))
    assert any(k == key and reason in r for k, r in found), found


def test_same_vip_on_other_ports_is_another_service(folder: Path) -> None:
    text = FULL.replace('vips = ["198.18.0.200"]', 'vips = ["198.18.0.113"]')
    cfg = parse_config(text, folder / "dlba.toml")
    assert cfg.vip_addresses().count("198.18.0.113") == 1


def test_the_data_plane_limits_are_checked(folder: Path) -> None:
    many = "".join(f'[[services]]\nname = "s{i}"\nvips = ["10.{i}.0.0/24"]\n' for i in range(17))
    assert ("services", "4352 VIP addresses, at most 4096") in problems(folder, BASE + many)
    ports = ", ".join(str(p) for p in range(1000, 1300))
    wide = f'[[services]]\nname = "w"\nvips = ["198.18.0.0/24"]\nports = [{ports}]\n'
    assert ("services", "76800 VIP:port pairs, at most 65536") in problems(
        folder, BASE.replace('vip = "198.18.0.100"\n', "") + wide)


def test_several_problems_are_all_reported(folder: Path) -> None:
    text = (FULL.replace('policy = "url_hash"', 'policy = "x"')
            .replace('ports = [8443]', 'ports = [70000]')
            .replace("priority = 2", 'priority = "low"'))
    keys = {k for k, _ in problems(folder, text)}
    assert {"pools[0].policy", "services[1].ports", "classes[1].priority"} <= keys


@given(st.sampled_from(["", "a.test", "*.a.test"]),
       st.from_regex(r"[a-z]{1,4}(\.[a-z]{1,4}){0,3}", fullmatch=True))
def test_host_patterns(pattern: str, host: str) -> None:
    got = host_matches(pattern, host)
    if not pattern:
        assert got
    elif pattern.startswith("*."):
        assert got == (host.endswith(".a.test"))
    else:
        assert got == (host == "a.test")
    assert host_matches(pattern, host.upper() + ":8080") == got


@given(st.integers(24, 32), st.integers(0, 2**32 - 1))
def test_prefix_expands_to_every_address(plen: int, raw: int) -> None:
    net = ipaddress.IPv4Network((raw, plen), strict=False)
    from dlba.config.services import ServiceConfig
    svc = ServiceConfig("s", (str(net),))
    assert len(svc.addresses()) == net.num_addresses
    assert svc.addresses()[0] == str(net.network_address)
