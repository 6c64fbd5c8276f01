"""Virtual services, pools and client classes (seed 002): their model and checks.

`[[services]]` name the VIPs (addresses or IPv4 prefixes up to /24) and ports the array
answers, each with a default pool, ordered routes, SNI certificates, HSTS, redirect and cookie;
`[[pools]]` group `[[backends]]` (a back end without `pool` is in "default"); `[[classes]]`
say how a client is recognised (the VIP it dialled, its source, a signed token) and its
priority. A config without `[[services]]` is one implicit service on `cluster.vip` that takes
every port the `[[ports]]` rules take, in front of the pool "default" of every back end, so
today's single-VIP files behave as before.

Pure: reading (through dlba.config.reader's Reader) and cross checks, no I/O. The model
classes import nothing from dlba.config.model, which imports them.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from dlba.cdn.config_read import read_cdn_override
from dlba.cdn.settings import CdnOverride
from dlba.config.reader import Problems, Reader, networks, unique
from dlba.config.sni_cert import SniCert, read_sni_cert

DEFAULT_POOL = "default"
MAX_PREFIX_HOSTS = 256  # prefixes up to /24: each address is one entry of the data plane's map
MAX_VIPS = 4096  # every address of every service (DLBA_MAX_VIPS in scheduler/bpf/dlba_tc.h)
MAX_VIP_PORTS = 65536  # (address, port) pairs the services name (DLBA_MAX_VIP_PORTS)
POOL_POLICIES = ("least_conn", "weighted_rr", "response_time", "url_hash", "p2c")


@dataclass(frozen=True)
class PoolConfig:
    name: str
    policy: str = "least_conn"
    url_hash_paths: tuple[str, ...] = ()
    health: str = ""  # health-check path of its back ends (a back end's own `health` wins)
    queue_timeout_s: float = 5.0  # a request waits this long for a free slot, then 503


@dataclass(frozen=True)
class RouteConfig:
    """First match wins. host: "" (any), exact, or "*.suffix"; path_prefix: "" (any) or "/..."."""

    host: str
    path_prefix: str
    pool: str

    def matches(self, host: str, path: str) -> bool:
        return host_matches(self.host, host) and path.startswith(self.path_prefix)


@dataclass(frozen=True)
class ServiceConfig:
    name: str
    vips: tuple[str, ...]  # normalised: "a.b.c.d" or "a.b.c.d/n"
    ports: tuple[int, ...] = (80, 443)  # implicit service: () = every port the port rules take
    tls_ports: tuple[int, ...] = (443,)
    pool: str = DEFAULT_POOL
    hsts: bool = True
    redirect_https: bool = False
    cookie: str = "DLBASERVER"
    routes: tuple[RouteConfig, ...] = ()
    certs: tuple[SniCert, ...] = ()
    implicit: bool = False  # made from cluster.vip: the file has no [[services]]
    cdn: CdnOverride = field(default_factory=CdnOverride)  # [services.cdn]: changes to [cdn]

    def networks(self) -> tuple[ipaddress.IPv4Network, ...]:
        return tuple(ipaddress.IPv4Network(v) for v in self.vips)

    def addresses(self) -> tuple[str, ...]:
        """Every address the service answers on (prefixes expanded, network and broadcast
        addresses included: a VIP prefix is a set of VIPs, not a subnet with hosts)."""
        return tuple(str(a) for n in self.networks() for a in _hosts(n))

    def route(self, host: str, path: str) -> str:
        """The pool of a request: the first matching route's, else the service's own."""
        for r in self.routes:
            if r.matches(host, path):
                return r.pool
        return self.pool


@dataclass(frozen=True)
class ClassConfig:
    name: str
    priority: int  # 0 is the highest
    vips: tuple[str, ...] = ()  # the VIP or VIP prefix the client dialled (seed 002)
    sources: tuple[str, ...] = ()  # client CIDRs
    token: bool = False  # a signed class token (`dlba class-token NAME`) names it
    pools: tuple[str, ...] = ()  # the pools it may reach; () = every pool
    weight: int = 100  # its share when classes of one priority compete


def host_matches(pattern: str, host: str) -> bool:
    """"" matches any host, "*.example.test" any name under it (not the bare suffix), else exact;
    case-insensitive, the port of a Host header ignored."""
    if not pattern:
        return True
    host = host.rsplit(":", 1)[0] if host.count(":") == 1 else host
    host = host.lower().rstrip(".")
    if pattern.startswith("*."):
        return host.endswith(pattern[1:].lower()) and len(host) > len(pattern) - 1
    return host == pattern.lower()


def _hosts(net: ipaddress.IPv4Network) -> Iterable[ipaddress.IPv4Address]:
    return (net[i] for i in range(net.num_addresses))


def read_pool(r: Reader, default_policy: str) -> PoolConfig:
    name = r.require("name", str) or ""
    policy = r.take("policy", str, default_policy)
    if policy not in POOL_POLICIES:
        r.report("policy", f"expected one of {', '.join(POOL_POLICIES)}, got {policy!r}")
    health = r.take("health", str, "")
    if health and not health.startswith("/"):
        r.report("health", f"expected a path starting with '/', got {health!r}")
    timeout = r.take("queue_timeout_s", float, PoolConfig.queue_timeout_s)
    if not 0 <= timeout < float("inf"):
        r.report("queue_timeout_s", "must be >= 0 and finite")
    return PoolConfig(name, policy, r.take_list("url_hash_paths"), health, timeout)


def read_vips(r: Reader, name: str, values: Sequence[str]) -> tuple[str, ...]:
    """IPv4 addresses or prefixes (/24 to /32, no host bits), normalised."""
    out: list[str] = []
    for text in values:
        try:
            net = ipaddress.IPv4Network(text)
        except ValueError as e:
            r.report(name, f"not an IPv4 address or prefix: {text!r} ({e})")
            continue
        if net.prefixlen < 24:
            r.report(name, f"prefix {text!r} is wider than /24")
            continue
        out.append(str(net.network_address) if net.prefixlen == 32 else str(net))
    return tuple(out)


def _ports(r: Reader, name: str, default: tuple[int, ...]) -> tuple[int, ...]:
    if name not in r.table:
        return default
    raw = r.table.pop(name)
    if not isinstance(raw, list) or not all(
            isinstance(p, int) and not isinstance(p, bool) for p in raw):
        r.report(name, "expected a list of ports")
        return default
    bad = [p for p in raw if not 0 < p < 65536]
    if bad:
        r.report(name, f"not a port: {bad[0]}")
    if len(set(raw)) != len(raw):
        r.report(name, "a port is listed twice")
    return tuple(p for p in raw if 0 < p < 65536)


def _route(r: Reader) -> RouteConfig:
    host = r.take("host", str, "")
    path = r.take("path_prefix", str, "")
    pool = r.require("pool", str) or ""
    if not host and not path:
        r.report("host", "a route needs host, path_prefix or both")
    rest = host[2:] if host.startswith("*.") else host
    if host and (not rest or "*" in rest or "/" in rest or ":" in rest):
        r.report("host", f"expected a host name or '*.suffix', got {host!r}")
    if path and not path.startswith("/"):
        r.report("path_prefix", f"expected a path starting with '/', got {path!r}")
    return RouteConfig(host, path, pool)


def read_service(r: Reader, base: Path, hsts: bool, cookie: str) -> ServiceConfig:
    """One [[services]] entry; hsts and cookie default to [tls] hsts and [persistence] cookie."""
    name = r.require("name", str) or ""
    if "vips" not in r.table:
        r.report("vips", "missing")
    vips = read_vips(r, "vips", r.take_list("vips"))
    if not vips and not r.problems.has(r.key("vips")):
        r.report("vips", "at least one VIP is needed")
    ports = _ports(r, "ports", (80, 443))
    if not ports and not r.problems.has(r.key("ports")):
        r.report("ports", "at least one port is needed")
    tls_ports = _ports(r, "tls_ports", tuple(p for p in (443,) if p in ports))
    for p in tls_ports:
        if p not in ports:
            r.report("tls_ports", f"port {p} is not in ports")
    own_cookie = r.take("cookie", str, cookie)
    if not own_cookie or not own_cookie.replace("_", "").isalnum():
        r.report("cookie", f"not a cookie name: {own_cookie!r}")
    routes, _ = r.each("routes", _route)
    certs, _ = r.each("certs", lambda c: read_sni_cert(c, base))
    return ServiceConfig(
        name, vips, ports, tls_ports, r.take("pool", str, DEFAULT_POOL), r.take("hsts", bool, hsts),
        r.take("redirect_https", bool, False), own_cookie, tuple(x for _, x in routes),
        tuple(x for _, x in certs), cdn=read_cdn_override(r.section("cdn")),
    )


def read_class(r: Reader) -> ClassConfig:
    name = r.require("name", str) or ""
    priority = r.require("priority", int)
    if priority is not None and not 0 <= priority < 2**16:
        r.report("priority", "must be between 0 (highest) and 65535")
    vips = read_vips(r, "vips", r.take_list("vips"))
    sources = r.take_list("sources")
    networks(r, "sources", sources, v4_only=False)
    return ClassConfig(
        name, priority or 0, vips, sources, r.take("token", bool, False), r.take_list("pools"),
        r.positive("weight", int, 100),
    )


def implicit_service(vip: str | None, hsts: bool, cookie: str) -> ServiceConfig:
    """Today's single-VIP array as a service: cluster.vip, every port the port rules take."""
    return ServiceConfig(DEFAULT_POOL, (vip,) if vip else (), (), (443,), DEFAULT_POOL, hsts,
                         False, cookie, implicit=True)


def effective_pools(declared: Sequence[PoolConfig], policy: str,
                    url_hash_paths: tuple[str, ...]) -> tuple[PoolConfig, ...]:
    """The declared pools, and "default" ([scheduling]'s policy) unless declared."""
    if any(p.name == DEFAULT_POOL for p in declared):
        return tuple(declared)
    return (PoolConfig(DEFAULT_POOL, policy, url_hash_paths), *declared)


@dataclass(frozen=True)
class Indexed:
    """What the cross checks see: entries that read cleanly, with their index in the file."""

    pools: list[tuple[int, PoolConfig]]
    backends: list[tuple[int, str, int]]  # index, pool, maxconn
    services: list[tuple[int, ServiceConfig]]
    classes: list[tuple[int, ClassConfig]]


def check_services(problems: Problems, vip: str | None, ix: Indexed) -> None:
    """Checks across entries: names unique, pools exist, no VIP:port served twice, class VIPs
    inside a service's, cluster.vip among the services' VIPs."""
    unique(problems, "pools", [(i, p.name) for i, p in ix.pools], "name")
    unique(problems, "services", [(i, s.name) for i, s in ix.services], "name")
    unique(problems, "classes", [(i, c.name) for i, c in ix.classes], "name")
    pools = {p.name for _, p in ix.pools} | {DEFAULT_POOL}
    for i, pool, _maxconn in ix.backends:
        if pool not in pools:
            problems.add(f"backends[{i}].pool", f"no pool named {pool!r}")
    for i, s in ix.services:
        if s.pool not in pools:
            problems.add(f"services[{i}].pool", f"no pool named {s.pool!r}")
        for j, route in enumerate(s.routes):
            if route.pool not in pools:
                problems.add(f"services[{i}].routes[{j}].pool", f"no pool named {route.pool!r}")
    for i, c in ix.classes:
        for p in c.pools:
            if p not in pools:
                problems.add(f"classes[{i}].pools", f"no pool named {p!r}")
    _check_vips(problems, vip, ix)


def _check_vips(problems: Problems, vip: str | None, ix: Indexed) -> None:
    owner: dict[tuple[str, int], str] = {}
    addresses: set[str] = set()
    for i, s in ix.services:
        for a in s.addresses():
            addresses.add(a)
            for port in s.ports:
                other = owner.setdefault((a, port), s.name)
                if other != s.name:
                    problems.add(f"services[{i}].vips",
                                 f"{a}:{port} is already served by service {other!r}")
                    return
    if len(addresses) > MAX_VIPS:
        problems.add("services", f"{len(addresses)} VIP addresses, at most {MAX_VIPS}")
    elif len(owner) > MAX_VIP_PORTS:
        problems.add("services", f"{len(owner)} VIP:port pairs, at most {MAX_VIP_PORTS}")
    if ix.services and vip is not None and vip not in addresses:
        problems.add("cluster.vip", f"{vip} is not a VIP of any service")
    for i, c in ix.classes:
        for text in c.vips:
            net = ipaddress.IPv4Network(text)
            if not all(str(a) in addresses for a in _hosts(net)) and (
                    ix.services or vip is None or net != ipaddress.IPv4Network(vip)):
                problems.add(f"classes[{i}].vips", f"{text} is not inside a service's VIPs")
