"""What a config derives from its services and pools: the nodes' service listeners, each
back end's health path, and which service and pool a request goes to."""

from __future__ import annotations

from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from dlba.config import HostPort, parse_config
from dlba.services.routing import ServiceRouter, host_of

BASE = """
[cluster]
vip = "198.18.0.100"

[[nodes]]
name = "n1"
address = "198.18.0.11"

[tls]
cert = "c.pem"
key = "k.pem"

[[pools]]
name = "web"
health = "/health"

[[backends]]
id = 1
address = "10.0.0.1:80"

[[backends]]
id = 2
address = "10.0.0.2:80"
pool = "web"

[[backends]]
id = 3
address = "10.0.0.3:80"
pool = "web"
health = "/own"
"""

SERVICES = """
[[services]]
name = "shop"
vips = ["198.18.0.100", "198.18.0.112/28"]
ports = [80, 443, 8443]
tls_ports = [443, 8443]
pool = "web"

[[services.routes]]
host = "*.static.test"
path_prefix = "/s/"
pool = "default"

[[services]]
name = "api"
vips = ["198.18.0.200"]
ports = [8080]
tls_ports = []
"""


def cfg(text: str):  # type: ignore[no-untyped-def]
    return parse_config(text, Path("/x/dlba.toml"), check_files=False)


def test_single_vip_config_listens_as_before() -> None:
    node = cfg(BASE).node("n1")
    assert node.listen == (HostPort("198.18.0.100", 80),)
    assert node.listen_tls == (HostPort("198.18.0.100", 443),)


def test_service_ports_open_on_the_wildcard() -> None:
    text = BASE + SERVICES
    node = cfg(text).node("n1")
    assert HostPort("0.0.0.0", 80) in node.listen and HostPort("0.0.0.0", 8080) in node.listen
    assert {HostPort("0.0.0.0", 443), HostPort("0.0.0.0", 8443)} <= set(node.listen_tls)


def test_pool_health_is_its_backends_unless_their_own() -> None:
    c = cfg(BASE)
    assert [b.health for b in c.backends] == ["", "/health", "/own"]


def test_service_by_vip_and_port_and_routes() -> None:
    c = cfg(BASE + SERVICES)
    r = ServiceRouter(c.services)
    shop = r.service_for("198.18.0.120", 443)
    assert shop is not None and shop.name == "shop"
    assert shop.route("a.static.test", "/s/x.css") == "default"
    assert shop.route("a.static.test", "/x") == "web"
    assert shop.route("static.test", "/s/x") == "web"  # *.suffix is not the bare suffix
    api = r.service_for("::ffff:198.18.0.200", 8080)
    assert api is not None and api.name == "api"
    # An address no service names (the node's own): the first service with that port.
    other = r.service_for("198.18.0.11", 8080)
    assert other is not None and other.name == "api"
    assert r.ports() == [(80, False), (443, True), (8443, True), (8080, False)]


@given(st.from_regex(r"[a-z]{1,8}(\.[a-z]{1,8}){0,2}", fullmatch=True),
       st.one_of(st.none(), st.integers(1, 65535)))
def test_host_header_without_port(host: str, port: int | None) -> None:
    value = host.upper() + (f":{port}" if port else "")
    assert host_of([(b"X", b"y"), (b"HOST", value.encode())]) == host
