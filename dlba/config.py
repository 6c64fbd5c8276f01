"""The array's configuration: one TOML file, validated whole before anything uses it.

Every problem is reported as a ConfigError naming the file, the key (dotted path, with the
index of array-of-tables entries) and the reason, so an operator can fix it from one line.
"""

from __future__ import annotations

import ipaddress
import math
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

POLICIES = ("least_conn", "weighted_rr", "response_time", "url_hash", "p2c")
_HOST_LABEL = re.compile(r"(?!-)[A-Za-z0-9-]{1,63}(?<!-)")


class ConfigError(Exception):
    def __init__(self, file: str, key: str, reason: str) -> None:
        super().__init__(f"{file}: {key}: {reason}")
        self.file = file
        self.key = key
        self.reason = reason


@dataclass(frozen=True)
class HostPort:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class PortRule:
    port: int
    rule: str  # "balanced" or "node:NAME"

    @property
    def pinned_node(self) -> str | None:
        return self.rule[5:] if self.rule.startswith("node:") else None


@dataclass(frozen=True)
class ClusterConfig:
    vip: str | None = None
    buckets: int = 4096
    bucket_idle_s: float = 300.0
    redis: str = ""
    secret_file: Path | None = None
    deny: tuple[str, ...] = ()
    default_node: str = ""
    ping_interval_s: float = 0.1
    ping_failures: int = 3
    sweep_interval_s: float = 1.0
    sweep_retries: int = 3


@dataclass(frozen=True)
class NodeConfig:
    name: str
    address: str
    weight: int = 100
    listen: tuple[HostPort, ...] = ()
    listen_tls: tuple[HostPort, ...] = ()
    admin: HostPort | None = None


@dataclass(frozen=True)
class SniCert:
    names: tuple[str, ...]
    cert: Path
    key: Path


@dataclass(frozen=True)
class TlsConfig:
    cert: Path | None = None
    key: Path | None = None
    sni: tuple[SniCert, ...] = ()
    hsts: bool = True  # Strict-Transport-Security on every HTTPS response
    hsts_max_age_s: int = 31536000  # one year, what audits (Mozilla, SSL Labs) expect


@dataclass(frozen=True)
class PersistenceConfig:
    cookie: str = "DLBASERVER"
    session_cookies: tuple[str, ...] = ("JSESSIONID", "PHPSESSID", "sessionid")
    url_session_params: tuple[str, ...] = ("jsessionid", "sid")
    same_site: str = "Lax"  # SameSite of the injected cookie: Strict | Lax | None
    learned_ttl_s: float = 3600.0  # a learned session id is forgotten this long after last use
    learned_max: int = 100000  # learned session ids kept per node (least recently used go)


@dataclass(frozen=True)
class SchedulingConfig:
    policy: str = "least_conn"
    url_hash_paths: tuple[str, ...] = ()


@dataclass(frozen=True)
class BackendConfig:
    id: int
    address: HostPort
    weight: int = 100
    enabled: bool = True
    agent: HostPort | None = None
    health: str = ""


@dataclass(frozen=True)
class ProxyConfig:
    """Limits and timeouts of the HTTP proxy (HAProxy's `timeout` family)."""

    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 60.0
    connect_timeout_s: float = 3.0
    backend_timeout_s: float = 60.0
    max_header_line: int = 8192
    max_headers: int = 100
    pool_size: int = 64
    fail_threshold: int = 3
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 30.0
    health_interval_s: float = 2.0
    agent_interval_s: float = 2.0
    trusted_proxies: tuple[str, ...] = ()
    workers: int = 1
    # Plain listeners ("host:port", or "*" for all) whose requests get 308 to https://.
    redirect_https: tuple[str, ...] = ()


@dataclass(frozen=True)
class AdminConfig:
    listen: str = ":9000"
    token_file: Path | None = None


@dataclass(frozen=True)
class Config:
    path: Path
    cluster: ClusterConfig
    ports: tuple[PortRule, ...]
    nodes: tuple[NodeConfig, ...]
    tls: TlsConfig
    persistence: PersistenceConfig
    scheduling: SchedulingConfig
    backends: tuple[BackendConfig, ...]
    admin: AdminConfig
    proxy: ProxyConfig = field(default_factory=ProxyConfig)
    text: str = ""

    def node(self, name: str) -> NodeConfig:
        for n in self.nodes:
            if n.name == name:
                return n
        raise ConfigError(str(self.path), "nodes", f"no node named {name!r}")

    def backend(self, backend_id: int) -> BackendConfig | None:
        for b in self.backends:
            if b.id == backend_id:
                return b
        return None

    def read_secret(self) -> bytes:
        """The HMAC key shared by the array: hex text in the file (as `dlba certs init` makes)."""
        text = _read_file_value(self, "cluster.secret_file", self.cluster.secret_file)
        try:
            return bytes.fromhex(text)
        except ValueError:
            return text.encode()

    def read_admin_token(self) -> str:
        return _read_file_value(self, "admin.token_file", self.admin.token_file)


def _read_file_value(cfg: Config, key: str, path: Path | None) -> str:
    if path is None:
        raise ConfigError(str(cfg.path), key, "not set")
    try:
        value = path.read_text().strip()
    except OSError as e:
        raise ConfigError(str(cfg.path), key, f"cannot read {path}: {e.strerror}") from e
    if not value:
        raise ConfigError(str(cfg.path), key, f"{path} is empty")
    return value


class _Reader:
    """Walks one table, taking keys by type; whatever is left over is an unknown key."""

    def __init__(self, file: str, prefix: str, table: Mapping[str, Any]) -> None:
        self.file = file
        self.prefix = prefix
        self.table = dict(table)

    def key(self, name: str) -> str:
        return f"{self.prefix}.{name}" if self.prefix else name

    def fail(self, name: str, reason: str) -> ConfigError:
        return ConfigError(self.file, self.key(name), reason)

    def take(self, name: str, kind: type[T], default: T | None = None, required: bool = False) -> T:
        if name not in self.table:
            if required or default is None:
                raise self.fail(name, "missing")
            return default
        value = self.table.pop(name)
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise self.fail(name, f"expected {kind.__name__}, got {type(value).__name__}")
        return value

    def take_list(self, name: str, default: tuple[str, ...] = ()) -> tuple[str, ...]:
        if name not in self.table:
            return default
        value = self.table.pop(name)
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise self.fail(name, "expected a list of strings")
        return tuple(value)

    def take_path(self, name: str, base: Path, must_exist: bool) -> Path | None:
        raw = self.take(name, str, "")
        if not raw:
            return None
        p = Path(raw)
        p = p if p.is_absolute() else base / p
        if must_exist and not p.is_file():
            raise self.fail(name, f"file not found: {p}")
        return p

    def positive(self, name: str, kind: type[T], default: T) -> T:
        value = self.take(name, kind, default)
        if not 0 < value < math.inf:  # type: ignore[operator]  # nan and inf too
            raise self.fail(name, "must be > 0 and finite")
        return value

    def done(self) -> None:
        for name in self.table:
            raise self.fail(name, "unknown key")


def parse_host_port(text: str, *, default_host: str = "0.0.0.0") -> HostPort:
    """`host:port`, `[v6]:port` or `:port`; raises ValueError with the reason."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not [host]:port")
    else:
        host, sep, port = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} is not host:port")
    host = host or default_host
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"bad port in {text!r}")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        # A DNS name (RFC 1123): ASCII labels, no empty ones, and not a mistyped IPv4 address.
        labels = host.split(".")
        if (len(host) > 253 or labels[-1].isdigit()
                or not all(_HOST_LABEL.fullmatch(label) for label in labels)):
            raise ValueError(f"bad host in {text!r}") from None
    return HostPort(host, int(port))


def _ipv4(r: _Reader, name: str, value: str) -> str:
    try:
        return str(ipaddress.IPv4Address(value))
    except ValueError:
        raise r.fail(name, f"not an IPv4 address: {value!r}") from None


def _addr(r: _Reader, name: str, value: str, default_host: str = "0.0.0.0") -> HostPort:
    try:
        return parse_host_port(value, default_host=default_host)
    except ValueError as e:
        raise r.fail(name, str(e)) from None


def _tables(root: _Reader, name: str) -> list[tuple[str, Mapping[str, Any]]]:
    if name not in root.table:
        return []
    value = root.table.pop(name)
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise root.fail(name, "expected an array of tables ([[" + name + "]])")
    return [(f"{name}[{i}]", v) for i, v in enumerate(value)]


def _section(root: _Reader, name: str) -> _Reader:
    value = root.table.pop(name, {})
    if not isinstance(value, dict):
        raise root.fail(name, "expected a table")
    return _Reader(root.file, name, value)


def _each(root: _Reader, name: str, build: Callable[[_Reader], T]) -> tuple[T, ...]:
    out = []
    for key, table in _tables(root, name):
        r = _Reader(root.file, key, table)
        out.append(build(r))
        r.done()
    return tuple(out)


def load_config(path: str | Path) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(str(path), "-", f"cannot read: {e.strerror}") from e
    return parse_config(text, path)


def parse_config(text: str, path: Path) -> Config:
    file = str(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise ConfigError(file, "-", f"not valid TOML: {e}") from e
    base = path.parent
    root = _Reader(file, "", data)

    c = _section(root, "cluster")
    vip = c.take("vip", str, "")
    deny = c.take_list("deny")
    for cidr in deny:
        try:
            ipaddress.IPv4Network(cidr, strict=False)
        except ValueError:
            raise c.fail("deny", f"not an IPv4 network: {cidr!r}") from None
    cluster = ClusterConfig(
        vip=_ipv4(c, "vip", vip) if vip else None,
        buckets=c.positive("buckets", int, 4096),
        bucket_idle_s=c.positive("bucket_idle_s", float, 300.0),
        redis=c.take("redis", str, ""),
        secret_file=c.take_path("secret_file", base, must_exist=True),
        deny=deny,
        default_node=c.take("default_node", str, ""),
        ping_interval_s=c.positive("ping_interval_s", float, 0.1),
        ping_failures=c.positive("ping_failures", int, 3),
        sweep_interval_s=c.positive("sweep_interval_s", float, 1.0),
        sweep_retries=c.positive("sweep_retries", int, 3),
    )
    if cluster.redis and not cluster.redis.startswith(("redis://", "rediss://", "unix://")):
        raise c.fail("redis", f"not a redis URL: {cluster.redis!r}")
    c.done()

    def build_port(r: _Reader) -> PortRule:
        port = r.take("port", int, required=True)
        if not 0 < port < 65536:
            raise r.fail("port", f"not a port: {port}")
        rule = r.take("rule", str, "balanced")
        if rule != "balanced" and not (rule.startswith("node:") and len(rule) > 5):
            raise r.fail("rule", f"expected 'balanced' or 'node:NAME', got {rule!r}")
        return PortRule(port, rule)

    ports = _each(root, "ports", build_port)

    vip_host = cluster.vip or "127.0.0.1"

    def build_node(r: _Reader) -> NodeConfig:
        name = r.take("name", str, required=True)
        address = _ipv4(r, "address", r.take("address", str, required=True))
        weight = r.positive("weight", int, 100)
        # Absent listen keys default to the VIP's ports 80/443; an explicit [] turns one off.
        has_listen, has_tls = "listen" in r.table, "listen_tls" in r.table
        listen = tuple(_addr(r, "listen", a, vip_host) for a in r.take_list("listen"))
        listen_tls = tuple(_addr(r, "listen_tls", a, vip_host) for a in r.take_list("listen_tls"))
        if not has_listen and cluster.vip:
            listen = (HostPort(cluster.vip, 80),)
        if not has_tls and cluster.vip:
            listen_tls = (HostPort(cluster.vip, 443),)
        admin = r.take("admin", str, "")
        return NodeConfig(
            name, address, weight, listen, listen_tls,
            _addr(r, "admin", admin, address) if admin else None,
        )

    nodes = _each(root, "nodes", build_node)
    if not nodes:
        raise ConfigError(file, "nodes", "at least one [[nodes]] entry is needed")
    _unique(file, "nodes", [n.name for n in nodes], "name")
    _unique(file, "nodes", [n.address for n in nodes], "address")
    names = {n.name for n in nodes}
    for i, rule in enumerate(ports):
        if rule.pinned_node is not None and rule.pinned_node not in names:
            raise ConfigError(file, f"ports[{i}].rule", f"no node named {rule.pinned_node!r}")
    _unique(file, "ports", [str(rule.port) for rule in ports], "port")
    if cluster.default_node and cluster.default_node not in names:
        raise ConfigError(file, "cluster.default_node", f"no node named {cluster.default_node!r}")

    t = _section(root, "tls")
    cert = t.take_path("cert", base, must_exist=True)
    key = t.take_path("key", base, must_exist=True)

    def build_sni(r: _Reader) -> SniCert:
        names_ = r.take_list("names")
        if not names_:
            raise r.fail("names", "missing")
        c_ = r.take_path("cert", base, must_exist=True)
        k_ = r.take_path("key", base, must_exist=True)
        if c_ is None or k_ is None:
            raise r.fail("cert" if c_ is None else "key", "missing")
        return SniCert(names_, c_, k_)

    sni = _each(t, "sni", build_sni)
    hsts = t.take("hsts", bool, True)
    hsts_max_age_s = t.take("hsts_max_age_s", int, TlsConfig.hsts_max_age_s)
    if hsts_max_age_s < 0:
        raise t.fail("hsts_max_age_s", "must be >= 0")
    t.done()
    if any(n.listen_tls for n in nodes) and (cert is None or key is None):
        raise ConfigError(file, "tls.cert" if cert is None else "tls.key", "needed for listen_tls")
    tls = TlsConfig(cert, key, sni, hsts, hsts_max_age_s)

    p = _section(root, "persistence")
    persistence = PersistenceConfig(
        cookie=p.take("cookie", str, "DLBASERVER"),
        session_cookies=p.take_list("session_cookies", PersistenceConfig.session_cookies),
        url_session_params=p.take_list("url_session_params", PersistenceConfig.url_session_params),
        same_site=p.take("same_site", str, PersistenceConfig.same_site),
        learned_ttl_s=p.positive("learned_ttl_s", float, PersistenceConfig.learned_ttl_s),
        learned_max=p.positive("learned_max", int, PersistenceConfig.learned_max),
    )
    if persistence.same_site not in ("Strict", "Lax", "None"):
        raise p.fail("same_site", f"expected Strict, Lax or None, got {persistence.same_site!r}")
    if not persistence.cookie or not persistence.cookie.replace("_", "").isalnum():
        raise p.fail("cookie", f"not a cookie name: {persistence.cookie!r}")
    p.done()

    s = _section(root, "scheduling")
    policy = s.take("policy", str, "least_conn")
    if policy not in POLICIES:
        raise s.fail("policy", f"expected one of {', '.join(POLICIES)}, got {policy!r}")
    scheduling = SchedulingConfig(policy, s.take_list("url_hash_paths"))
    s.done()

    def build_backend(r: _Reader) -> BackendConfig:
        bid = r.take("id", int, required=True)
        if not 0 < bid < 2**31:
            raise r.fail("id", "must be a positive integer")
        address = _addr(r, "address", r.take("address", str, required=True), "127.0.0.1")
        agent = r.take("agent", str, "")
        health = r.take("health", str, "")
        if health and not health.startswith("/"):
            raise r.fail("health", f"expected a path starting with '/', got {health!r}")
        return BackendConfig(
            bid, address, r.positive("weight", int, 100), r.take("enabled", bool, True),
            _addr(r, "agent", agent, address.host) if agent else None, health,
        )

    backends = _each(root, "backends", build_backend)
    if not backends:
        raise ConfigError(file, "backends", "at least one [[backends]] entry is needed")
    _unique(file, "backends", [str(b.id) for b in backends], "id")

    a = _section(root, "admin")
    admin_listen = a.take("listen", str, ":9000")
    _addr(a, "listen", admin_listen)
    admin = AdminConfig(admin_listen, a.take_path("token_file", base, must_exist=True))
    a.done()

    x = _section(root, "proxy")
    d = ProxyConfig()
    proxy = ProxyConfig(
        header_timeout_s=x.positive("header_timeout_s", float, d.header_timeout_s),
        keepalive_timeout_s=x.positive("keepalive_timeout_s", float, d.keepalive_timeout_s),
        connect_timeout_s=x.positive("connect_timeout_s", float, d.connect_timeout_s),
        backend_timeout_s=x.positive("backend_timeout_s", float, d.backend_timeout_s),
        max_header_line=x.positive("max_header_line", int, d.max_header_line),
        max_headers=x.positive("max_headers", int, d.max_headers),
        pool_size=x.positive("pool_size", int, d.pool_size),
        fail_threshold=x.positive("fail_threshold", int, d.fail_threshold),
        retry_backoff_s=x.positive("retry_backoff_s", float, d.retry_backoff_s),
        retry_backoff_max_s=x.positive("retry_backoff_max_s", float, d.retry_backoff_max_s),
        health_interval_s=x.positive("health_interval_s", float, d.health_interval_s),
        agent_interval_s=x.positive("agent_interval_s", float, d.agent_interval_s),
        trusted_proxies=x.take_list("trusted_proxies"),
        workers=x.positive("workers", int, d.workers),
        redirect_https=_redirect_https(x),
    )
    for cidr in proxy.trusted_proxies:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise x.fail("trusted_proxies", f"not a network: {cidr!r}") from None
    x.done()
    root.done()
    return Config(
        path, cluster, ports, nodes, tls, persistence, scheduling, backends, admin, proxy, text
    )


def _redirect_https(x: _Reader) -> tuple[str, ...]:
    """`true` (every plain listener), `false`, or a list of plain listeners ("host:port")."""
    raw = x.table.get("redirect_https", False)
    if isinstance(raw, bool):
        x.table.pop("redirect_https", None)
        return ("*",) if raw else ()
    listeners = x.take_list("redirect_https")
    for text in listeners:
        if text != "*":
            _addr(x, "redirect_https", text)
    return listeners


def _unique(file: str, table: str, values: list[str], key: str) -> None:
    seen: set[str] = set()
    for i, v in enumerate(values):
        if v in seen:
            raise ConfigError(file, f"{table}[{i}].{key}", f"duplicate value {v!r}")
        seen.add(v)
