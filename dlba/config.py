"""The array's configuration: one TOML file, validated whole before anything uses it.

Every problem is a ConfigError naming the file, the key (dotted path, with the index of
array-of-tables entries) and the reason; a bad file raises ConfigErrors listing all of them,
one line each. Files the config names (secret, token, certificates) are checked only where the
node runs (`check_files`): a copy being pushed from elsewhere need not have them.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from dlba.config_reader import (
    ConfigError,
    ConfigErrors,
    HostPort,
    Problems,
    Reader,
    addr,
    check_files,
    ipv4,
    networks,
    parse_host_port,
    unique,
)

__all__ = [
    "Config", "ConfigError", "ConfigErrors", "HostPort", "collect_config", "load_config",
    "parse_config", "parse_host_port",
]

POLICIES = ("least_conn", "weighted_rr", "response_time", "url_hash", "p2c")


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

    def admin_endpoint(self, index: int) -> HostPort:
        """Where peers reach node `index`'s admin API (its UDP heartbeat uses the same port):
        the node's address, its admin listener's port. The one place this is worked out."""
        node = self.nodes[index]
        port = (node.admin or parse_host_port(self.admin.listen, default_host=node.address)).port
        return HostPort(node.address, port)

    def admin_url(self, index: int) -> str:
        """Base URL of node `index`'s admin API, e.g. http://198.18.0.11:9000 (no slash)."""
        at = self.admin_endpoint(index)
        return f"http://{at.host}:{at.port}"

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

    def files(self) -> list[tuple[str, Path]]:
        """Every file the config names, with its key: they live on the nodes."""
        out = [("cluster.secret_file", self.cluster.secret_file), ("tls.cert", self.tls.cert),
               ("tls.key", self.tls.key), ("admin.token_file", self.admin.token_file)]
        for i, s in enumerate(self.tls.sni):
            out += [(f"tls.sni[{i}].cert", s.cert), (f"tls.sni[{i}].key", s.key)]
        return [(k, p) for k, p in out if p is not None]


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



def load_config(path: str | Path, *, check_files: bool = True) -> Config:
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as e:
        raise ConfigError(str(path), "-", f"cannot read: {e.strerror}") from e
    return parse_config(text, path, check_files=check_files)


def parse_config(text: str, path: Path, *, check_files: bool = True) -> Config:
    """The config, or ConfigErrors with every problem. `check_files`: the files it names must
    be here (the node's view); a pusher leaves them to the nodes."""
    cfg, problems = collect_config(text, path, check_files=check_files)
    if problems or cfg is None:
        raise ConfigErrors(problems)
    return cfg


def collect_config(text: str, path: Path, *, check_files: bool = True
                   ) -> tuple[Config | None, list[ConfigError]]:
    """Every problem of the file, and the config read with defaults in place of bad values
    (None when the text is not TOML): callers add their own checks to the same list."""
    problems = Problems(str(path))
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        problems.add("-", f"not valid TOML: {e}")
        return None, problems.items
    base = path.parent
    root = Reader(problems, "", data)
    cluster = _cluster(root.section("cluster"), base)
    ports, _ = root.each("ports", _port_rule)
    nodes, all_nodes = root.each("nodes", lambda r: _node(r, cluster))
    if not all_nodes and not problems.has("nodes"):
        problems.add("nodes", "at least one [[nodes]] entry is needed")
    unique(problems, "nodes", [(i, n.name) for i, n in nodes], "name")
    unique(problems, "nodes", [(i, n.address) for i, n in nodes], "address")
    names = {n.name for _, n in all_nodes}
    if "" not in names:  # an entry whose name is bad: "no node named" might not be true
        for i, rule in ports:
            if rule.pinned_node is not None and rule.pinned_node not in names:
                problems.add(f"ports[{i}].rule", f"no node named {rule.pinned_node!r}")
        if cluster.default_node and cluster.default_node not in names:
            problems.add("cluster.default_node", f"no node named {cluster.default_node!r}")
    unique(problems, "ports", [(i, str(rule.port)) for i, rule in ports], "port")
    tls = _tls(root.section("tls"), base)
    if (any(n.listen_tls for _, n in nodes) and (tls.cert is None or tls.key is None)
            and not problems.has("tls")):
        problems.add("tls.cert" if tls.cert is None else "tls.key", "needed for listen_tls")
    persistence = _persistence(root.section("persistence"))
    scheduling = _scheduling(root.section("scheduling"))
    backends, all_backends = root.each("backends", _backend)
    if not all_backends and not problems.has("backends"):
        problems.add("backends", "at least one [[backends]] entry is needed")
    unique(problems, "backends", [(i, str(b.id)) for i, b in backends], "id")
    admin = _admin(root.section("admin"), base)
    proxy = _proxy(root.section("proxy"))
    root.done()
    cfg = Config(
        path, cluster, tuple(p for _, p in ports), tuple(n for _, n in nodes), tls,
        persistence, scheduling, tuple(b for _, b in backends), admin, proxy, text,
    )
    if check_files:
        _check_files_of(problems, cfg)
    return cfg, problems.items


def _check_files_of(problems: Problems, cfg: Config) -> None:
    check_files(problems, [(k, p) for k, p in cfg.files() if not problems.has(k)])


def _cluster(c: Reader, base: Path) -> ClusterConfig:
    vip = ipv4(c, "vip", c.take("vip", str, "") or None)
    deny = c.take_list("deny")
    networks(c, "deny", deny, v4_only=True)
    redis = c.take("redis", str, "")
    if redis and not redis.startswith(("redis://", "rediss://", "unix://")):
        c.report("redis", f"not a redis URL: {redis!r}")
    cluster = ClusterConfig(
        vip=vip,
        buckets=c.positive("buckets", int, 4096),
        bucket_idle_s=c.positive("bucket_idle_s", float, 300.0),
        redis=redis,
        secret_file=c.take_path("secret_file", base),
        deny=deny,
        default_node=c.take("default_node", str, ""),
        ping_interval_s=c.positive("ping_interval_s", float, 0.1),
        ping_failures=c.positive("ping_failures", int, 3),
        sweep_interval_s=c.positive("sweep_interval_s", float, 1.0),
        sweep_retries=c.positive("sweep_retries", int, 3),
    )
    c.done()
    return cluster


def _port_rule(r: Reader) -> PortRule:
    port = r.require("port", int)
    if port is not None and not 0 < port < 65536:
        r.report("port", f"not a port: {port}")
    rule = r.take("rule", str, "balanced")
    if rule != "balanced" and not (rule.startswith("node:") and len(rule) > 5):
        r.report("rule", f"expected 'balanced' or 'node:NAME', got {rule!r}")
    return PortRule(port or 0, rule)


def _node(r: Reader, cluster: ClusterConfig) -> NodeConfig:
    name = r.require("name", str)
    address = ipv4(r, "address", r.require("address", str))
    weight = r.positive("weight", int, 100)
    # Absent listen keys default to the VIP's ports 80/443; an explicit [] turns one off.
    vip_host = cluster.vip or "127.0.0.1"
    has_listen, has_tls = "listen" in r.table, "listen_tls" in r.table
    listen = _addrs(r, "listen", vip_host)
    listen_tls = _addrs(r, "listen_tls", vip_host)
    if not has_listen and cluster.vip:
        listen = (HostPort(cluster.vip, 80),)
    if not has_tls and cluster.vip:
        listen_tls = (HostPort(cluster.vip, 443),)
    admin = r.take("admin", str, "")
    return NodeConfig(
        name or "", address or "", weight, listen, listen_tls,
        addr(r, "admin", admin, address or "0.0.0.0") if admin else None,
    )


def _addrs(r: Reader, name: str, default_host: str) -> tuple[HostPort, ...]:
    out = (addr(r, name, a, default_host) for a in r.take_list(name))
    return tuple(a for a in out if a is not None)


def _tls(t: Reader, base: Path) -> TlsConfig:
    cert = t.take_path("cert", base)
    key = t.take_path("key", base)

    def build_sni(r: Reader) -> SniCert:
        names = r.take_list("names")
        if not names and not r.problems.has(r.key("names")):
            r.report("names", "missing")
        c, k = r.take_path("cert", base), r.take_path("key", base)
        for missing in [n for n, v in (("cert", c), ("key", k)) if v is None]:
            if not r.problems.has(r.key(missing)):
                r.report(missing, "missing")
        return SniCert(names, c or base, k or base)

    sni, _ = t.each("sni", build_sni)
    hsts = t.take("hsts", bool, True)
    hsts_max_age_s = t.take("hsts_max_age_s", int, TlsConfig.hsts_max_age_s)
    if hsts_max_age_s < 0:
        t.report("hsts_max_age_s", "must be >= 0")
    t.done()
    return TlsConfig(cert, key, tuple(s for _, s in sni), hsts, hsts_max_age_s)


def _persistence(p: Reader) -> PersistenceConfig:
    d = PersistenceConfig()
    cookie = p.take("cookie", str, d.cookie)
    if not cookie or not cookie.replace("_", "").isalnum():
        p.report("cookie", f"not a cookie name: {cookie!r}")
    same_site = p.take("same_site", str, d.same_site)
    if same_site not in ("Strict", "Lax", "None"):
        p.report("same_site", f"expected Strict, Lax or None, got {same_site!r}")
    persistence = PersistenceConfig(
        cookie=cookie,
        session_cookies=p.take_list("session_cookies", d.session_cookies),
        url_session_params=p.take_list("url_session_params", d.url_session_params),
        same_site=same_site,
        learned_ttl_s=p.positive("learned_ttl_s", float, d.learned_ttl_s),
        learned_max=p.positive("learned_max", int, d.learned_max),
    )
    p.done()
    return persistence


def _scheduling(s: Reader) -> SchedulingConfig:
    policy = s.take("policy", str, "least_conn")
    if policy not in POLICIES:
        s.report("policy", f"expected one of {', '.join(POLICIES)}, got {policy!r}")
    scheduling = SchedulingConfig(policy, s.take_list("url_hash_paths"))
    s.done()
    return scheduling


def _backend(r: Reader) -> BackendConfig:
    bid = r.require("id", int)
    if bid is not None and not 0 < bid < 2**31:
        r.report("id", "must be a positive integer")
    address = addr(r, "address", r.require("address", str), "127.0.0.1")
    agent = r.take("agent", str, "")
    health = r.take("health", str, "")
    if health and not health.startswith("/"):
        r.report("health", f"expected a path starting with '/', got {health!r}")
    return BackendConfig(
        bid or 0, address or HostPort("127.0.0.1", 1), r.positive("weight", int, 100),
        r.take("enabled", bool, True),
        addr(r, "agent", agent, address.host if address else "127.0.0.1") if agent else None,
        health,
    )


def _admin(a: Reader, base: Path) -> AdminConfig:
    listen = a.take("listen", str, ":9000")
    addr(a, "listen", listen)
    admin = AdminConfig(listen, a.take_path("token_file", base))
    a.done()
    return admin


def _proxy(x: Reader) -> ProxyConfig:
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
    networks(x, "trusted_proxies", proxy.trusted_proxies, v4_only=False)
    x.done()
    return proxy


def _redirect_https(x: Reader) -> tuple[str, ...]:
    """`true` (every plain listener), `false`, or a list of plain listeners ("host:port")."""
    raw = x.table.get("redirect_https", False)
    if isinstance(raw, bool):
        x.table.pop("redirect_https", None)
        return ("*",) if raw else ()
    listeners = x.take_list("redirect_https")
    for text in listeners:
        if text != "*":
            addr(x, "redirect_https", text)
    return listeners
