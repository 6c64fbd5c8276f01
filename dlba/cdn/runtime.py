"""One proxy process's CDN offload (the shell the exchange calls): it samples requests, holds
the chosen set the node's hub hands it, rewrites pages through PageFilter and answers fresh
cached pages itself. Counters are read by the hub (metrics, GET /cdn)."""

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
from dlba.cdn.page_cache import PageCache
from dlba.cdn.page_filter import PageFilter, SampleFilter
from dlba.cdn.popularity import Figure, Popularity
from dlba.cdn.settings import CdnConfig
from dlba.proxy import http_head

if TYPE_CHECKING:
    from dlba.config import Config
    from dlba.proxy.core_exchange import Exchange

URL_SAFE = "/:?#[]@!$&'()*+,;=%~"
COUNTERS = ("rewritten", "urls_rewritten", "cache_hits", "cache_misses", "revalidated",
            "bytes_offloaded", "sampled")


class CdnRuntime(RequestHook):
    def __init__(self, cfg: CdnConfig, rng: Callable[[], float] = random.random) -> None:
        self.rng = rng
        self.popularity = Popularity()
        self.choice = Choice()
        self.chosen: dict[str, Figure] = {}
        self.cache = PageCache(int(cfg.cache_mb * 1024 * 1024))
        self.passed: collections.Counter[str] = collections.Counter()  # pages left alone, why
        self.rewritten = self.urls_rewritten = self.cache_hits = self.cache_misses = 0
        self.revalidated = self.bytes_offloaded = self.sampled = 0
        self.configure(cfg)

    def configure(self, cfg: CdnConfig) -> None:
        self.cfg = cfg
        self.types = type_matcher(cfg.types)
        self.base = cfg.base.rstrip("/")
        self.cache.max_bytes = int(cfg.cache_mb * 1024 * 1024)
        self.cache.clear()  # pages were rewritten with the old base

    # --- the chosen set (from the node's hub) ---------------------------------------------
    def set_choice(self, choice: Choice) -> bool:
        """Take the array's choice; the cached pages go when its paths changed."""
        if choice.version == self.choice.version:
            self.choice = choice  # the figures may have moved; the pages stay right
            return False
        self.choice = choice
        self.chosen = {f.path: f for f in choice.objects}
        self.cache.clear()
        return True

    def sample(self, path: str, nbytes: int, cacheable: bool) -> None:
        self.sampled += 1
        self.popularity.add(path, nbytes, cacheable, time.monotonic())

    def figures(self) -> list[Figure]:
        return self.popularity.figures(time.monotonic())

    def counters(self) -> dict[str, int]:
        out = {k: int(getattr(self, k)) for k in COUNTERS}
        out.update({f"passed_{k}": v for k, v in self.passed.items()})
        out["cache_pages"] = self.cache.pages
        out["cache_bytes"] = self.cache.bytes
        return out

    # --- requests ---------------------------------------------------------------------------
    def on_request(self, ex: Exchange) -> bytes | None:
        method = ex.method
        if method != b"GET" or ex.upgrade:
            # GETs only, over HTTP/1.1 or HTTP/2 (h2_stream.H2Exchange turns a node-made
            # answer into HEADERS and DATA and passes its response through ex.cdn too).
            return None
        target = ex.target.decode("latin-1")
        path = target.split("?", 1)[0]
        sampled = self.rng() < self.cfg.sample
        if self.types.match(path):
            if sampled:
                ex.cdn = SampleFilter(self, path)
            return None
        pages = bool(self.chosen)
        if not pages and not sampled:
            return None
        host = (http_rules.header(ex.headers, b"host") or b"").decode("latin-1")
        client = ex.client
        key = b"%s://%s%s" % (client.scheme, host.encode("latin-1"), ex.target)
        if self.cfg.fold_client:
            key += b" " + client.peer_ip.encode()
        stale = None
        if pages and _may_use_cache(ex.headers):
            page = self.cache.get(key, ex.headers)
            if page is not None and page.version == self.choice.version:
                if page.fresh_until > time.time():
                    return self._hit(ex, page.status, page.reason, page.headers, page.body,
                                     page.offloaded, sampled, path)
                if page.origin_etag is not None or page.last_modified is not None:
                    stale = page
                    ex.headers = _conditional(ex.headers, page.origin_etag, page.last_modified)
        ex.cdn = PageFilter(self, path, key, ex.headers, stale, sampled, pages,
                            _base_host(host, client.peer_ip if self.cfg.fold_client else ""))
        return None

    def _hit(self, ex: Exchange, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
             body: bytes, offloaded: int, sampled: bool, path: str) -> bytes:
        self.cache_hits += 1
        self.bytes_offloaded += offloaded
        if sampled:
            self.sample(path, len(body), True)
        client = ex.client
        hit = [(n, b"hit" if n == b"X-Dlba-Cdn" else v) for n, v in headers]
        hit.append((b"Content-Length", b"%d" % len(body)))
        https = client.scheme == b"https"
        return http_head.response_head(
            status, reason, hit, (), chunked=False,
            keep_alive=ex.client_keep_alive and not client.closing, upgrade=False,
            keep_alive_header=not ex.http11, hsts=ex.ctx.hsts if https else b"",
        ) + body

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


def runtime_for(config: Config, old: RequestHook | None) -> RequestHook | None:
    """The runtime a config asks for: None when [cdn] is off; the old one reconfigured."""
    cfg = config.cdn
    if not cfg.enabled:
        return None
    if isinstance(old, CdnRuntime):
        if old.cfg != cfg:
            old.configure(cfg)
        return old
    return CdnRuntime(cfg)
