"""The response side of the CDN offload: one response sampled, rewritten, stored, or answered
from a cached page the back end said is still valid (304 to our revalidation)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

from dlba.cdn import http_rules
from dlba.cdn.codec import Codec, CodecError, codec_for
from dlba.cdn.hook import Head, ResponseFilter
from dlba.cdn.html_rewriter import HtmlRewriter
from dlba.cdn.page_cache import CachedPage

if TYPE_CHECKING:
    from dlba.cdn.runtime import ServiceCdn

PASS, REWRITE, FROM_CACHE = range(3)
UNSAFE_CHARSETS = (b"utf-16", b"utf-32", b"ucs-2", b"iso-2022")  # not ASCII-compatible bytes
DROPPED = frozenset({b"content-length", b"content-md5", b"accept-ranges"})


class PageFilter(ResponseFilter):
    """`rt`: the page's service; `key`: the page's cache key; `stale`: the cached page being
    revalidated, if any; `sampled`: the response counts in the popularity figures as `path`."""

    def __init__(self, rt: ServiceCdn, path: str, key: bytes, request: list[tuple[bytes, bytes]],
                 stale: CachedPage | None, sampled: bool, pages: bool, host: str) -> None:
        self.rt = rt
        self.path = path
        self.key = key
        self.request = request
        self.stale = stale
        self.sampled = sampled
        self.pages = pages  # HTML here may be rewritten (a choice exists)
        self.host = host
        self.mode = PASS
        self.wire_bytes = 0
        self.cacheable = True
        self.codec: Codec | None = None
        self.rewriter: HtmlRewriter | None = None
        self.offloaded = 0  # bytes of the distinct chosen objects the page now sends to the CDN
        self.objects: set[str] = set()
        self.keep: list[bytes] | None = None  # the page's bytes as sent, while it may be stored
        self.kept = 0
        self.page: CachedPage | None = None

    def head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
             chunked: bool, has_length: bool) -> Head:
        rt = self.rt
        if self.sampled:
            self.cacheable = status == 200 and http_rules.shareable(headers)
        if self.stale is not None and status == 304:
            return self._from_cache(self.stale, headers)
        if self.stale is not None:
            rt.cache.drop(self.key)  # changed (or gone): the back end's answer replaces it
        if not self.pages or status != 200 or not _is_html(headers):
            return status, reason, headers, chunked, has_length
        ctype = http_rules.header(headers, b"content-type") or b""
        if any(c in ctype.lower() for c in UNSAFE_CHARSETS):
            rt.passed["charset"] += 1
            return status, reason, headers, chunked, has_length
        codec = codec_for(http_rules.header(headers, b"content-encoding") or b"")
        if codec is None:
            rt.passed["encoding"] += 1
            return status, reason, headers, chunked, has_length
        self.mode = REWRITE
        self.codec = codec
        self.rewriter = HtmlRewriter(self._map)
        out = [(n, _weak(v) if n.lower() == b"etag" else v) for n, v in headers
               if n.lower() not in DROPPED]
        out.append((b"X-Dlba-Cdn", b"rewritten"))
        if http_rules.page_storable(status, self.request, headers):
            now = time.time()
            self.keep = []
            self.page = CachedPage(status, reason, out, b"", now + http_rules.freshness_s(
                headers, now), rt.choice.version, http_rules.header(headers, b"etag"))
        rt.cache_misses += 1
        return status, reason, out, chunked or has_length, False

    def _from_cache(self, page: CachedPage, fresh: list[tuple[bytes, bytes]]) -> Head:
        """A 304 to our revalidation: the stored page again, its freshness from the 304."""
        rt = self.rt
        now = time.time()
        for name in (b"cache-control", b"expires", b"date"):
            value = http_rules.header(fresh, name)
            if value is not None:
                page.headers = [(n, v) for n, v in page.headers if n.lower() != name]
                page.headers.append((name.title(), value))
        page.fresh_until = now + http_rules.freshness_s(page.headers, now)
        self.mode = FROM_CACHE
        self.page = page
        rt.cache_hits += 1
        rt.revalidated += 1
        rt.bytes_offloaded += page.offloaded
        headers = [(n, b"revalidated" if n == b"X-Dlba-Cdn" else v) for n, v in page.headers]
        return page.status, page.reason, headers, True, False

    def _map(self, url: str) -> str | None:
        new = self.rt.map_url(url, self.path, self.host)
        if new is not None:
            if new[1] not in self.objects:  # a browser fetches an object once per page
                self.objects.add(new[1])
                self.offloaded += self.rt.object_size(new[1])
            return new[0]
        return None

    def body(self, data: bytes) -> bytes:
        self.wire_bytes += len(data)
        if self.mode != REWRITE:
            return b"" if self.mode == FROM_CACHE else data
        assert self.codec is not None and self.rewriter is not None
        try:
            out = b"".join([self.codec.encode(self.rewriter.feed(piece))
                            for piece in self.codec.decode(data)])
        except CodecError:
            self._broken()
            return data  # no longer ours to fix: the client gets what the back end sent
        self._keep(out)
        return out

    def _keep(self, out: bytes) -> None:
        if self.keep is None or not out:
            return
        self.kept += len(out)
        if self.kept > self.rt.cache.max_bytes // 4:
            self.keep = None  # too big to be worth keeping: it streams on, not stored
        else:
            self.keep.append(out)

    def _broken(self) -> None:
        self.rt.passed["decode_error"] += 1
        self.mode = PASS
        self.keep = None

    def finish(self) -> bytes:
        rt = self.rt
        if self.sampled:
            rt.sample(self.path, self.wire_bytes, self.cacheable)
        if self.mode == FROM_CACHE:
            assert self.page is not None
            return self.page.body
        if self.mode != REWRITE:
            return b""
        assert self.codec is not None and self.rewriter is not None
        tail = self.codec.encode(self.rewriter.finish()) + self.codec.finish()
        self._keep(tail)
        rt.rewritten += 1
        rt.urls_rewritten += self.rewriter.rewritten
        rt.bytes_offloaded += self.offloaded
        if self.keep is not None and self.page is not None \
                and self.page.version == rt.choice.version:
            self.page.body = b"".join(self.keep)
            self.page.offloaded = self.offloaded
            rt.cache.put(self.key, self.request, self.page.headers, self.page)
        return tail


class SampleFilter(ResponseFilter):
    """An object's response, counted in the popularity figures, bytes untouched."""

    def __init__(self, rt: ServiceCdn, path: str) -> None:
        self.rt = rt
        self.path = path
        self.wire_bytes = 0
        self.cacheable = True

    def head(self, status: int, reason: bytes, headers: list[tuple[bytes, bytes]],
             chunked: bool, has_length: bool) -> Head:
        self.cacheable = status == 200 and http_rules.shareable(headers)
        return status, reason, headers, chunked, has_length

    def body(self, data: bytes) -> bytes:
        self.wire_bytes += len(data)
        return data

    def finish(self) -> bytes:
        self.rt.sample(self.path, self.wire_bytes, self.cacheable)
        return b""


def _is_html(headers: list[tuple[bytes, bytes]]) -> bool:
    ctype = http_rules.header(headers, b"content-type")
    return ctype is not None and ctype.split(b";")[0].strip().lower() in (
        b"text/html", b"application/xhtml+xml")


def _weak(etag: bytes) -> bytes:
    """The rewritten page is not the back end's bytes: its validator becomes weak."""
    return etag if etag.startswith(b"W/") else b"W/" + etag
