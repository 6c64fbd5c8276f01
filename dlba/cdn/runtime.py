"""One proxy process's CDN offload (the shell the exchange calls): per virtual service it samples
requests, holds the chosen set the node's hub hands it, rewrites pages through PageFilter and
answers fresh cached pages itself. Counters are read by the hub (metrics, GET /cdn)."""

from __future__ import annotations

import collections
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING
from urllib.parse import quote, urljoin, urlsplit

from dlba.cdn import http_rules
from dlba.cdn.chooser import Choice, type_matcher
from dlba.cdn.hook import RequestHook
from dlba.cdn.page_cache import CachedPage, PageCache
from dlba.cdn.page_filter import PageFilter, SampleFilter
from dlba.cdn.popularity import Figure, Popularity
from dlba.cdn.settings import CdnConfig, per_service
from dlba.proxy import http_head

if TYPE_CHECKING:
    from dlba.config import Config
    from dlba.proxy.core_exchange import Exchange

URL_SAFE = "/:?#[]@!$&'()*+,;=%~"
COUNTERS = ("rewritten", "urls_rewritten", "cache_hits", "cache_misses", "revalidated",
            "bytes_offloaded", "sampled")
EMPTY = Choice()


class ServiceCdn:
    """One virtual service's offload within a proxy process: its settings ([cdn] with its
    [services.cdn]), its popularity figures, its chosen set and counters. A URL path on two
    services is two objects. Its pages live in the process's cache under keys that start with
    its name (`prefix`)."""

    def __init__(self, name: str, cfg: CdnConfig, cache: PageCache) -> None:
        self.name = name
        self.prefix = name.encode() + b"\n"  # no Host or target holds a newline
        self.cache = cache
        self.popularity = Popularity()
        self.choice = Choice()
        self.chosen: dict[str, Figure] = {}
        self.passed: collections.Counter[str] = collections.Counter()  # pages left alone, why
        self.rewritten = self.urls_rewritten = self.cache_hits = self.cache_misses = 0
        self.revalidated = self.bytes_offloaded = self.sampled = 0
        self.configure(cfg)

    def configure(self, cfg: CdnConfig) -> None:
        self.cfg = cfg
        self.types = type_matcher(cfg.types)
        self.base = cfg.base.rstrip("/")
        self.cache.drop_prefix(self.prefix)  # pages were rewritten with the old settings

    def set_choice(self, choice: Choice) -> bool:
        """Take the array's choice for this service; its pages go when the paths changed."""
        if choice.version == self.choice.version:
            self.choice = choice  # the figures may have moved; the pages stay right
            return False
        self.choice = choice
        self.chosen = {f.path: f for f in choice.objects}
        self.cache.drop_prefix(self.prefix)
        return True

    def sample(self, path: str, nbytes: int, cacheable: bool) -> None:
        self.sampled += 1
        self.popularity.add(path, nbytes, cacheable, time.monotonic())

    def figures(self) -> list[Figure]:
        return self.popularity.figures(time.monotonic())

    def counters(self) -> dict[str, int]:
        out = {k: int(getattr(self, k)) for k in COUNTERS}
        out.update({f"passed_{k}": v for k, v in self.passed.items()})
        return out

    # --- URLs -------------------------------------------------------------------------------
    def map_url(self, url: str, page_path: str, host: str) -> tuple[str, str] | None:
        """A URL found in a page (entities decoded): its CDN URL and the chosen path, when it
        names a chosen object of this site; `host` carries the folded client part, if any."""
        url = url.strip()
        if not url or url.startswith(("#", "data:", "javascript:", "mailto:")):
            return None
        if not url.isascii():
            url = quote(url.encode("latin-1", "ignore") or url.encode(), safe=URL_SAFE)
        if url.startswith("/") and not url.startswith("//"):
            rest = url
        else:
            parts = urlsplit(urljoin("http://" + host.split(" ")[0] + page_path, url))
            if parts.scheme not in ("http", "https") or parts.netloc != host.split(" ")[0]:
                return None
            rest = parts.path + ("?" + parts.query if parts.query else "") + (
                "#" + parts.fragment if parts.fragment else "")
        path = rest.split("?", 1)[0].split("#", 1)[0]
        if path not in self.chosen:
            return None
        folded = host.split(" ")[1] if " " in host else ""
        return self._base(folded) + rest, path

    def _base(self, folded: str) -> str:
        if not folded:
            return self.base
        scheme, _, rest = self.base.partition("://")
        return f"{scheme}://{folded}.{rest}"

    def object_size(self, path: str) -> int:
        f = self.chosen.get(path)
        return f.bytes // f.count if f is not None and f.count else 0


class CdnRuntime(RequestHook):
    """`cfg`: the array's [cdn] (sample, cache_mb, fold_client); `services`: each service's
    settings (settings.per_service), "default" alone when not given."""

    def __init__(self, cfg: CdnConfig, services: dict[str, CdnConfig] | None = None,
                 rng: Callable[[], float] = random.random) -> None:
        self.rng = rng
        self.folds = cfg.fold_client
        self.cache = PageCache(int(cfg.cache_mb * 1024 * 1024))
        self.services: dict[str, ServiceCdn] = {}
        self.configure(cfg, services)

    def configure(self, cfg: CdnConfig, services: dict[str, CdnConfig] | None = None) -> None:
        if services is None:
            services = {"default": cfg}
        self.cfg = cfg
        self.cache.max_bytes = int(cfg.cache_mb * 1024 * 1024)
        if self.folds != cfg.fold_client:
            self.cache.clear()  # keys and pages both change with the folded client label
        self.folds = cfg.fold_client
        old = self.services
        self.services = {}
        for name, scfg in services.items():
            svc = old.pop(name, None)
            if svc is None:
                svc = ServiceCdn(name, scfg, self.cache)
            elif svc.cfg != scfg:
                svc.configure(scfg)
            self.services[name] = svc
        for gone in old.values():
            self.cache.drop_prefix(gone.prefix)
        self.first = next(iter(self.services.values()))
        self.single = len(self.services) == 1
        self.settings = services

    # --- the chosen sets (from the node's hub) ----------------------------------------------
    def set_choices(self, choices: dict[str, Choice]) -> None:
        """Take the array's choice of every service (a service left out: nothing chosen)."""
        for name, svc in self.services.items():
            svc.set_choice(choices.get(name, EMPTY))

    def figures(self) -> dict[str, list[Figure]]:
        return {name: svc.figures() for name, svc in self.services.items()}

    def counters(self) -> dict[str, dict[str, int]]:
        return {name: svc.counters() for name, svc in self.services.items()}

    def service_of(self, ex: Exchange) -> ServiceCdn:
        """The service the client dialled (its VIP and port), as the proxy routes it."""
        if self.single:
            return self.first
        service = ex.ctx.services.router.service_for(*ex.client.io.local_address())
        svc = self.services.get(service.name) if service is not None else None
        return svc if svc is not None else self.first

    # --- requests ---------------------------------------------------------------------------
    def on_request(self, ex: Exchange) -> bytes | None:
        method = ex.method
        if method != b"GET" or ex.upgrade:
            # GETs only, over HTTP/1.1 or HTTP/2 (h2_stream.H2Exchange turns a node-made
            # answer into HEADERS and DATA and passes its response through ex.cdn too).
            return None
        svc = self.service_of(ex)
        if not svc.cfg.enabled:
            return None
        target = ex.target.decode("latin-1")
        path = target.split("?", 1)[0]
        sampled = self.rng() < self.cfg.sample
        if svc.types.match(path):
            if sampled:
                ex.cdn = SampleFilter(svc, path)
            return None
        pages = bool(svc.chosen)
        if not pages and not sampled:
            return None
        host = (http_rules.header(ex.headers, b"host") or b"").decode("latin-1")
        client = ex.client
        key = b"%s%s://%s%s" % (svc.prefix, client.scheme, host.encode("latin-1"), ex.target)
        if self.cfg.fold_client:
            key += b" " + client.peer_ip.encode()
        stale = None
        if pages and _may_use_cache(ex.headers):
            page = self.cache.get(key, ex.headers)
            if page is not None and page.version == svc.choice.version:
                if page.fresh_until > time.time():
                    return self._hit(ex, svc, page, sampled, path)
                if page.origin_etag is not None or page.last_modified is not None:
                    stale = page
                    ex.headers = _conditional(ex.headers, page.origin_etag, page.last_modified)
        ex.cdn = PageFilter(svc, path, key, ex.headers, stale, sampled, pages,
                            _base_host(host, client.peer_ip if self.cfg.fold_client else ""))
        return None

    @staticmethod
    def _hit(ex: Exchange, svc: ServiceCdn, page: CachedPage, sampled: bool, path: str
             ) -> bytes:
        svc.cache_hits += 1
        svc.bytes_offloaded += page.offloaded
        body = page.body
        if sampled:
            svc.sample(path, len(body), True)
        client = ex.client
        hit = [(n, b"hit" if n == b"X-Dlba-Cdn" else v) for n, v in page.headers]
        hit.append((b"Content-Length", b"%d" % len(body)))
        https = client.scheme == b"https"
        return http_head.response_head(
            page.status, page.reason, hit, (), chunked=False,
            keep_alive=ex.client_keep_alive and not client.closing, upgrade=False,
            keep_alive_header=not ex.http11, hsts=ex.ctx.hsts if https else b"",
        ) + body


def _base_host(host: str, peer_ip: str) -> str:
    """The request's Host, and after a space the label the client's address folds into."""
    if not peer_ip:
        return host
    return host + " c" + peer_ip.replace(".", "-").replace(":", "-")


def _may_use_cache(headers: list[tuple[bytes, bytes]]) -> bool:
    if http_rules.header(headers, b"authorization") is not None:
        return False
    cc = http_rules.cache_control(headers)
    return "no-cache" not in cc and "no-store" not in cc


def _conditional(headers: list[tuple[bytes, bytes]], etag: bytes | None,
                 last_modified: bytes | None) -> list[tuple[bytes, bytes]]:
    """The request revalidates our page: its own conditions replaced by ours."""
    out = [(n, v) for n, v in headers
           if n.lower() not in (b"if-none-match", b"if-modified-since", b"if-match",
                                b"if-unmodified-since", b"if-range", b"range")]
    if etag is not None:
        out.append((b"If-None-Match", etag))
    if last_modified is not None:
        out.append((b"If-Modified-Since", last_modified))
    return out


def service_settings(config: Config) -> dict[str, CdnConfig]:
    """Each virtual service's CDN settings: [cdn] with its [services.cdn]."""
    return per_service(config.cdn, [(s.name, s.cdn) for s in config.services])


def runtime_for(config: Config, old: RequestHook | None) -> RequestHook | None:
    """The runtime a config asks for: None when no service has the offload on; the old one
    reconfigured (each service keeps its figures and, while its settings stay, its pages)."""
    services = service_settings(config)
    if not any(c.enabled for c in services.values()):
        return None
    if isinstance(old, CdnRuntime):
        if old.cfg != config.cdn or old.settings != services:
            old.configure(config.cdn, services)
        return old
    return CdnRuntime(config.cdn, services)
