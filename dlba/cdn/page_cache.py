"""Rewritten pages kept so they are not parsed again: bounded bytes, least recently used first
out, one entry per URL with a variant per value of the headers its Vary names."""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from dlba.cdn.http_rules import Headers, header, vary_names, vary_values

MAX_VARIANTS = 8  # per URL: beyond it the oldest variant goes
OVERHEAD = 512  # bytes counted per page beyond its head and body (the objects around them)


@dataclass
class CachedPage:
    status: int
    reason: bytes
    headers: list[tuple[bytes, bytes]]  # as sent to clients (no framing, no hop-by-hop)
    body: bytes  # as sent to clients (rewritten, encoded)
    fresh_until: float  # wall clock
    version: str  # the chosen set it was rewritten with
    origin_etag: bytes | None = None  # the back end's validator (clients see a weak one)
    offloaded: int = 0  # bytes its rewritten URLs send to the CDN instead of us, per view

    @property
    def last_modified(self) -> bytes | None:
        return header(self.headers, b"last-modified")

    @property
    def size(self) -> int:
        return len(self.body) + sum(len(n) + len(v) + 4 for n, v in self.headers) + OVERHEAD


@dataclass
class _Url:
    names: tuple[bytes, ...]
    variants: OrderedDict[tuple[bytes | None, ...], CachedPage] = field(
        default_factory=OrderedDict)


class PageCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.urls: OrderedDict[bytes, _Url] = OrderedDict()
        self.bytes = 0
        self.pages = 0

    def get(self, key: bytes, request: Headers) -> CachedPage | None:
        u = self.urls.get(key)
        if u is None:
            return None
        page = u.variants.get(vary_values(u.names, request))
        if page is not None:
            self.urls.move_to_end(key)
        return page

    def put(self, key: bytes, request: Headers, response_headers: Headers,
            page: CachedPage) -> bool:
        """Keep `page` (False: larger than a quarter of the cache, not kept)."""
        if page.size > self.max_bytes // 4:
            return False
        names = vary_names(response_headers)
        u = self.urls.get(key)
        if u is None or u.names != names:
            self.drop(key)  # the back end changed its Vary: the old variants mean nothing
            u = self.urls[key] = _Url(names)
        values = vary_values(names, request)
        old = u.variants.pop(values, None)
        if old is not None:
            self._forget(old)
        u.variants[values] = page
        self.bytes += page.size
        self.pages += 1
        self.urls.move_to_end(key)
        while len(u.variants) > MAX_VARIANTS:
            self._forget(u.variants.popitem(last=False)[1])
        while self.bytes > self.max_bytes and self.urls:
            k, oldest = next(iter(self.urls.items()))
            self._forget(oldest.variants.popitem(last=False)[1])
            if not oldest.variants:
                del self.urls[k]
        return True

    def drop(self, key: bytes) -> None:
        u = self.urls.pop(key, None)
        if u is not None:
            for p in u.variants.values():
                self._forget(p)

    def drop_prefix(self, prefix: bytes) -> None:
        """Every page whose key starts with `prefix` (one service's pages)."""
        for key in [k for k in self.urls if k.startswith(prefix)]:
            self.drop(key)

    def clear(self) -> None:
        self.urls.clear()
        self.bytes = 0
        self.pages = 0

    def _forget(self, page: CachedPage) -> None:
        self.bytes -= page.size
        self.pages -= 1
