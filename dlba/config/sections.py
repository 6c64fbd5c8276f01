"""Reading the config file's sections into the model (dlba/config/model.py), every problem at once.

`collect_config` reads the whole file with defaults in place of bad values and lists every
problem; `parse_config` and `load_config` raise ConfigErrors with them.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from dlba.cdn.config_read import read_cdn
from dlba.config.model import (
    POLICIES,
    AdminConfig,
    BackendConfig,
    ClusterConfig,
    Config,
    NodeConfig,
    PersistenceConfig,
    PortRule,
    ProxyConfig,
    SchedulingConfig,
    TlsConfig,
)
from dlba.config.reader import (
    ConfigError,
    ConfigErrors,
    HostPort,
    Problems,
    Reader,
    addr,
    check_files,
    ipv4,
    networks,
    unique,
)
from dlba.config.services import (
    Indexed,
    check_services,
    effective_pools,
    implicit_service,
    read_class,
    read_pool,
    read_service,
)
from dlba.config.sni_cert import read_sni_cert
from dlba.services.listen import with_service_ports
from dlba.services.pool_health import with_pool_health


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
    pools, _ = root.each("pools", lambda r: read_pool(r, scheduling.policy))
    services, _ = root.each("services",
                            lambda r: read_service(r, base, tls.hsts, persistence.cookie))
    classes, _ = root.each("classes", read_class)
    check_services(problems, cluster.vip, Indexed(
        pools, [(i, b.pool, b.maxconn) for i, b in backends], services, classes))
    cdn = read_cdn(root.section("cdn"))
    root.done()
    listening = tuple(with_service_ports(n, [s for _, s in services]) for _, n in nodes)
    if (any(s.tls_ports for _, s in services) and (tls.cert is None or tls.key is None)
            and not problems.has("tls")):
        problems.add("tls.cert" if tls.cert is None else "tls.key",
                     "needed for the services' tls_ports (the fallback certificate)")
    cfg = Config(
        path, cluster, tuple(p for _, p in ports), listening, tls,
        persistence, scheduling, with_pool_health([b for _, b in backends], [p for _, p in pools]),
        admin, proxy, text,
        tuple(s for _, s in services)
        or (implicit_service(cluster.vip, tls.hsts, persistence.cookie),),
        effective_pools([p for _, p in pools], scheduling.policy, scheduling.url_hash_paths),
        tuple(c for _, c in classes),
        cdn=cdn,
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
    sni, _ = t.each("sni", lambda r: read_sni_cert(r, base))
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
    maxconn = r.take("maxconn", int, 0)
    if maxconn < 0:
        r.report("maxconn", "must be >= 0 (0: no limit)")
    return BackendConfig(
        bid or 0, address or HostPort("127.0.0.1", 1), r.positive("weight", int, 100),
        r.take("enabled", bool, True),
        addr(r, "agent", agent, address.host if address else "127.0.0.1") if agent else None,
        health, r.take("pool", str, "default"), max(maxconn, 0),
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
        worker_timeout_s=x.positive("worker_timeout_s", float, d.worker_timeout_s),
        redirect_https=_redirect_https(x),
        http2=x.take("http2", bool, d.http2),
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
