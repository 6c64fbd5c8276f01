"""The array's configuration: one TOML file, validated whole before anything uses it.

Every problem is a ConfigError naming the file, the key (dotted path, with the index of
array-of-tables entries) and the reason; a bad file raises ConfigErrors listing all of them,
one line each. Files the config names (secret, token, certificates) are checked only where the
node runs (`check_files`): a copy being pushed from elsewhere need not have them.

This module is the model (the dataclasses a read config is made of); `dlba.config.sections`
reads the file's sections into it, `dlba.config.reader` holds the generic checks.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dlba.cdn.settings import CdnConfig
from dlba.config.reader import ConfigError, HostPort, parse_host_port
from dlba.config.services import ClassConfig, PoolConfig, ServiceConfig
from dlba.config.sni_cert import SniCert

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
    pool: str = "default"
    maxconn: int = 0  # 0: no limit; beyond it requests queue in the pool


@dataclass(frozen=True)
class ProxyConfig:
    """Limits and timeouts of the HTTP proxy (HAProxy's `timeout` family)."""

    header_timeout_s: float = 10.0
    keepalive_timeout_s: float = 60.0
    connect_timeout_s: float = 3.0
    backend_timeout_s: float = 60.0
    max_header_line: int = 8192
    max_headers: int = 100
    # Idle keepalive connections kept per back end and worker: an HTTP/2 client brings up to
    # 100 streams a connection, so hundreds of exchanges are in flight at once, and a smaller
    # pool closes and reopens back-end connections on every burst (measured in docs/NOTES.md).
    pool_size: int = 512
    fail_threshold: int = 3
    retry_backoff_s: float = 1.0
    retry_backoff_max_s: float = 30.0
    health_interval_s: float = 2.0
    agent_interval_s: float = 2.0
    trusted_proxies: tuple[str, ...] = ()
    workers: int = 1
    # A worker whose event loop misses its heartbeat this long is killed and replaced.
    worker_timeout_s: float = 10.0
    # Plain listeners ("host:port", or "*" for all) whose requests get 308 to https://.
    redirect_https: tuple[str, ...] = ()
    # ALPN offers h2 before http/1.1 on TLS listeners (HTTP/2 for browsers).
    http2: bool = True


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
    # Never empty when read from a file: without [[services]], the implicit service on
    # cluster.vip; pools always hold "default" (dlba/config/services.py).
    services: tuple[ServiceConfig, ...] = ()
    pools: tuple[PoolConfig, ...] = ()
    classes: tuple[ClassConfig, ...] = ()
    cdn: CdnConfig = field(default_factory=CdnConfig)  # [cdn]: CDN offload (dlba/cdn)

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

    def pool(self, name: str) -> PoolConfig | None:
        return next((p for p in self.pools if p.name == name), None)

    def pool_backends(self, name: str) -> tuple[BackendConfig, ...]:
        return tuple(b for b in self.backends if b.pool == name)

    def vip_addresses(self) -> tuple[str, ...]:
        """Every VIP the array answers (prefixes expanded), in order, each once."""
        return tuple(dict.fromkeys(a for s in self.services for a in s.addresses()))

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
        for i, svc in enumerate(x for x in self.services if not x.implicit):
            for j, c in enumerate(svc.certs):
                out += [(f"services[{i}].certs[{j}].cert", c.cert),
                        (f"services[{i}].certs[{j}].key", c.key)]
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
